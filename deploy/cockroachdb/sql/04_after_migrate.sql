-- Run after each `shop migrate up` (apply.sh after-migrate). Portable: CockroachDB and
-- PostgreSQL run it alike. Run as root / a superuser, connected to database shop. Safe to
-- re-run.
--
-- The shop's migrator (examples/shop, src/migrate.rs) keeps its bookkeeping in two tables it
-- creates in the same schema as the shop's tables: the applied-migration history and the
-- single-row lock that serialises concurrent runners. Being created by shop_admin in schema
-- shop, they received the default privileges of 02_roles.sql like the shop's tables. But they
-- are not the shop's data: shop_app keeps SELECT (the shop reads the history to report
-- pending migrations) and loses writes (a row in the lock table would block every migration,
-- a deleted history row would make the migrator re-apply it), and tarn_cdc loses everything
-- (they are nothing to capture).

REVOKE INSERT, UPDATE, DELETE ON shop.shop_schema_migrations, shop.shop_migration_lock FROM shop_app;
REVOKE ALL ON shop.shop_schema_migrations, shop.shop_migration_lock FROM tarn_cdc;
