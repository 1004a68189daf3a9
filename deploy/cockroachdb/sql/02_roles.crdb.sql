-- CockroachDB only. What tarn's change data capture needs beyond 02_roles.sql: the CHANGEFEED
-- privilege on the shop's tables. Run as root after 02_roles.sql. Safe to re-run.
--
-- Since v22.2 a user with CHANGEFEED on a table may create changefeeds on it (into a sink)
-- without SELECT, the CONTROLCHANGEFEED role option or admin; a sinkless changefeed (rows sent
-- back on the SQL connection) needs SELECT instead, granted in 02_roles.sql. The user owns the
-- changefeed jobs it creates and may pause, resume and cancel them; viewing or managing other
-- jobs through CHANGEFEED is deprecated since v25.1 (VIEWJOB / CONTROLJOB are not granted:
-- tarn only manages its own jobs). Default privileges may carry CHANGEFEED, so tables the
-- migrations add later are covered too. See "Required privileges" in
-- https://www.cockroachlabs.com/docs/v25.4/create-changefeed (GRANT CHANGEFEED ON TABLE ...,
-- ALTER DEFAULT PRIVILEGES GRANT CHANGEFEED ON TABLES ...).
--
-- 03_cluster_settings.crdb.sql restricts CHANGEFEED holders to sinks an admin defined as
-- external connections, so this grant cannot be used to copy the shop's data to an arbitrary
-- URL: an admin creates the connection and grants USAGE on it (README.md, "tarn's CDC").

-- The .crdb.sql files run against defaultdb (the database may not exist before 01); default
-- privileges belong to a database, so switch to it.
SET database = shop;

GRANT CHANGEFEED ON ALL TABLES IN SCHEMA shop TO tarn_cdc;
ALTER DEFAULT PRIVILEGES FOR ROLE shop_admin IN SCHEMA shop
    GRANT CHANGEFEED ON TABLES TO tarn_cdc;
