import java.nio.file.*;
import java.sql.*;
import java.util.*;

/**
 * pgjdbc as BI tools use it against tarn's Postgres wire endpoint. Args: PORT USER PASSWORD MODE [FILE].
 *
 * <ul>
 *   <li>{@code metadata}: DatabaseMetaData as DBeaver and Metabase's JDBC layer read it: getSchemas,
 *       getTables, getColumns, getPrimaryKeys of shop.orders. Prints one line per row:
 *       {@code schema|...}, {@code table|...}, {@code column|...}, {@code pk|...}.
 *   <li>{@code queries FILE}: runs each block of FILE (see tests/fixtures/metabase_sync_queries.sql)
 *       on a read-only connection with auto-commit off (pgjdbc sends BEGIN READ ONLY), binding the
 *       block's parameters as strings ({@code @namespace:NAME}: the oid of schema NAME, as a long). Prints {@code #name}, {@code columns|a|b|...}, then
 *       {@code row|v1|v2|...} per row; an error prints {@code error|SQLSTATE|message} and stops.
 * </ul>
 */
public class BiJdbc {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/tarn";
        try (Connection c = DriverManager.getConnection(url, args[1], args[2])) {
            if (args[3].equals("metadata")) {
                metadata(c);
            } else {
                queries(c, Files.readString(Path.of(args[4])));
            }
        }
    }

    static void print(String kind, ResultSet r, String... columns) throws SQLException {
        while (r.next()) {
            StringBuilder line = new StringBuilder(kind);
            for (String column : columns) line.append('|').append(r.getString(column));
            System.out.println(line);
        }
    }

    static void metadata(Connection c) throws SQLException {
        DatabaseMetaData md = c.getMetaData();
        System.out.println("product|" + md.getDatabaseProductName() + "|" + md.getDatabaseMajorVersion());
        try (ResultSet r = md.getSchemas()) {
            print("schema", r, "TABLE_SCHEM");
        }
        try (ResultSet r = md.getTables(null, "shop", "%", new String[] {"TABLE"})) {
            print("table", r, "TABLE_SCHEM", "TABLE_NAME", "TABLE_TYPE", "REMARKS");
        }
        try (ResultSet r = md.getColumns(null, "shop", "orders", "%")) {
            print("column", r, "COLUMN_NAME", "TYPE_NAME", "DATA_TYPE", "COLUMN_SIZE", "DECIMAL_DIGITS", "IS_NULLABLE", "REMARKS", "ORDINAL_POSITION");
        }
        try (ResultSet r = md.getPrimaryKeys(null, "shop", "orders")) {
            print("pk", r, "TABLE_SCHEM", "TABLE_NAME", "COLUMN_NAME", "KEY_SEQ", "PK_NAME");
        }
        try (ResultSet r = md.getIndexInfo(null, "shop", "orders", false, false)) {
            print("index", r, "INDEX_NAME", "NON_UNIQUE", "COLUMN_NAME", "ORDINAL_POSITION");
        }
    }

    static void queries(Connection c, String file) throws SQLException {
        c.setReadOnly(true);
        c.setAutoCommit(false);
        String name = null;
        List<String> params = new ArrayList<>();
        StringBuilder sql = new StringBuilder();
        boolean inBlock = false;
        for (String line : file.split("\n", -1)) {
            if (line.startsWith("-- name: ")) {
                name = line.substring(9).trim();
                params.clear();
                sql.setLength(0);
                inBlock = true;
            } else if (inBlock && line.startsWith("-- params:")) {
                String p = line.substring(10).trim();
                if (!p.isEmpty()) params.addAll(Arrays.asList(p.split("\\|", -1)));
            } else if (inBlock && line.startsWith("--")) {
                // from:, columns: are for the test that reads the output.
            } else if (inBlock && line.trim().equals(";")) {
                run(c, name, sql.toString().trim(), params);
                inBlock = false;
            } else if (inBlock) {
                sql.append(line).append('\n');
            }
        }
        c.commit();
    }

    /** The oid of schema {@code name}, as DBeaver reads it before it lists the schema. */
    static long namespaceOid(Connection c, String name) throws SQLException {
        try (PreparedStatement p = c.prepareStatement("SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = ?")) {
            p.setString(1, name);
            try (ResultSet r = p.executeQuery()) {
                if (!r.next()) throw new SQLException("no schema " + name);
                return r.getLong(1);
            }
        }
    }

    static void run(Connection c, String name, String sql, List<String> params) throws SQLException {
        System.out.println("#" + name);
        try (PreparedStatement p = c.prepareStatement(sql)) {
            for (int i = 0; i < params.size(); i++) {
                String param = params.get(i);
                if (param.startsWith("@namespace:")) {
                    p.setLong(i + 1, namespaceOid(c, param.substring("@namespace:".length())));
                } else {
                    p.setString(i + 1, param);
                }
            }
            if (!p.execute()) {
                System.out.println("columns");
                return;
            }
            try (ResultSet r = p.getResultSet()) {
                ResultSetMetaData m = r.getMetaData();
                StringBuilder columns = new StringBuilder("columns");
                for (int i = 1; i <= m.getColumnCount(); i++) columns.append('|').append(m.getColumnLabel(i));
                System.out.println(columns);
                while (r.next()) {
                    StringBuilder row = new StringBuilder("row");
                    for (int i = 1; i <= m.getColumnCount(); i++) row.append('|').append(r.getString(i));
                    System.out.println(row);
                }
            }
        } catch (SQLException e) {
            System.out.println("error|" + e.getSQLState() + "|" + e.getMessage().replace('\n', ' '));
            System.exit(3);
        }
    }
}
