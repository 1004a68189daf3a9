//! Rewrites of the catalog queries clients send, before `datafusion-postgres` parses them, for
//! what DataFusion cannot plan as PostgreSQL writes it:
//!
//! - `information_schema.columns`, `.table_constraints`, `.key_column_usage` are read from
//!   tarn's relations ([`crate::pg_relations`]): DataFusion answers `information_schema` itself,
//!   without keys and with Arrow's type names;
//! - `col_description`, `obj_description`, `pg_get_constraintdef`, `pg_get_indexdef` and
//!   `expr::regclass` (of anything but a parameter, which the emulation looks up in
//!   `pg_class`) call tarn's look-up functions with the grant token of the statement's
//!   principal (see [`crate::pg_relations`]);
//! - the set-returning `generate_subscripts(a, 1)` and `information_schema._pg_expandarray(a)`
//!   (pgjdbc's and Metabase's key and index queries) become `unnest`s, which DataFusion zips
//!   as PostgreSQL runs several set-returning functions in one select list; `(x).f` on a
//!   composite becomes `get_field(x, 'f')`;
//! - psql's `array(select 'toast.' || x from unnest(tc.reloptions) x)` (the options of a
//!   table's TOAST table, which tarn's tables do not have) is an empty `text[]`: DataFusion has
//!   no `ARRAY(subquery)`;
//! - a boolean catalog column compared with `'t'` or `'f'` (`ix.indisprimary = 'f'`) is
//!   compared with `true` or `false`: DataFusion does not read text as a boolean there.
//!
//! And for every statement of a connection whose `search_path` is not the default: unqualified
//! table names resolve in the path's schemas ([`with_search_path`]).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, CastKind, Expr, FunctionArguments, Ident, ObjectName, ObjectNamePart, Query,
    Statement, Value, Visit, VisitMut, Visitor, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::pg_relations::{INFORMATION_SCHEMA_TABLES, Lookup, information_schema_table};

/// `statements` as one SQL text.
pub(crate) fn sql_of(statements: &[Statement]) -> String {
    statements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(";\n")
}

/// Whether `sql` may read the catalog, so the relations are refreshed and the statement
/// rewritten before it is planned.
pub(crate) fn reads_catalog(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    [
        "pg_",
        "information_schema",
        "regclass",
        "_description",
        "generate_subscripts",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// `sql` rewritten (module doc), with `token` as the grant token of the look-up functions;
/// `None` when nothing changes or it does not parse (the endpoint reports the parse error).
pub(crate) fn rewrite(sql: &str, token: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut rewriter = Rewriter {
        token: token.to_string(),
        changed: false,
    };
    for statement in &mut statements {
        if !matches!(statement, Statement::Query(_)) {
            continue;
        }
        let _ = statement.visit(&mut rewriter);
    }
    rewriter.changed.then(|| sql_of(&statements))
}

struct Rewriter {
    token: String,
    changed: bool,
}

/// The schemas of a connection's `search_path` (`SET search_path TO shop, public`, or the
/// startup option `-c search_path=shop`), in order, without `"$user"`; empty when unset.
pub(crate) fn search_path(metadata: &std::collections::HashMap<String, String>) -> Vec<String> {
    let value = metadata.get("search_path").cloned().or_else(|| {
        // libpq's `options` startup parameter: `-c search_path=shop` or `-csearch_path=shop`.
        let options = metadata.get("options")?;
        let at = options.find("search_path=")?;
        let rest = &options[at + "search_path=".len()..];
        Some(rest.split(" -").next().unwrap_or(rest).trim().to_string())
    });
    value
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().trim_matches('\'').to_string())
        .map(|s| match s.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
            Some(quoted) => quoted.to_string(),
            None => s.to_ascii_lowercase(),
        })
        .filter(|s| !s.is_empty() && s != "$user")
        .collect()
}

/// `sql` with its unqualified table names qualified by the first schema of `search_path` that
/// has the table (`exists(schema, table)`), and `current_schema()` answered with the first
/// schema; `None` when nothing changes. DataFusion resolves unqualified names in the session's
/// default schema, shared by every connection; this makes each connection's own `search_path`
/// hold, as it does in PostgreSQL (Superset sets it for a schema chosen in SQL Lab).
pub(crate) fn with_search_path(
    sql: &str,
    search_path: &[String],
    exists: &dyn Fn(&str, &str) -> bool,
) -> Option<String> {
    let first = search_path.first()?;
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut ctes = CteNames::default();
    for statement in &statements {
        let _ = statement.visit(&mut ctes);
    }
    let mut rewriter = SearchPath {
        search_path,
        first,
        exists,
        ctes: ctes.0,
        changed: false,
    };
    for statement in &mut statements {
        let _ = statement.visit(&mut rewriter);
    }
    rewriter.changed.then(|| sql_of(&statements))
}

/// The names `WITH` gives its queries, which are no tables to qualify.
#[derive(Default)]
struct CteNames(BTreeSet<String>);

impl Visitor for CteNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Self::Break> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.0.insert(cte.alias.name.value.to_ascii_lowercase());
            }
        }
        ControlFlow::Continue(())
    }
}

struct SearchPath<'a> {
    search_path: &'a [String],
    first: &'a str,
    exists: &'a dyn Fn(&str, &str) -> bool,
    ctes: BTreeSet<String>,
    changed: bool,
}

impl VisitorMut for SearchPath<'_> {
    type Break = ();

    fn post_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<Self::Break> {
        let [ObjectNamePart::Identifier(table)] = relation.0.as_slice() else {
            return ControlFlow::Continue(());
        };
        let name = if table.quote_style.is_some() {
            table.value.clone()
        } else {
            table.value.to_ascii_lowercase()
        };
        if self.ctes.contains(&name) {
            return ControlFlow::Continue(());
        }
        if let Some(schema) = self.search_path.iter().find(|s| (self.exists)(s, &name)) {
            relation.0.insert(
                0,
                ObjectNamePart::Identifier(Ident::with_quote('"', schema.clone())),
            );
            self.changed = true;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Self::Break> {
        let is_current_schema = match expr {
            Expr::Function(f) => {
                function_name(&f.name).0 == "current_schema"
                    && match &f.args {
                        FunctionArguments::None => true,
                        FunctionArguments::List(list) => list.args.is_empty(),
                        FunctionArguments::Subquery(_) => false,
                    }
            }
            Expr::Identifier(i) => i.quote_style.is_none() && i.value.eq_ignore_ascii_case("current_schema"),
            _ => false,
        };
        if is_current_schema
            && let Some(literal) = parse_expr(&format!("'{}'", self.first.replace('\'', "''")))
        {
            *expr = literal;
            self.changed = true;
        }
        ControlFlow::Continue(())
    }
}

/// The last part of `name`, lower case, and whether the name has no other part or names
/// `schema` first.
fn function_name(name: &ObjectName) -> (String, Option<String>) {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
            other => other.to_string().to_ascii_lowercase(),
        })
        .collect();
    match parts.as_slice() {
        [only] => (only.clone(), None),
        [.., schema, last] => (last.clone(), Some(schema.clone())),
        [] => (String::new(), None),
    }
}

fn parse_expr(text: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .ok()?
        .parse_expr()
        .ok()
}

fn function_args(args: &FunctionArguments) -> Option<Vec<String>> {
    match args {
        FunctionArguments::List(list) if list.clauses.is_empty() && list.duplicate_treatment.is_none() => {
            Some(list.args.iter().map(ToString::to_string).collect())
        }
        FunctionArguments::None => Some(Vec::new()),
        _ => None,
    }
}

fn is_regclass(data_type: &impl std::fmt::Display) -> bool {
    let name = data_type.to_string().to_ascii_lowercase();
    name == "regclass" || name == "pg_catalog.regclass"
}

fn is_oid(data_type: &impl std::fmt::Display) -> bool {
    let name = data_type.to_string().to_ascii_lowercase();
    name == "oid" || name == "pg_catalog.oid"
}

/// Whether `expr` names a boolean column of a `pg_catalog` relation (`indisprimary`,
/// `attnotnull`, `relhasindex`, ...).
fn is_boolean_catalog_column(expr: &Expr) -> bool {
    let name = match expr {
        Expr::Identifier(i) => &i.value,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => &i.value,
            None => return false,
        },
        _ => return false,
    };
    let name = name.to_ascii_lowercase();
    [
        "indis",
        "attis",
        "atthas",
        "attnotnull",
        "relhas",
        "relis",
        "conis",
        "typis",
        "prois",
        "proretset",
        "condeferr",
        "convalidated",
        "indimmediate",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

fn is_parameter(expr: &Expr) -> bool {
    match expr {
        Expr::Value(v) => matches!(v.value, Value::Placeholder(_)),
        Expr::Nested(inner) => is_parameter(inner),
        _ => false,
    }
}

impl Rewriter {
    fn literal(&self) -> String {
        format!("'{}'", self.token.replace('\'', "''"))
    }

    fn replacement(&self, expr: &Expr) -> Option<Expr> {
        match expr {
            Expr::Function(f) => {
                let (name, schema) = function_name(&f.name);
                if name == "array"
                    && let FunctionArguments::Subquery(query) = &f.args
                    && query
                        .to_string()
                        .to_ascii_lowercase()
                        .contains("unnest(tc.reloptions)")
                {
                    return parse_expr("CAST(NULL AS TEXT[])");
                }
                let args = function_args(&f.args)?;
                if name == "_pg_expandarray" && matches!(schema.as_deref(), None | Some("information_schema"))
                {
                    let [array] = args.as_slice() else { return None };
                    return parse_expr(&format!(
                        "named_struct('x', unnest({array}), 'n', unnest(generate_series(1, cardinality({array}))))"
                    ));
                }
                if name == "generate_subscripts" && matches!(schema.as_deref(), None | Some("pg_catalog")) {
                    let [array, _dimension] = args.as_slice() else {
                        return None;
                    };
                    return parse_expr(&format!("unnest(generate_series(1, cardinality({array})))"));
                }
                if !matches!(schema.as_deref(), None | Some("pg_catalog")) {
                    return None;
                }
                let lookup = Lookup::ALL
                    .into_iter()
                    .find(|l| l.public_name() == name && *l != Lookup::Regclass)?;
                let mut all = args;
                all.push(self.literal());
                parse_expr(&format!("{}({})", lookup.granted_name(), all.join(", ")))
            }
            Expr::Cast {
                kind: CastKind::DoubleColon | CastKind::Cast,
                data_type,
                expr: inner,
                ..
            } => {
                // `x::regclass::oid` and `x::regclass`: the look-up's answer is already the oid.
                let (regclass, subject) = match inner.as_ref() {
                    Expr::Cast {
                        kind: CastKind::DoubleColon | CastKind::Cast,
                        data_type: inner_type,
                        expr: subject,
                        ..
                    } if is_oid(data_type) && is_regclass(inner_type) => (true, subject.as_ref()),
                    _ if is_regclass(data_type) => (true, inner.as_ref()),
                    _ => (false, inner.as_ref()),
                };
                if is_oid(data_type)
                    && let Expr::Function(f) = subject
                    && function_name(&f.name).0 == Lookup::Regclass.granted_name()
                {
                    // `x::regclass::oid`, its inner cast rewritten already.
                    return Some(subject.clone());
                }
                if !regclass || is_parameter(subject) {
                    return None;
                }
                parse_expr(&format!(
                    "{}({subject}, {})",
                    Lookup::Regclass.granted_name(),
                    self.literal()
                ))
            }
            Expr::BinaryOp { left, op, right }
                if matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq) =>
            {
                let flag = |e: &Expr| match e {
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) if s == "t" || s == "true" => Some("true"),
                        Value::SingleQuotedString(s) if s == "f" || s == "false" => Some("false"),
                        _ => None,
                    },
                    _ => None,
                };
                let (column, value) = match (flag(left), flag(right)) {
                    (None, Some(v)) => (left.as_ref(), v),
                    (Some(v), None) => (right.as_ref(), v),
                    _ => return None,
                };
                if !is_boolean_catalog_column(column) {
                    return None;
                }
                parse_expr(&format!("{column} {op} {value}"))
            }
            Expr::CompoundFieldAccess { root, access_chain } => {
                let [AccessExpr::Dot(Expr::Identifier(field))] = access_chain.as_slice() else {
                    return None;
                };
                let root = match root.as_ref() {
                    Expr::Nested(inner) => inner.as_ref(),
                    other => other,
                };
                parse_expr(&format!(
                    "get_field({root}, '{}')",
                    field.value.replace('\'', "''")
                ))
            }
            _ => None,
        }
    }
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<Self::Break> {
        let parts: Vec<String> = relation
            .0
            .iter()
            .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase())
            .collect();
        if let [.., schema, table] = parts.as_slice()
            && schema == "information_schema"
            && INFORMATION_SCHEMA_TABLES.contains(&table.as_str())
        {
            *relation = ObjectName(vec![
                ObjectNamePart::Identifier(Ident::new("pg_catalog")),
                ObjectNamePart::Identifier(Ident::with_quote('"', information_schema_table(table))),
            ]);
            self.changed = true;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Self::Break> {
        if let Some(replacement) = self.replacement(expr) {
            *expr = replacement;
            self.changed = true;
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metabase_column_comment_and_information_schema() {
        let sql = "SELECT col_description(CAST(CAST(FORMAT('%I.%I', CAST(c.table_schema AS TEXT), CAST(c.table_name AS TEXT)) AS REGCLASS) AS OID), c.ordinal_position) FROM information_schema.columns AS c";
        let out = rewrite(sql, "tok").unwrap();
        assert!(out.contains("pg_catalog.\"information_schema.columns\""), "{out}");
        assert!(
            out.contains("tarn_granted_col_description(tarn_granted_tarn_regclass(FORMAT("),
            "{out}"
        );
        assert!(out.contains("'tok'"), "{out}");
    }

    #[test]
    fn pgjdbc_keys_become_unnests() {
        let sql = "SELECT (information_schema._pg_expandarray(i.indkey)).n AS key_seq, \
                   information_schema._pg_expandarray(i.indkey) AS keys FROM pg_catalog.pg_index i";
        let out = rewrite(sql, "").unwrap();
        assert!(
            out.contains("get_field(named_struct('x', unnest(i.indkey)"),
            "{out}"
        );
        let sql = "SELECT a FROM t AS result WHERE result.a = (result.keys).x";
        let out = rewrite(sql, "").unwrap();
        assert!(out.contains("get_field(result.keys, 'x')"), "{out}");
    }

    #[test]
    fn sqlalchemy_primary_key_subscripts() {
        let sql = "SELECT unnest(ix.indkey) attnum, generate_subscripts(ix.indkey, 1) ord FROM pg_index ix";
        let out = rewrite(sql, "").unwrap();
        assert!(
            out.contains("unnest(generate_series(1, cardinality(ix.indkey)))"),
            "{out}"
        );
    }

    #[test]
    fn search_path_qualifies_tables_but_not_ctes() {
        let path = vec!["shop".to_string(), "public".to_string()];
        let exists =
            |schema: &str, table: &str| matches!((schema, table), ("shop", "orders") | ("public", "plain"));
        let out = with_search_path(
            "WITH o AS (SELECT * FROM orders) SELECT current_schema(), * FROM o JOIN plain ON true JOIN nope ON true",
            &path,
            &exists,
        )
        .unwrap();
        assert!(out.contains("FROM \"shop\".orders"), "{out}");
        assert!(out.contains("JOIN \"public\".plain"), "{out}");
        assert!(out.contains("FROM o JOIN"), "{out}");
        assert!(out.contains("JOIN nope"), "{out}");
        assert!(out.contains("SELECT 'shop'"), "{out}");
    }

    #[test]
    fn search_path_comes_from_set_or_startup_options() {
        let mut metadata = std::collections::HashMap::new();
        metadata.insert(
            "options".to_string(),
            "-c search_path=Shop,\"$user\" -c x=1".to_string(),
        );
        assert_eq!(search_path(&metadata), ["shop"]);
        metadata.insert("search_path".to_string(), "\"Mixed\", public".to_string());
        assert_eq!(search_path(&metadata), ["Mixed", "public"]);
    }

    #[test]
    fn boolean_catalog_flags_compare_as_booleans() {
        let out = rewrite("SELECT 1 FROM pg_index ix WHERE ix.indisprimary = 'f'", "").unwrap();
        assert!(out.contains("ix.indisprimary = false"), "{out}");
        assert_eq!(
            rewrite("SELECT 1 FROM pg_class c WHERE c.relkind = 'f'", ""),
            None
        );
    }

    #[test]
    fn parameters_and_plain_queries_are_left_alone() {
        assert_eq!(rewrite("SELECT $1::regclass::oid", "t"), None);
        let out = rewrite("SELECT 1 FROM d WHERE d.classoid = 'pg_class'::regclass", "t").unwrap();
        assert!(
            out.contains("tarn_granted_tarn_regclass('pg_class', 't')"),
            "{out}"
        );
        assert_eq!(rewrite("SELECT 1", "t"), None);
        assert_eq!(rewrite("SELECT a[1] FROM t", "t"), None);
    }
}
