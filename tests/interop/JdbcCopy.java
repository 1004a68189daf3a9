import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import org.postgresql.copy.CopyManager;
import org.postgresql.core.BaseConnection;

/**
 * pgjdbc's CopyManager against tarn's Postgres wire endpoint: args PORT USER PASSWORD. Exports
 * the table JdbcClient wrote as CSV with a header; prints "rows=N" and the CSV.
 */
public class JdbcCopy {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/tarn";
        try (Connection c = DriverManager.getConnection(url, args[1], args[2])) {
            CopyManager copy = new CopyManager(c.unwrap(BaseConnection.class));
            StringWriter csv = new StringWriter();
            long rows = copy.copyOut("COPY (SELECT id, name FROM jdbc_t ORDER BY id) TO STDOUT (FORMAT csv, HEADER)", csv);
            System.out.print("rows=" + rows + "\n" + csv);
        }
    }
}
