-- Least-privilege grants for the shop's users. Portable: CockroachDB and PostgreSQL run it
-- alike (validate.sh runs it against PostgreSQL and then checks what each user can and cannot
-- do). Run as root (CockroachDB) or a superuser (PostgreSQL), connected to database shop, after
-- 01_database.sql. Safe to re-run. The CockroachDB-only part (the CHANGEFEED privilege) is in
-- 02_roles.crdb.sql.
--
-- The tables do not exist yet when this runs: shop_admin creates them later, with the shop's
-- migrations. So the table grants are *default privileges* on tables shop_admin creates in
-- schema shop, plus the same grants on tables that already exist (when re-run later).

-- Unqualified names resolve to schema shop for all three users, so the shop's migrations
-- (which name no schema) create their tables there, and the application finds them.
ALTER ROLE shop_admin IN DATABASE shop SET search_path = shop;
ALTER ROLE shop_app IN DATABASE shop SET search_path = shop;
ALTER ROLE tarn_cdc IN DATABASE shop SET search_path = shop;

GRANT CONNECT ON DATABASE shop TO shop_app, tarn_cdc;
-- USAGE lets them name objects in the schema; it does not let them create any (that is the
-- CREATE privilege, which stays with the owner, shop_admin).
GRANT USAGE ON SCHEMA shop TO shop_app, tarn_cdc;

-- shop_app: rows only. No CREATE, ALTER, DROP or TRUNCATE (those need ownership or grants it
-- does not get), no REFERENCES/TRIGGER.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shop TO shop_app;
ALTER DEFAULT PRIVILEGES FOR ROLE shop_admin IN SCHEMA shop
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO shop_app;

-- tarn_cdc: reads only. On CockroachDB a sinkless changefeed (rows streamed back over the SQL
-- connection, initial scan included) needs SELECT, and tarn reads tables directly to
-- re-snapshot them; changefeeds into a sink need the CHANGEFEED privilege instead
-- (02_roles.crdb.sql). On PostgreSQL this is what an initial table copy needs (logical
-- replication there also needs the REPLICATION attribute, outside this file's scope).
GRANT SELECT ON ALL TABLES IN SCHEMA shop TO tarn_cdc;
ALTER DEFAULT PRIVILEGES FOR ROLE shop_admin IN SCHEMA shop
    GRANT SELECT ON TABLES TO tarn_cdc;
