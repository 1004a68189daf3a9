-- The shop database's ownership and schema. Portable: CockroachDB and PostgreSQL run it alike
-- (validate.sh runs it against PostgreSQL). Run as root (CockroachDB) or a superuser
-- (PostgreSQL), connected to database shop, after 00_users.crdb.sql and 01_database.crdb.sql.
-- Safe to re-run.

-- shop_admin owns the database, so the migrations it runs need no grant from root.
ALTER DATABASE shop OWNER TO shop_admin;

-- New databases let every user connect (PostgreSQL also lets them create temporary tables).
-- Only the users 02_roles.sql names may connect here.
REVOKE ALL ON DATABASE shop FROM PUBLIC;

-- The shop's tables live in schema `shop`, owned by shop_admin. Nothing is meant to live in
-- `public`; CockroachDB lets every user create tables there (PostgreSQL stopped in 15), so
-- close it: a user that can create a table can also make one the application resolves first.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS shop AUTHORIZATION shop_admin;
-- For a re-run on a database whose schema someone else created.
ALTER SCHEMA shop OWNER TO shop_admin;
