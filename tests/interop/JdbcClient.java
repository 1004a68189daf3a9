import java.sql.*;

/** pgjdbc against tarn's Postgres wire endpoint: args PORT USER PASSWORD. Prints "name=...". */
public class JdbcClient {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/tarn";
        try (Connection c = DriverManager.getConnection(url, args[1], args[2])) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE jdbc_t (id BIGINT, name VARCHAR)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO jdbc_t VALUES (?, ?)")) {
                p.setLong(1, 7);
                p.setString(2, "seven");
                p.executeUpdate();
            }
            try (PreparedStatement p = c.prepareStatement("SELECT name FROM jdbc_t WHERE id = ?")) {
                p.setLong(1, 7);
                try (ResultSet r = p.executeQuery()) {
                    while (r.next()) System.out.println("name=" + r.getString(1));
                }
            }
            DatabaseMetaData md = c.getMetaData();
            try (ResultSet r = md.getTables(null, null, "jdbc_t", null)) {
                while (r.next()) System.out.println("table=" + r.getString("TABLE_NAME"));
            }
        }
    }
}
