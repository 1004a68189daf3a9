-- CockroachDB only. The SQL users of the shop's database. Run as root, against defaultdb.
--
--   shop_admin  owns the database and its schema and runs the shop's migrations (DDL)
--   shop_app    the shop service: reads and writes rows of the shop's tables, no DDL
--   tarn_cdc    tarn's change data capture: changefeeds on, and reads of, the shop's tables
--
-- None has a password: they log in with the client certificates certs.sh makes (CN = user
-- name), and 03_cluster_settings.crdb.sql allows certificate logins only.
--
-- Kept apart from the portable files because PostgreSQL has no `CREATE USER IF NOT EXISTS`,
-- which makes this file safe to re-run. validate.sh derives the PostgreSQL equivalent
-- (`CREATE ROLE <name> LOGIN`) from the statements below, so the two cannot drift apart.

CREATE USER IF NOT EXISTS shop_admin;
CREATE USER IF NOT EXISTS shop_app;
CREATE USER IF NOT EXISTS tarn_cdc;
