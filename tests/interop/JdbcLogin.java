import java.sql.*;

/**
 * pgjdbc logs in to tarn's Postgres wire endpoint and runs one query: args URL USER PASSWORD
 * (the URL carries the TLS parameters, e.g. {@code ssl=true&sslrootcert=ca.crt}). Prints
 * "rows=42", or "error=SQLSTATE: message" and exits 1.
 */
public class JdbcLogin {
    public static void main(String[] args) {
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2]);
             Statement s = c.createStatement();
             ResultSet r = s.executeQuery("SELECT 40 + 2")) {
            while (r.next()) System.out.println("rows=" + r.getLong(1));
        } catch (SQLException e) {
            // The cause names the TLS failure (PKIX path, host name) where pgjdbc wraps it.
            Throwable cause = e.getCause();
            System.out.println("error=" + e.getSQLState() + ": " + e.getMessage()
                + (cause == null ? "" : " / " + cause));
            System.exit(1);
        }
    }
}
