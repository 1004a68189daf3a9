//! What the proxy does to a query before PostgreSQL sees it: catalog names go to the played
//! version's schemas, `cluster_logical_timestamp()` becomes the stand-in clock's reading,
//! `SHOW CHANGEFEED JOB(S)` / `SHOW JOBS` / `SHOW CLUSTER SETTING` become queries over the
//! stand-in's state, and anything of `pg_catalog` / `information_schema` that the emulation
//! does not model is refused, so nothing falls through to PostgreSQL's answers unnoticed.

use std::collections::{BTreeMap, HashSet};

use super::catalog::{MODELLED_FUNCTIONS, MODELLED_INFORMATION_SCHEMA, MODELLED_PG_CATALOG};
use super::clock::Hlc;
use super::lexer::{Kind, Token, quote_ident, quote_literal, significant, tokens};
use super::version::CockroachVersion;

/// Functions PostgreSQL has whose answers would be PostgreSQL's, not CockroachDB's: refused.
const REFUSED_FUNCTIONS: &[&str] = &[
    "txid_current",
    "txid_current_snapshot",
    "txid_snapshot_xmin",
    "txid_snapshot_xmax",
    "format_type",
    "obj_description",
    "col_description",
    "shobj_description",
    "has_table_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "has_column_privilege",
    "has_any_column_privilege",
    "has_function_privilege",
    "has_sequence_privilege",
    "has_type_privilege",
    "set_config",
    "to_regclass",
    "to_regtype",
    "to_regnamespace",
    "current_schemas",
    "inet_server_addr",
    "inet_server_port",
];

/// `pg_` functions whose answers are the same in CockroachDB: passed through.
const PASSED_PG_FUNCTIONS: &[&str] = &["pg_typeof", "pg_sleep"];

/// What the rewriter needs to know.
pub struct Context<'a> {
    /// The version played.
    pub version: CockroachVersion,
    /// Relations of PostgreSQL's `pg_catalog` (to refuse the unmodelled ones by name).
    pub pg_relations: &'a HashSet<String>,
    /// The stand-in's clock, read once the capture is up to date, when the query calls
    /// `cluster_logical_timestamp()`.
    pub now: Option<Hlc>,
    /// Cluster settings, for `SHOW CLUSTER SETTING`.
    pub settings: &'a BTreeMap<String, String>,
}

/// Why a query is refused: the stand-in's message.
fn refusal(what: &str) -> String {
    format!("the CockroachDB stand-in does not model {what}; add it with CockroachDB's behaviour")
}

/// Whether `sql` calls `cluster_logical_timestamp()` (the proxy then brings the capture up to
/// date and reads the clock before rewriting).
pub fn calls_cluster_logical_timestamp(sql: &str) -> bool {
    significant(sql)
        .iter()
        .any(|t| t.name(sql).as_deref() == Some("cluster_logical_timestamp"))
}

fn is_refused_function(name: &str) -> bool {
    (name.starts_with("pg_") && !PASSED_PG_FUNCTIONS.contains(&name)) || REFUSED_FUNCTIONS.contains(&name)
}

/// Rewrites one query (one or more statements); `Err` is the refusal message.
pub fn rewrite(sql: &str, cx: &Context<'_>) -> Result<String, String> {
    let all = tokens(sql);
    let sig: Vec<usize> = (0..all.len()).filter(|&i| all[i].kind != Kind::Space).collect();
    let tok = |k: usize| -> Option<&Token> { sig.get(k).map(|&i| &all[i]) };
    // Replacements: (start, end, text), in order.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let schema = cx.version.catalog_schema();
    let mut k = 0;
    while k < sig.len() {
        let t = tok(k).expect("in range");
        // `[SHOW …]` and `(SHOW …)`, or a statement that is a SHOW.
        let statement_start = k == 0 || tok(k - 1).is_some_and(|p| p.is(';'));
        if (t.is('[') || t.is('(')) && tok(k + 1).is_some_and(|n| n.is_kw(sql, "show")) {
            let close = if t.is('[') { ']' } else { ')' };
            let mut depth = 0;
            let mut end = None;
            for j in k..sig.len() {
                let u = tok(j).expect("in range");
                if u.is('[') || u.is('(') {
                    depth += 1;
                } else if u.is(']') || u.is(')') {
                    depth -= 1;
                    if depth == 0 {
                        if u.is(close) {
                            end = Some(j);
                        }
                        break;
                    }
                }
            }
            if let Some(j) = end {
                let inner = &sql[tok(k + 1).expect("show").start..tok(j).expect("close").start];
                if let Some(query) = show_sql(inner, cx)? {
                    // `FROM [SHOW …]` needs no alias in CockroachDB; PostgreSQL's subqueries do.
                    let aliased = tok(j + 1).is_some_and(|n| {
                        n.kind != Kind::Ident
                            || !matches!(
                                n.name(sql).as_deref(),
                                Some(
                                    "where"
                                        | "order"
                                        | "limit"
                                        | "offset"
                                        | "join"
                                        | "inner"
                                        | "left"
                                        | "right"
                                        | "full"
                                        | "cross"
                                        | "natural"
                                        | "on"
                                        | "group"
                                        | "having"
                                        | "union"
                                        | "except"
                                        | "intersect"
                                        | "window"
                                        | "fetch"
                                        | "for"
                                )
                            )
                    }) && !tok(j + 1).is_some_and(|n| n.is(';') || n.is(')') || n.is(','));
                    let alias = if t.is('[') && !aliased { " AS show" } else { "" };
                    edits.push((t.start, tok(j).expect("close").end, format!("({query}){alias}")));
                    k = j + 1;
                    continue;
                }
            }
        }
        if statement_start && t.is_kw(sql, "show") {
            let mut j = k;
            while j + 1 < sig.len() && !tok(j + 1).expect("in range").is(';') {
                j += 1;
            }
            let inner = &sql[t.start..tok(j).expect("end").end];
            if let Some(query) = show_sql(inner, cx)? {
                edits.push((t.start, tok(j).expect("end").end, query));
                k = j + 1;
                continue;
            }
        }
        let Some(name) = t.name(sql) else {
            k += 1;
            continue;
        };
        if name == "crdb_internal" && tok(k + 1).is_some_and(|n| n.is('.')) {
            let member = tok(k + 2).and_then(|m| m.name(sql)).unwrap_or_default();
            return Err(refusal(&format!("crdb_internal.{member}")));
        }
        if t.is_kw(sql, "as")
            && tok(k + 1).is_some_and(|n| n.is_kw(sql, "of"))
            && tok(k + 2).is_some_and(|n| n.is_kw(sql, "system"))
        {
            return Err(refusal("AS OF SYSTEM TIME"));
        }
        let dotted_before = k > 0 && tok(k - 1).is_some_and(|p| p.is('.'));
        let dot_after = tok(k + 1).is_some_and(|n| n.is('.'));
        if dot_after && (name == "pg_catalog" || name == "information_schema") {
            let Some(member) = tok(k + 2).and_then(|m| m.name(sql)) else {
                k += 1;
                continue;
            };
            let call = tok(k + 3).is_some_and(|n| n.is('('));
            if name == "information_schema" {
                if !MODELLED_INFORMATION_SCHEMA.contains(&member.as_str()) {
                    return Err(refusal(&format!("information_schema.{member}")));
                }
                edits.push((t.start, t.end, cx.version.information_schema()));
            } else if member == "cluster_logical_timestamp" && call {
                let close = tok(k + 4).filter(|c| c.is(')'));
                if let (Some(close), Some(now)) = (close, cx.now) {
                    edits.push((t.start, close.end, format!("{}::numeric", now.decimal())));
                    k += 5;
                    continue;
                }
            } else if MODELLED_PG_CATALOG.contains(&member.as_str())
                || (call && MODELLED_FUNCTIONS.contains(&member.as_str()))
            {
                edits.push((t.start, t.end, schema.to_string()));
            } else if call && is_refused_function(&member) {
                return Err(refusal(&format!("pg_catalog.{member}()")));
            } else if !call && cx.pg_relations.contains(&member) {
                return Err(refusal(&format!("pg_catalog.{member}")));
            }
            k += 3;
            continue;
        }
        if !dotted_before && !dot_after {
            let call = tok(k + 1).is_some_and(|n| n.is('('));
            if call && name == "cluster_logical_timestamp" {
                if let (Some(close), Some(now)) = (tok(k + 2).filter(|c| c.is(')')), cx.now) {
                    edits.push((t.start, close.end, format!("{}::numeric", now.decimal())));
                    k += 3;
                    continue;
                }
            } else if call && is_refused_function(&name) {
                return Err(refusal(&format!("{name}()")));
            } else if !call
                && name.starts_with("pg_")
                && cx.pg_relations.contains(&name)
                && !MODELLED_PG_CATALOG.contains(&name.as_str())
            {
                return Err(refusal(&format!("pg_catalog.{name}")));
            }
        }
        k += 1;
    }
    let mut out = String::with_capacity(sql.len() + 64);
    let mut at = 0;
    for (start, end, text) in edits {
        out.push_str(&sql[at..start]);
        out.push_str(&text);
        at = end;
    }
    out.push_str(&sql[at..]);
    Ok(out)
}

/// The columns of `SHOW CHANGEFEED JOB(S)` (`pkg/sql/delegate/show_changefeed_jobs.go`; docs
/// `_includes/v23.1/cdc/show-changefeed-job.md`), `readable_high_water_timestamptz` from
/// v25.1 (#135623).
fn changefeed_columns(v: CockroachVersion) -> String {
    let readable = if v >= CockroachVersion::V25_2 {
        "(timestamptz 'epoch' + floor(high_water_timestamp / 1000)::int8 * interval '1 microsecond') \
         AS readable_high_water_timestamptz, "
    } else {
        ""
    };
    format!(
        "job_id, description, user_name, status, running_status, created, started, finished, modified, \
         high_water_timestamp, {readable}error, sink_uri, full_table_names, topics, format"
    )
}

const JOBS_COLUMNS: &str = "job_id, job_type, description, statement, user_name, status, running_status, \
     created, started, finished, modified, fraction_completed, error, coordinator_id";

/// The query a SHOW statement stands for, or `None` for SHOW statements PostgreSQL answers
/// the same way (session variables).
fn show_sql(text: &str, cx: &Context<'_>) -> Result<Option<String>, String> {
    let t = significant(text);
    let words: Vec<String> = t
        .iter()
        .map(|t| text[t.start..t.end].to_ascii_lowercase())
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let job_id = |s: &str| -> Result<i64, String> {
        s.parse::<i64>()
            .map_err(|_| format!("the CockroachDB stand-in reads only a literal job id here, not {s}"))
    };
    Ok(Some(match w.as_slice() {
        ["show", "changefeed", "jobs"] => format!(
            "SELECT {} FROM crdb_standin.jobs WHERE job_type = 'CHANGEFEED' ORDER BY created DESC",
            changefeed_columns(cx.version)
        ),
        ["show", "changefeed", "job", id] => format!(
            "SELECT {} FROM crdb_standin.jobs WHERE job_type = 'CHANGEFEED' AND job_id = {}",
            changefeed_columns(cx.version),
            job_id(id)?
        ),
        ["show", "jobs"] => format!("SELECT {JOBS_COLUMNS} FROM crdb_standin.jobs ORDER BY created DESC"),
        ["show", "job", id] => format!(
            "SELECT {JOBS_COLUMNS} FROM crdb_standin.jobs WHERE job_id = {}",
            job_id(id)?
        ),
        ["show", "server_version"] => "SELECT '13.0.0'::text AS server_version".into(),
        ["show", "server_version_num"] => "SELECT '130000'::text AS server_version_num".into(),
        ["show", "cluster", "setting", ..] => {
            let name: String = words[3..].concat();
            let value = cx
                .settings
                .get(&name)
                .ok_or_else(|| format!("unknown setting: {name}"))?;
            let literal = match value.as_str() {
                "true" | "false" => value.clone(),
                _ => quote_literal(value),
            };
            format!("SELECT {literal} AS {}", quote_ident(&name))
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(rels: &'a HashSet<String>, settings: &'a BTreeMap<String, String>) -> Context<'a> {
        Context {
            version: CockroachVersion::V23_1,
            pg_relations: rels,
            now: Some(Hlc { wall: 5, logical: 1 }),
            settings,
        }
    }

    #[test]
    fn catalog_names() {
        let rels: HashSet<String> = ["pg_class", "pg_attribute", "pg_proc", "pg_type"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let settings = BTreeMap::new();
        let cx = cx(&rels, &settings);
        assert_eq!(
            rewrite(
                "SELECT t.typname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_range r ON true",
                &cx
            )
            .unwrap(),
            "SELECT t.typname FROM crdb_v23_1.pg_type t JOIN crdb_v23_1.pg_range r ON true"
        );
        assert_eq!(
            rewrite("SELECT 1 FROM information_schema.key_column_usage k", &cx).unwrap(),
            "SELECT 1 FROM crdb_v23_1_information_schema.key_column_usage k"
        );
        assert_eq!(
            rewrite("SELECT pg_catalog.version(), x::pg_catalog.int8, 'pg_proc'", &cx).unwrap(),
            "SELECT crdb_v23_1.version(), x::pg_catalog.int8, 'pg_proc'"
        );
        assert!(
            rewrite("SELECT * FROM pg_proc", &cx)
                .unwrap_err()
                .contains("pg_catalog.pg_proc")
        );
        assert!(
            rewrite("SELECT * FROM pg_catalog.pg_proc", &cx)
                .unwrap_err()
                .contains("pg_catalog.pg_proc;")
        );
        assert!(
            rewrite("SELECT * FROM information_schema.tables", &cx)
                .unwrap_err()
                .contains("information_schema.tables")
        );
        assert!(
            rewrite("SELECT pg_get_indexdef(1)", &cx)
                .unwrap_err()
                .contains("pg_get_indexdef()")
        );
        assert_eq!(
            rewrite("SELECT pg_typeof(1), cluster_logical_timestamp()", &cx).unwrap(),
            "SELECT pg_typeof(1), 5.0000000001::numeric"
        );
        assert!(calls_cluster_logical_timestamp(
            "select CLUSTER_LOGICAL_TIMESTAMP()"
        ));
    }

    #[test]
    fn shows() {
        let rels = HashSet::new();
        let mut settings = BTreeMap::new();
        settings.insert("kv.rangefeed.enabled".to_string(), "true".to_string());
        let cx = cx(&rels, &settings);
        let q = rewrite("SELECT status, error FROM [SHOW CHANGEFEED JOB 42]", &cx).unwrap();
        assert!(
            q.starts_with("SELECT status, error FROM (SELECT job_id, description"),
            "{q}"
        );
        assert!(q.ends_with("AND job_id = 42) AS show"), "{q}");
        let q = rewrite("SELECT * FROM [SHOW JOBS] AS j WHERE true", &cx).unwrap();
        assert!(q.ends_with(") AS j WHERE true"), "{q}");
        let q = rewrite("SELECT * FROM [SHOW JOBS] WHERE true", &cx).unwrap();
        assert!(q.ends_with(") AS show WHERE true"), "{q}");
        let q = rewrite("SHOW CHANGEFEED JOBS", &cx).unwrap();
        assert!(q.contains("FROM crdb_standin.jobs"), "{q}");
        let q = rewrite("WITH x AS (SHOW JOBS) SELECT * FROM x", &cx).unwrap();
        assert!(q.starts_with("WITH x AS (SELECT job_id, job_type"), "{q}");
        assert_eq!(
            rewrite("SHOW CLUSTER SETTING kv.rangefeed.enabled", &cx).unwrap(),
            "SELECT true AS \"kv.rangefeed.enabled\""
        );
        assert_eq!(rewrite("SHOW TimeZone", &cx).unwrap(), "SHOW TimeZone");
    }
}
