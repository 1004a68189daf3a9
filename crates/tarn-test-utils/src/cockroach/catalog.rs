//! CockroachDB's catalog, emulated in the backing PostgreSQL: one schema of views per version
//! (`crdb_v23_1`, …) named like the `pg_catalog` relations clients read, one more per version
//! for `information_schema`, and the stand-in's own schema `crdb_standin` (capture log,
//! registry of hidden and virtual columns, jobs, `unique_rowid()`).
//!
//! Every view is defined over PostgreSQL's real catalogs with CockroachDB's documented
//! differences, each cited in a SQL comment. Sources (see the research notes): PGC-new/PGC-old
//! are `pkg/sql/pg_catalog.go` (master and ~v22.1), IS-new `pkg/sql/information_schema.go`,
//! PARSER@x the cockroachdb-parser snapshots of `pkg/sql/types`.
//!
//! Tables without a primary key get `rowid INT8 NOT NULL DEFAULT unique_rowid() PRIMARY KEY`
//! (CockroachDB's hidden column, issue #80035's DDL) the moment they are created: an event
//! trigger on `ddl_command_end` runs [`CAPTURE_ALL`], which also (re)installs the capture
//! trigger on every user table, so DDL made directly in PostgreSQL is seen too.

use super::version::CockroachVersion;

/// `pg_catalog` relations the emulation models; anything else of `pg_catalog` is refused.
pub const MODELLED_PG_CATALOG: &[&str] = &[
    "pg_class",
    "pg_namespace",
    "pg_attribute",
    "pg_index",
    "pg_type",
    "pg_range",
    "pg_enum",
    "pg_constraint",
];

/// `information_schema` relations the emulation models.
pub const MODELLED_INFORMATION_SCHEMA: &[&str] = &["columns", "table_constraints", "key_column_usage"];

/// Functions each version schema defines (CockroachDB's answers).
pub const MODELLED_FUNCTIONS: &[&str] = &["version", "current_setting", "unique_rowid"];

/// SQL that runs `capture_all` (after DDL the event trigger does it by itself).
pub const CAPTURE_ALL: &str = "SELECT crdb_standin.capture_all()";

/// Synthetic virtual tables of CockroachDB's `crdb_internal` and `pg_extension` schemas:
/// `pg_class` lists every virtual table with relkind `'r'` (PGC-new `pgCatalogClassTable`
/// loops over `forEachTableDescWithTableLookup…virtualMany`). Their OIDs are taken from the
/// top of the 32-bit range, where CockroachDB numbers virtual descriptors (counting down).
const VIRTUAL_TABLES: &[(&str, &str, u32)] = &[
    ("crdb_internal", "cluster_settings", 4294967283),
    ("crdb_internal", "jobs", 4294967248),
    ("crdb_internal", "node_build_info", 4294967223),
    ("crdb_internal", "ranges", 4294967210),
    ("crdb_internal", "tables", 4294967190),
    ("crdb_internal", "zones", 4294967180),
    ("pg_extension", "geography_columns", 4294967040),
    ("pg_extension", "geometry_columns", 4294967039),
    ("pg_extension", "spatial_ref_sys", 4294967038),
];

/// The stand-in's schema: helper functions, the capture log and trigger, the registry, the
/// jobs behind `SHOW CHANGEFEED JOB(S)`, and the event trigger. Idempotent: it drops and
/// recreates everything of the stand-in.
pub fn install_sql() -> String {
    let mut sql = String::new();
    sql.push_str(
        r#"
DROP EVENT TRIGGER IF EXISTS crdb_standin_ddl;
DROP SCHEMA IF EXISTS crdb_standin CASCADE;
CREATE SCHEMA crdb_standin;
-- CockroachDB's virtual schemas that PostgreSQL lacks (pg_catalog and information_schema exist).
-- `pg_extension` needs allow_system_table_mods: PostgreSQL reserves the pg_ prefix.
CREATE SCHEMA IF NOT EXISTS crdb_internal;
SET allow_system_table_mods = on;
CREATE SCHEMA IF NOT EXISTS pg_extension;
RESET allow_system_table_mods;

-- Schemas of PostgreSQL or of the stand-in that CockroachDB does not have.
CREATE FUNCTION crdb_standin.hidden_schema(nsp name) RETURNS bool LANGUAGE sql IMMUTABLE AS $$
  SELECT nsp = 'crdb_standin' OR nsp LIKE 'crdb\_v%' OR nsp LIKE 'pg\_toast%' OR nsp LIKE 'pg\_temp\_%'
$$;
-- Schemas of user tables (captured, rowid added).
CREATE FUNCTION crdb_standin.user_schema(nsp name) RETURNS bool LANGUAGE sql IMMUTABLE AS $$
  SELECT NOT crdb_standin.hidden_schema(nsp)
     AND nsp NOT IN ('pg_catalog', 'information_schema', 'crdb_internal', 'pg_extension')
$$;

CREATE TABLE crdb_standin.meta (id int PRIMARY KEY DEFAULT 1, ddl_gen int8 NOT NULL DEFAULT 0);
INSERT INTO crdb_standin.meta DEFAULT VALUES;

-- Hidden columns (rowid, hash-shard columns) and virtual computed columns, as CockroachDB
-- would have declared them (NOT VISIBLE; VIRTUAL).
CREATE TABLE crdb_standin.columns (
  relid oid NOT NULL, attname name NOT NULL, kind text NOT NULL CHECK (kind IN ('hidden', 'virtual')),
  PRIMARY KEY (relid, attname, kind));
-- The JSON columns each table's capture trigger was installed with.
CREATE TABLE crdb_standin.captured (relid oid PRIMARY KEY, json_cols text NOT NULL);

-- The capture log: one row per changed row, drained by the stand-in's poller.
CREATE TABLE crdb_standin.changes (
  id bigserial PRIMARY KEY,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  relid oid NOT NULL,
  old jsonb, new jsonb,
  old_nulls text[] NOT NULL DEFAULT '{}', new_nulls text[] NOT NULL DEFAULT '{}');

-- Jobs, as `SHOW CHANGEFEED JOB(S)` and `SHOW JOBS` read them (kept by the stand-in).
CREATE TABLE crdb_standin.jobs (
  job_id int8 PRIMARY KEY, job_type text NOT NULL, description text, statement text,
  user_name text, status text, running_status text,
  created timestamp, started timestamp, finished timestamp, modified timestamp,
  high_water_timestamp numeric, error text, sink_uri text, full_table_names text[],
  topics text, format text, fraction_completed float4, coordinator_id int8);

-- CockroachDB's unique_rowid(): 10 µs units of wall time shifted left 15 bits, the low bits
-- telling ids of one instant apart (here a sequence instead of the node id).
CREATE SEQUENCE crdb_standin.rowid_seq;
CREATE FUNCTION crdb_standin.unique_rowid() RETURNS int8 LANGUAGE sql VOLATILE AS $$
  SELECT ((floor(extract(epoch FROM clock_timestamp()) * 100000)::int8) << 15)
         | (nextval('crdb_standin.rowid_seq') & 32767)
$$;

-- current_setting() as CockroachDB answers: server_version is 13.0.0 and server_version_num
-- 130000 in every version modelled (pkg/sql/vars.go PgServerVersion, research §6). Settings
-- the stand-in has not checked are refused rather than answered by PostgreSQL.
CREATE FUNCTION crdb_standin.current_setting(setting text, missing_ok bool) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
  CASE lower(setting)
    WHEN 'server_version' THEN RETURN '13.0.0';
    WHEN 'server_version_num' THEN RETURN '130000';
    WHEN 'timezone', 'datestyle', 'intervalstyle', 'application_name', 'client_encoding',
         'standard_conforming_strings', 'extra_float_digits', 'bytea_output', 'transaction_isolation'
      THEN RETURN pg_catalog.current_setting(setting, missing_ok);
    ELSE
      RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = format(
        'the CockroachDB stand-in does not model the setting %s; add it with CockroachDB''s behaviour', setting);
  END CASE;
END $$;

-- Column type as CockroachDB spells it (information_schema.columns.crdb_sql_type, IS-new:
-- `SQLString()`, e.g. INT8, STRING, DECIMAL(12,2), STRING[]).
CREATE FUNCTION crdb_standin.sql_type(udt name, len int, prec int, scale int) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN left(udt, 1) = '_' THEN crdb_standin.sql_type(substr(udt, 2)::name, NULL, NULL, NULL) || '[]'
    ELSE CASE udt
      WHEN 'int8' THEN 'INT8' WHEN 'int4' THEN 'INT4' WHEN 'int2' THEN 'INT2'
      WHEN 'text' THEN 'STRING' WHEN 'varchar' THEN 'VARCHAR' || coalesce('(' || len || ')', '')
      WHEN 'bpchar' THEN 'CHAR' || coalesce('(' || len || ')', '') WHEN 'char' THEN '"char"'
      WHEN 'numeric' THEN 'DECIMAL' || coalesce('(' || prec || ',' || scale || ')', '')
      WHEN 'float8' THEN 'FLOAT8' WHEN 'float4' THEN 'FLOAT4' WHEN 'bool' THEN 'BOOL'
      WHEN 'bytea' THEN 'BYTES' WHEN 'jsonb' THEN 'JSONB' WHEN 'json' THEN 'JSONB'
      WHEN 'timestamptz' THEN 'TIMESTAMPTZ' WHEN 'timestamp' THEN 'TIMESTAMP'
      WHEN 'timetz' THEN 'TIMETZ' WHEN 'time' THEN 'TIME' WHEN 'date' THEN 'DATE'
      WHEN 'interval' THEN 'INTERVAL' WHEN 'uuid' THEN 'UUID' WHEN 'inet' THEN 'INET'
      WHEN 'bit' THEN 'BIT' || coalesce('(' || len || ')', '') WHEN 'varbit' THEN 'VARBIT'
      WHEN 'oid' THEN 'OID' ELSE upper(udt) END END
$$;

-- The capture trigger: one log row per changed row, values as to_jsonb gives them under the
-- settings the stand-in's encoder expects. TG_ARGV names the table's JSON columns, whose SQL
-- NULL must be told apart from a JSON null.
CREATE FUNCTION crdb_standin.capture() RETURNS trigger LANGUAGE plpgsql
SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET DateStyle = 'ISO, MDY'
AS $$
DECLARE
  o jsonb; n jsonb; onull text[] := '{}'; nnull text[] := '{}'; c text; was_null bool;
BEGIN
  IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD); END IF;
  IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW); END IF;
  IF TG_NARGS > 0 THEN
    FOREACH c IN ARRAY TG_ARGV LOOP
      IF o IS NOT NULL AND o -> c = 'null'::jsonb THEN
        EXECUTE format('SELECT ($1).%I IS NULL', c) INTO was_null USING OLD;
        IF was_null THEN onull := onull || c; END IF;
      END IF;
      IF n IS NOT NULL AND n -> c = 'null'::jsonb THEN
        EXECUTE format('SELECT ($1).%I IS NULL', c) INTO was_null USING NEW;
        IF was_null THEN nnull := nnull || c; END IF;
      END IF;
    END LOOP;
  END IF;
  INSERT INTO crdb_standin.changes (relid, old, new, old_nulls, new_nulls)
  VALUES (TG_RELID, o, n, onull, nnull);
  RETURN NULL;
END $$;

-- TRUNCATE is a schema change in CockroachDB that changefeeds do not survive; row triggers
-- do not see it, so the stand-in refuses it rather than lose changes unnoticed.
CREATE FUNCTION crdb_standin.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = format(
    'the CockroachDB stand-in does not model TRUNCATE of %s; add it with CockroachDB''s behaviour', TG_TABLE_NAME);
END $$;

-- Gives every user table without a primary key CockroachDB's hidden rowid (issue #80035:
-- `rowid INT8 NOT VISIBLE NOT NULL DEFAULT unique_rowid()`, primary key `<table>_pkey` since
-- v22.1, PR #73833; `rowid_1`… when `rowid` is taken), and (re)installs the capture trigger.
CREATE FUNCTION crdb_standin.capture_all() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r record; cols text; hidden text; k int;
BEGIN
  IF coalesce(pg_catalog.current_setting('crdb_standin.capturing', true), '') = 'on' THEN RETURN; END IF;
  PERFORM pg_catalog.set_config('crdb_standin.capturing', 'on', true);
  FOR r IN SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND crdb_standin.user_schema(n.nspname) LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = r.oid AND i.indisprimary) THEN
      hidden := 'rowid'; k := 0;
      WHILE EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = r.oid AND a.attname = hidden AND NOT a.attisdropped) LOOP
        k := k + 1; hidden := 'rowid_' || k;
      END LOOP;
      EXECUTE format('ALTER TABLE %I.%I ADD COLUMN %I INT8 NOT NULL DEFAULT crdb_standin.unique_rowid() PRIMARY KEY',
                     r.nspname, r.relname, hidden);
      INSERT INTO crdb_standin.columns VALUES (r.oid, hidden, 'hidden') ON CONFLICT DO NOTHING;
    END IF;
    SELECT coalesce(string_agg(quote_literal(a.attname), ', ' ORDER BY a.attnum), '') INTO cols
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid IN (114, 3802);
    IF NOT EXISTS (SELECT 1 FROM crdb_standin.captured k WHERE k.relid = r.oid AND k.json_cols = cols)
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                       WHERE t.tgrelid = r.oid AND t.tgname = 'crdb_standin_capture') THEN
      EXECUTE format('CREATE OR REPLACE TRIGGER crdb_standin_capture AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
                     'FOR EACH ROW EXECUTE FUNCTION crdb_standin.capture(%s)', r.nspname, r.relname, cols);
      EXECUTE format('CREATE OR REPLACE TRIGGER crdb_standin_truncate BEFORE TRUNCATE ON %I.%I '
                     'FOR EACH STATEMENT EXECUTE FUNCTION crdb_standin.refuse_truncate()', r.nspname, r.relname);
      INSERT INTO crdb_standin.captured VALUES (r.oid, cols)
        ON CONFLICT (relid) DO UPDATE SET json_cols = excluded.json_cols;
    END IF;
  END LOOP;
  UPDATE crdb_standin.meta SET ddl_gen = ddl_gen + 1;
  PERFORM pg_catalog.set_config('crdb_standin.capturing', 'off', true);
END $$;

CREATE FUNCTION crdb_standin.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM crdb_standin.capture_all();
END $$;
"#,
    );
    sql.push_str("CREATE VIEW crdb_standin.virtual_tables (oid, nspname, relname) AS VALUES ");
    let rows = VIRTUAL_TABLES
        .iter()
        .map(|(nsp, rel, oid)| format!("({oid}::oid, '{nsp}'::name, '{rel}'::name)"));
    sql.push_str(&rows.collect::<Vec<_>>().join(", "));
    sql.push_str(";\n");
    for v in CockroachVersion::ALL {
        sql.push_str(&version_sql(v));
    }
    sql.push_str(
        "CREATE EVENT TRIGGER crdb_standin_ddl ON ddl_command_end EXECUTE FUNCTION crdb_standin.on_ddl();\n",
    );
    sql.push_str(CAPTURE_ALL);
    sql.push_str(";\nTRUNCATE crdb_standin.changes;\n");
    sql
}

/// Temporal types (and their arrays) whose `atttypmod` CockroachDB reports differently.
const TEMPORAL_TYPES: &str = "1114, 1184, 1083, 1266, 1115, 1185, 1183, 1270";
const INTERVAL_TYPES: &str = "1186, 1187";

/// One version's views.
fn version_sql(v: CockroachVersion) -> String {
    let s = v.catalog_schema();
    let is = v.information_schema();
    let relreplident = if v.at_least_23_2() {
        "-- v23.2+: 'd' for tables and materialized views, 'n' otherwise (PR #106242, release note\n  \
         -- _includes/releases/v23.2/v23.2.0-alpha.1.md:136; rowid tables too).\n  \
         (CASE WHEN k.kind IN ('r', 'm') THEN 'd' ELSE 'n' END)::\"char\""
    } else {
        "-- v23.1 and before: NULL (PGC-old `tree.DNull, // relreplident`).\n  NULL::\"char\""
    };
    let rowsecurity = if v >= CockroachVersion::V25_2 {
        "-- booleans from v25.2 (PR #141669).\n  false AS relforcerowsecurity, false AS relrowsecurity"
    } else {
        "-- NULL before v25.2 (PGC-old; PR #141669 made them booleans).\n  \
         NULL::bool AS relforcerowsecurity, NULL::bool AS relrowsecurity"
    };
    let dropped_filter = if v.at_least_23_2() {
        ""
    } else {
        "  -- Before v23.2 dropped columns leave gaps in attnum (PGC-old: attisdropped always false).\n  \
         AND NOT a.attisdropped\n"
    };
    let temporal_typmod = if v.at_least_23_2() {
        // PostgreSQL already gives -1 without an explicit precision and p with one.
        "a.atttypmod".to_string()
    } else {
        "-1".to_string()
    };
    let interval_typmod = if v.at_least_23_2() {
        // PostgreSQL packs the fields into the high half; CockroachDB gives the precision only
        // (issue #113514), -1 without one.
        "CASE WHEN a.atttypmod = -1 OR (a.atttypmod & 65535) = 65535 THEN -1 ELSE a.atttypmod & 65535 END"
            .to_string()
    } else {
        "-1".to_string()
    };
    let types = v
        .builtin_types()
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let version = v.version_string().replace('\'', "''");
    format!(
        r#"
DROP SCHEMA IF EXISTS {s} CASCADE;
DROP SCHEMA IF EXISTS {is} CASCADE;
CREATE SCHEMA {s};
CREATE SCHEMA {is};

-- SELECT version(): CockroachDB's build string (research §6).
CREATE FUNCTION {s}.version() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT '{version}'::text $$;
CREATE FUNCTION {s}.current_setting(text) RETURNS text LANGUAGE sql STABLE AS
  $$ SELECT crdb_standin.current_setting($1, false) $$;
CREATE FUNCTION {s}.current_setting(text, bool) RETURNS text LANGUAGE sql STABLE AS
  $$ SELECT crdb_standin.current_setting($1, $2) $$;
CREATE FUNCTION {s}.unique_rowid() RETURNS int8 LANGUAGE sql VOLATILE AS $$ SELECT crdb_standin.unique_rowid() $$;

-- pg_namespace: CockroachDB's schemas; no pg_toast / pg_temp schemas (PostgreSQL internals).
CREATE VIEW {s}.pg_namespace AS
SELECT n.oid, n.nspname, n.nspowner, NULL::aclitem[] AS nspacl
  FROM pg_catalog.pg_namespace n
 WHERE NOT crdb_standin.hidden_schema(n.nspname);

-- pg_class (research §1, PGC-new `pgCatalogClassTable`). Only the current database's objects
-- plus the virtual schemas' tables, which all have relkind 'r'.
CREATE VIEW {s}.pg_class AS
WITH k AS (
  SELECT c.*,
         -- Virtual tables of pg_catalog/information_schema are relkind 'r' in CockroachDB.
         (CASE WHEN n.nspname IN ('pg_catalog', 'information_schema') THEN 'r' ELSE c.relkind END)::"char" AS kind
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE NOT crdb_standin.hidden_schema(n.nspname) AND c.relkind IN ('r', 'v', 'm', 'S', 'i')
  UNION ALL
  -- crdb_internal and pg_extension virtual tables (synthetic rows).
  SELECT t.oid, t.relname, n.oid, 0::oid, 0::oid, 10::oid, 0::oid, 0::oid, 0::oid, 0, 0::float4, 0,
         0::oid, false, false, 'p'::"char", 'r'::"char", 0::int2, 0::int2, false, false, false, false,
         false, true, 'n'::"char", false, 0::oid, '0'::xid, '0'::xid, NULL::aclitem[],
         NULL::text[], NULL::pg_node_tree, 'r'::"char"
    FROM crdb_standin.virtual_tables t JOIN pg_catalog.pg_namespace n ON n.nspname = t.nspname
)
SELECT k.oid, k.relname, k.relnamespace, k.reltype, k.reloftype, k.relowner, k.relam, k.relfilenode,
  k.reltablespace,
  -- NULL for tables (PGC-new): relpages, reltuples.
  NULL::int4 AS relpages, NULL::float4 AS reltuples, 0::int4 AS relallvisible, 0::oid AS reltoastrelid,
  k.relhasindex, false AS relisshared, k.relpersistence, k.relpersistence = 't' AS relistemp,
  k.kind AS relkind, k.relnatts, k.relchecks, false AS relhasoids,
  EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = k.oid AND i.indisprimary) AS relhaspkey,
  false AS relhasrules, false AS relhastriggers, false AS relhassubclass, k.relfrozenxid,
  NULL::aclitem[] AS relacl, k.reloptions,
  {rowsecurity},
  -- relispartition is NULL in every version (PGC-old and PGC-new: `tree.DNull, // relispartition`).
  NULL::bool AS relispartition,
  -- relispopulated, relrewrite, relpartbound, relminmxid: NULL (PGC-new).
  NULL::bool AS relispopulated,
  {relreplident} AS relreplident,
  NULL::oid AS relrewrite, NULL::text AS relpartbound, NULL::xid AS relminmxid
FROM k;

-- pg_attribute (research §2, PGC-new `pgCatalogAttributeTable`): AccessibleColumns, hidden
-- ones (rowid, hash-shard columns) included.
CREATE VIEW {s}.pg_attribute AS
SELECT a.attrelid, a.attname,
  -- Placeholder rows of dropped columns have atttypid 2283 (anyelement) (PR #111019; PR #163950
  -- changed it to 0 only in 2026).
  (CASE WHEN a.attisdropped THEN 2283 ELSE a.atttypid END)::oid AS atttypid,
  0::int4 AS attstattarget, a.attlen, a.attnum, a.attndims, -1::int4 AS attcacheoff,
  -- atttypmod (types.T.TypeModifier(), PARSER@23.1/23.2/25.2): DECIMAL/VARCHAR/CHAR/BIT as in
  -- PostgreSQL; TIMESTAMP/TIMESTAMPTZ/TIME/TIMETZ the explicit precision or -1 (PR #111400,
  -- v23.2; v23.1.11 predates its backport to v23.1.13 and always gives -1); INTERVAL the
  -- precision only (issue #113514); arrays the element's.
  (CASE WHEN a.atttypid IN ({TEMPORAL_TYPES}) THEN {temporal_typmod}
        WHEN a.atttypid IN ({INTERVAL_TYPES}) THEN {interval_typmod}
        ELSE a.atttypmod END)::int4 AS atttypmod,
  a.attbyval, a.attstorage, a.attalign, a.attnotnull, a.atthasdef, false AS atthasmissing,
  a.attidentity,
  -- Virtual computed columns (hash-shard columns are) report 'v'; PostgreSQL backs them with
  -- STORED generated columns, registered in crdb_standin.columns.
  (CASE WHEN vc.attname IS NOT NULL THEN 'v' ELSE a.attgenerated END)::"char" AS attgenerated,
  a.attisdropped, true AS attislocal, 0::int4 AS attinhcount, a.attcollation,
  NULL::aclitem[] AS attacl, NULL::text[] AS attoptions, NULL::text[] AS attfdwoptions,
  NULL::text AS attmissingval
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN crdb_standin.columns vc ON vc.relid = a.attrelid AND vc.attname = a.attname AND vc.kind = 'virtual'
WHERE a.attnum > 0 AND NOT crdb_standin.hidden_schema(n.nspname) AND c.relkind IN ('r', 'v', 'm', 'S', 'i')
{dropped_filter};

-- pg_index (research §3, PGC-new `addRowForPgIndex`): indisreplident is always false; a rowid
-- table's primary index is on rowid (pg_index has no hidden-column filter).
CREATE VIEW {s}.pg_index AS
SELECT i.indexrelid, i.indrelid, i.indnatts, i.indnkeyatts, i.indisunique, i.indnullsnotdistinct,
  i.indisprimary, i.indisexclusion, i.indimmediate, i.indisclustered, i.indisvalid, i.indcheckxmin,
  i.indisready, i.indislive,
  false AS indisreplident,
  i.indkey, i.indcollation, i.indclass, i.indoption,
  pg_catalog.pg_get_expr(i.indexprs, i.indrelid) AS indexprs,
  pg_catalog.pg_get_expr(i.indpred, i.indrelid) AS indpred
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE crdb_standin.user_schema(n.nspname);

-- pg_type (research §4, PGC-new `addPGTypeRow`): the built-in types of types.OidToType (with
-- PostgreSQL's OIDs), one composite row per table, user-defined enums and their arrays; no
-- domains; typbasetype always 0 and typtypmod always -1.
CREATE VIEW {s}.pg_type AS
SELECT t.oid, t.typname, t.typnamespace, t.typowner, t.typlen, t.typbyval, t.typtype, t.typcategory,
  t.typispreferred, t.typisdefined, t.typdelim, t.typrelid, t.typelem, t.typarray, t.typinput,
  t.typoutput, t.typreceive, t.typsend, t.typmodin, t.typmodout, t.typanalyze, t.typalign,
  t.typstorage, t.typnotnull,
  0::oid AS typbasetype, -1::int4 AS typtypmod,
  t.typndims, t.typcollation, NULL::text AS typdefaultbin, NULL::text AS typdefault,
  NULL::aclitem[] AS typacl
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE (n.nspname = 'pg_catalog' AND t.typname IN ({types}))
   OR (crdb_standin.user_schema(n.nspname) AND (
         t.typtype = 'e'
      OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_catalog.pg_class r
                                       WHERE r.oid = t.typrelid AND r.relkind IN ('r', 'v', 'm')))
      OR (t.typcategory = 'A' AND EXISTS (SELECT 1 FROM pg_catalog.pg_type e
                                           WHERE e.oid = t.typelem AND e.typtype = 'e'))));

-- pg_range: CockroachDB has no range types; the table is empty.
CREATE VIEW {s}.pg_range AS
SELECT NULL::oid AS rngtypid, NULL::oid AS rngsubtype, NULL::oid AS rngmultitypid,
       NULL::oid AS rngcollation, NULL::oid AS rngsubopc, NULL::oid AS rngcanonical, NULL::oid AS rngsubdiff
 WHERE false;

-- pg_enum: the current database's enums.
CREATE VIEW {s}.pg_enum AS
SELECT e.oid, e.enumtypid, e.enumsortorder, e.enumlabel
  FROM pg_catalog.pg_enum e JOIN pg_catalog.pg_type t ON t.oid = e.enumtypid
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE crdb_standin.user_schema(n.nspname);

-- pg_constraint: the current database's constraints; the primary key of a rowid table is
-- listed (show_primary_key_constraint_on_not_visible_columns defaults to true, pkg/sql/vars.go,
-- PR #80154).
CREATE VIEW {s}.pg_constraint AS
SELECT c.oid, c.conname, c.connamespace, c.contype, c.condeferrable, c.condeferred, c.convalidated,
  c.conrelid, c.contypid, c.conindid, c.confrelid, c.confupdtype, c.confdeltype, c.confmatchtype,
  c.conislocal, c.coninhcount, c.connoinherit, c.conkey, c.confkey,
  pg_catalog.pg_get_constraintdef(c.oid) AS condef
FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
WHERE crdb_standin.user_schema(n.nspname);

-- information_schema.columns (follow-up B, IS-new): AccessibleColumns, so rowid is listed with
-- is_hidden = 'YES'; data_type is the SQL-standard name (InformationSchemaName(), as
-- PostgreSQL's); crdb_sql_type CockroachDB's spelling.
CREATE VIEW {is}.columns AS
SELECT c.*,
  (CASE WHEN h.attname IS NOT NULL THEN 'YES' ELSE 'NO' END)::text AS is_hidden,
  crdb_standin.sql_type(c.udt_name::name, c.character_maximum_length::int, c.numeric_precision::int,
                        c.numeric_scale::int) AS crdb_sql_type
FROM information_schema.columns c
LEFT JOIN (SELECT n.nspname, r.relname, h.attname FROM crdb_standin.columns h
             JOIN pg_catalog.pg_class r ON r.oid = h.relid
             JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
            WHERE h.kind = 'hidden') h
  ON h.nspname = c.table_schema AND h.relname = c.table_name AND h.attname = c.column_name
WHERE NOT crdb_standin.hidden_schema(c.table_schema::name);

-- information_schema.table_constraints (follow-up B, IS-new): every constraint, the primary
-- key of a rowid table included (no hidden-column filter), plus NOT NULL rows as CHECK.
CREATE VIEW {is}.table_constraints AS
SELECT constraint_catalog, constraint_schema, constraint_name, table_catalog, table_schema, table_name,
       constraint_type, is_deferrable, initially_deferred
  FROM information_schema.table_constraints
 WHERE crdb_standin.user_schema(table_schema::name);

-- information_schema.key_column_usage (follow-up B, IS-new): a primary key's columns in index
-- order (IndexKeyColumns), rowid at ordinal 1 for rowid tables, the shard column first for
-- hash-sharded keys.
CREATE VIEW {is}.key_column_usage AS
SELECT constraint_catalog, constraint_schema, constraint_name, table_catalog, table_schema, table_name,
       column_name, ordinal_position, position_in_unique_constraint
  FROM information_schema.key_column_usage
 WHERE crdb_standin.user_schema(table_schema::name);
"#
    )
}
