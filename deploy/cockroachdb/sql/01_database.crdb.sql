-- CockroachDB only. The shop's database. Run as root, against defaultdb.
--
-- `IF NOT EXISTS` (which PostgreSQL's CREATE DATABASE lacks) makes the file safe to re-run;
-- validate.sh derives PostgreSQL's `CREATE DATABASE shop` from the statement below.
-- Ownership, schemas and grants are in the portable 01_database.sql and 02_roles.sql.

CREATE DATABASE IF NOT EXISTS shop;
