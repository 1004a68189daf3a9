//! PostgreSQL's names for the columns of a query's result.
//!
//! DataFusion names an unaliased result column by its expression's text (`count(*)`,
//! `sum(cdc.s.a)`, `Int64(1)`). PostgreSQL names it by the rules of its `FigureColname`, and
//! those names are what users see: psql's headers, psycopg's `description`, a BI tool's field
//! list, `tarn sql`'s CSV header. [`ResultNames::of`] computes PostgreSQL's names from the
//! parsed statement's outermost select list; [`ResultNames::apply`] puts them on the planned
//! result by position, which keeps duplicates possible (`SELECT count(*), count(*)` has two
//! columns named `count`, as in PostgreSQL). DataFusion refuses to plan a select list whose
//! items share an expression name, so [`alias_repeats`] first gives the repeats internal
//! aliases, which the names then replace.
//!
//! The rules, as PostgreSQL applies them to an item without `AS`:
//!
//! | item | name |
//! |---|---|
//! | a column, `t.col`, `(arr)[1]`, `(rec).field` | the column or field name |
//! | a function or aggregate call, `extract`, `substring`, `trim`, `AT TIME ZONE` | the function's name (`count`, `string_agg`, `extract`, `btrim`, `timezone`) |
//! | `COALESCE`, `NULLIF`, `GREATEST`, `LEAST`, `ARRAY[...]`, `ARRAY(...)`, `ROW(...)`, `EXISTS (...)` | `coalesce`, `nullif`, `greatest`, `least`, `array`, `row`, `exists` |
//! | `(SELECT x ...)` | the subquery's column name (`?column?` when it has none) |
//! | `x::type`, `CAST(x AS type)` | `x`'s name when it is one of the above, else the type's name (`int4`, `text`, `numeric`) |
//! | `DATE '...'`, `INTERVAL '...'` | the type's name |
//! | `CASE ... ELSE x END` | `x`'s name when it is one of the above, else `case` |
//! | anything else: literals, operators, `IS NULL`, `IN`, `LIKE` | `?column?` |
//!
//! Aliased items keep their alias, `*` its columns' names. Set operations take their names
//! from their first select, as in PostgreSQL.

use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{
    AccessExpr, DataType as SqlType, ExactNumberInfo, Expr, Ident, ObjectName, Query, SelectItem, SetExpr,
    Statement, TimezoneInfo, TrimWhereField,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// PostgreSQL's name for a result column it cannot name otherwise.
pub const UNNAMED: &str = "?column?";

/// The prefix of the aliases [`alias_repeats`] gives (`"__tarn_repeat_2"`); never shown to
/// users.
const REPEAT_ALIAS: &str = "__tarn_repeat_";
/// The prefix of the aliases `datafusion-postgres` gives columns listed beside a `*` (its
/// `AliasDuplicatedProjectionRewrite`); never shown to users either.
const WILDCARD_NEIGHBOUR_ALIAS: &str = "__alias_";

/// PostgreSQL's names for the columns of one statement's result; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultNames {
    /// Names of the select items before the first `*` (all items when there is none).
    leading: Vec<String>,
    /// Names of the select items after the last `*`; empty when there is none.
    trailing: Vec<String>,
    /// Whether the list has a `*`, whose columns keep their names.
    wildcard: bool,
}

impl ResultNames {
    /// The names of `statement`'s result, when it is a query.
    pub fn of(statement: &Statement) -> Option<Self> {
        match statement {
            Statement::Query(query) => Self::of_query(query),
            _ => None,
        }
    }

    /// The names of the result of `sql`, one statement in PostgreSQL's dialect, when it is a
    /// query (and parses).
    pub fn of_sql(sql: &str) -> Option<Self> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
        match statements.as_slice() {
            [statement] => Self::of(statement),
            _ => None,
        }
    }

    /// The names of `query`'s result (also the columns of a `CREATE TABLE ... AS` query).
    pub fn of_query(query: &Query) -> Option<Self> {
        let items = select_items(&query.body)?;
        let first = items.iter().position(is_wildcard);
        let last = items.iter().rposition(is_wildcard);
        let names = |items: &[SelectItem]| items.iter().filter_map(item_name).collect::<Vec<_>>();
        Some(match (first, last) {
            (Some(first), Some(last)) => Self {
                leading: names(&items[..first]),
                trailing: names(&items[last + 1..]),
                wildcard: true,
            },
            _ => Self {
                leading: names(items),
                trailing: Vec::new(),
                wildcard: false,
            },
        })
    }

    /// The result's column names, given the names DataFusion planned (`planned`, one per
    /// column). `None` when they are the same, or when the select list does not line up with
    /// the columns (then DataFusion's names stand).
    pub fn apply(&self, planned: &[&str]) -> Option<Vec<String>> {
        let named = self.leading.len() + self.trailing.len();
        let lines_up = if self.wildcard {
            named <= planned.len()
        } else {
            named == planned.len()
        };
        if !lines_up {
            return None;
        }
        let tail = planned.len() - self.trailing.len();
        let names: Vec<String> = planned
            .iter()
            .enumerate()
            .map(|(i, planned)| {
                if i < self.leading.len() {
                    self.leading[i].clone()
                } else if i >= tail {
                    self.trailing[i - tail].clone()
                } else {
                    (*planned).to_string()
                }
            })
            .collect();
        (names.iter().zip(planned).any(|(n, p)| n != p)).then_some(names)
    }

    /// `schema` with the result's column names; the same schema when nothing changes.
    pub fn apply_to_schema(&self, schema: &SchemaRef) -> SchemaRef {
        let planned: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        match self.apply(&planned) {
            None => schema.clone(),
            Some(names) => {
                let fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .zip(names)
                    .map(|(f, name)| f.as_ref().clone().with_name(name))
                    .collect();
                std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
            }
        }
    }
}

/// Gives the select items of `statement`'s outermost query that DataFusion would name like an
/// earlier item an internal alias, so DataFusion, which wants distinct result names, plans
/// them. Columns listed beside a `*` (`SELECT *, id`) may be one of its columns and get one
/// too. `EXPLAIN` of a query gets the same treatment. Work out the [`ResultNames`] first: they
/// name the columns as written. Returns whether anything changed.
pub fn alias_repeats(statement: &mut Statement) -> bool {
    match statement {
        Statement::Query(query) => alias_repeats_in(&mut query.body),
        Statement::Explain { statement, .. } => alias_repeats(statement),
        _ => false,
    }
}

fn alias_repeats_in(body: &mut SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => {
            let beside_wildcard = select.projection.iter().any(is_wildcard);
            let mut seen = std::collections::HashSet::new();
            let mut changed = false;
            for (position, item) in select.projection.iter_mut().enumerate() {
                let name = match &*item {
                    SelectItem::UnnamedExpr(expr) if beside_wildcard && is_column(expr) => None,
                    SelectItem::UnnamedExpr(expr) => Some(planned_name(expr)),
                    SelectItem::ExprWithAlias { alias, .. } => Some(ident_name(alias)),
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => continue,
                };
                if name.is_some_and(|name| seen.insert(name)) {
                    continue;
                }
                let expr = match std::mem::replace(item, SelectItem::Wildcard(Default::default())) {
                    SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => expr,
                    other => unreachable!("wildcards are skipped above: {other}"),
                };
                *item = SelectItem::ExprWithAlias {
                    expr,
                    alias: Ident::with_quote('"', format!("{REPEAT_ALIAS}{}", position + 1)),
                };
                changed = true;
            }
            changed
        }
        SetExpr::Query(query) => alias_repeats_in(&mut query.body),
        SetExpr::SetOperation { left, right, .. } => {
            let left = alias_repeats_in(left);
            alias_repeats_in(right) || left
        }
        _ => false,
    }
}

/// Roughly the name DataFusion gives an unaliased item: casts and parentheses are transparent
/// to it, a column is named by its name, anything else by its text.
fn planned_name(expr: &Expr) -> String {
    match expr {
        Expr::Cast { expr, .. } | Expr::Nested(expr) => planned_name(expr),
        Expr::Identifier(ident) => ident_name(ident),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        // `DATE '2026-01-01'` is a cast of the string to DataFusion.
        Expr::TypedString(typed) => typed.value.to_string().to_lowercase(),
        other => other.to_string().to_lowercase(),
    }
}

/// Whether `expr` is a column, perhaps cast or in parentheses.
fn is_column(expr: &Expr) -> bool {
    match expr {
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_column(expr),
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        _ => false,
    }
}

fn select_items(body: &SetExpr) -> Option<&[SelectItem]> {
    match body {
        SetExpr::Select(select) => Some(&select.projection),
        SetExpr::Query(query) => select_items(&query.body),
        SetExpr::SetOperation { left, .. } => select_items(left),
        _ => None,
    }
}

fn is_wildcard(item: &SelectItem) -> bool {
    matches!(item, SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..))
}

/// The name of a select item that is not a wildcard.
fn item_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::UnnamedExpr(expr) => Some(column_name(expr)),
        SelectItem::ExprWithAlias { expr, alias } => Some(
            if alias.quote_style.is_none() && alias.value.starts_with(WILDCARD_NEIGHBOUR_ALIAS) {
                column_name(expr)
            } else {
                ident_name(alias)
            },
        ),
        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => None,
    }
}

/// PostgreSQL's name for an unaliased result column computing `expr`.
fn column_name(expr: &Expr) -> String {
    figure(expr).map_or_else(|| UNNAMED.to_string(), |(name, _)| name)
}

/// How sure a name is, as in PostgreSQL: a cast or `CASE` names its column after an inner
/// expression only when that one is [`Strength::Named`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strength {
    /// A type's name or `case`.
    Fallback,
    /// A column, function or the like.
    Named,
}

fn named(name: &str) -> Option<(String, Strength)> {
    Some((name.to_string(), Strength::Named))
}

/// PostgreSQL's `FigureColnameInternal`: the name and its strength, or none.
fn figure(expr: &Expr) -> Option<(String, Strength)> {
    match expr {
        Expr::Identifier(ident) => Some((ident_name(ident), Strength::Named)),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| (ident_name(i), Strength::Named)),
        Expr::CompoundFieldAccess { root, access_chain } => access_chain
            .iter()
            .rev()
            .find_map(|access| match access {
                AccessExpr::Dot(Expr::Identifier(i)) => Some((ident_name(i), Strength::Named)),
                _ => None,
            })
            .or_else(|| figure(root)),
        Expr::Function(function) => last_name(&function.name).map(|n| (n, Strength::Named)),
        Expr::Cast { expr, data_type, .. } => match figure(expr) {
            Some(inner @ (_, Strength::Named)) => Some(inner),
            inner => type_name(data_type).map(|n| (n, Strength::Fallback)).or(inner),
        },
        Expr::TypedString(typed) => type_name(&typed.data_type).map(|n| (n, Strength::Fallback)),
        Expr::Interval(_) => Some(("interval".into(), Strength::Fallback)),
        Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => figure(inner),
        Expr::Case { else_result, .. } => match else_result.as_deref().and_then(figure) {
            Some(inner @ (_, Strength::Named)) => Some(inner),
            _ => Some(("case".into(), Strength::Fallback)),
        },
        Expr::Subquery(query) => {
            let first = select_items(&query.body)?.first()?;
            item_name(first).map(|n| (n, Strength::Named))
        }
        Expr::Exists { .. } => named("exists"),
        Expr::Array(_) => named("array"),
        Expr::Tuple(_) => named("row"),
        Expr::Extract { .. } => named("extract"),
        Expr::Substring { .. } => named("substring"),
        Expr::Position { .. } => named("position"),
        Expr::Overlay { .. } => named("overlay"),
        Expr::Trim { trim_where, .. } => named(match trim_where {
            Some(TrimWhereField::Leading) => "ltrim",
            Some(TrimWhereField::Trailing) => "rtrim",
            _ => "btrim",
        }),
        Expr::Ceil { .. } => named("ceil"),
        Expr::Floor { .. } => named("floor"),
        Expr::AtTimeZone { .. } => named("timezone"),
        _ => None,
    }
}

/// An identifier as PostgreSQL (and DataFusion) resolve it: folded to lower case unless quoted.
fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn last_name(name: &ObjectName) -> Option<String> {
    name.0.last().and_then(|part| part.as_ident()).map(ident_name)
}

/// PostgreSQL's internal name of a type, which names a cast's column (`int4`, not `integer`).
fn type_name(data_type: &SqlType) -> Option<String> {
    use SqlType as T;
    let name = match data_type {
        T::Bool | T::Boolean => "bool",
        T::SmallInt(_) | T::Int2(_) => "int2",
        T::Int(_) | T::Integer(_) | T::Int4(_) => "int4",
        T::BigInt(_) | T::Int8(_) => "int8",
        T::Real | T::Float4 => "float4",
        T::Float(ExactNumberInfo::Precision(p)) if *p <= 24 => "float4",
        T::Float(_) | T::Float8 | T::Double(_) | T::DoublePrecision => "float8",
        T::Numeric(_) | T::Decimal(_) | T::Dec(_) => "numeric",
        T::Char(_) | T::Character(_) => "bpchar",
        T::Varchar(_) | T::CharVarying(_) | T::CharacterVarying(_) => "varchar",
        T::Text => "text",
        T::Bytea => "bytea",
        T::Date => "date",
        T::Time(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => "timetz",
        T::Time(..) => "time",
        T::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => "timestamptz",
        T::Timestamp(..) => "timestamp",
        T::Interval { .. } => "interval",
        T::JSON => "json",
        T::JSONB => "jsonb",
        T::Uuid => "uuid",
        T::Regclass => "regclass",
        T::Bit(_) => "bit",
        T::BitVarying(_) | T::VarBit(_) => "varbit",
        T::Array(element) => {
            use datafusion::sql::sqlparser::ast::ArrayElemTypeDef as E;
            return match element {
                E::AngleBracket(t) | E::SquareBracket(t, _) | E::Parenthesis(t) => type_name(t),
                E::None => None,
            };
        }
        T::Custom(name, _) => return last_name(name),
        _ => return None,
    };
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL's names for the select list of `sql` (as if every item were one column).
    fn names(sql: &str) -> Vec<String> {
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let names = ResultNames::of(&parsed[0]).expect("a query");
        assert!(!names.wildcard, "{sql}");
        names.leading
    }

    // Every expectation below is what PostgreSQL 15 names these columns (psql's header).
    #[test]
    fn functions_and_aggregates_are_named_by_the_function() {
        assert_eq!(
            names(
                "SELECT count(*), COUNT(*), sum(a), string_agg(b, ',') FILTER (WHERE a > 1), \
                 pg_catalog.upper(b), \"upper\"(b), row_number() OVER (), now(), current_timestamp, \
                 extract(year FROM ts), substring(b FROM 1 FOR 2), trim(b), trim(LEADING 'x' FROM b), \
                 position('x' IN b), ceil(d), floor(d), ts AT TIME ZONE 'UTC' FROM t"
            ),
            [
                "count",
                "count",
                "sum",
                "string_agg",
                "upper",
                "upper",
                "row_number",
                "now",
                "current_timestamp",
                "extract",
                "substring",
                "btrim",
                "ltrim",
                "position",
                "ceil",
                "floor",
                "timezone"
            ]
        );
    }

    #[test]
    fn conditionals_constructors_and_subqueries() {
        assert_eq!(
            names(
                "SELECT coalesce(a, 0), nullif(a, 1), greatest(a, 1), least(a, 2), \
                 CASE WHEN a > 1 THEN 1 ELSE a END, CASE WHEN a > 1 THEN 1 END, \
                 CASE WHEN true THEN 1 ELSE count(*) END, ARRAY[1, 2], (ARRAY[1, 2])[1], ROW(1, 2), (1, 2), \
                 (SELECT max(a) FROM t), (SELECT a AS z FROM t), (SELECT 1), EXISTS (SELECT 1), \
                 a IN (SELECT 1) FROM t"
            ),
            [
                "coalesce", "nullif", "greatest", "least", "a", "case", "count", "array", "array", "row",
                "row", "max", "z", "?column?", "exists", "?column?"
            ]
        );
    }

    #[test]
    fn casts_take_the_inner_name_or_the_type_name() {
        assert_eq!(
            names(
                "SELECT a::text, 1::int, 'x'::varchar, a::bigint::text, CAST(a AS double precision), \
                 CASE WHEN a > 1 THEN 1 ELSE 2 END::text, 1::integer, 1::smallint, 1::real, 1::float, \
                 1::float(10), 1::numeric(10,2), 1::decimal, 'x'::char(2), 'x'::character varying, \
                 '1'::bool, 'now'::timestamptz, 'now'::timestamp with time zone, '10:00'::time, \
                 '1'::bigint, '1'::double precision, '1'::jsonb, '1'::interval, '{1}'::int[], \
                 1::oid, CAST(NULL AS int), (a)::text, (-1)::int, -1::int, \
                 DATE '2020-01-01', TIMESTAMP '2020-01-01', INTERVAL '1 day', (b COLLATE \"C\")::text FROM t"
            ),
            [
                "a",
                "int4",
                "varchar",
                "a",
                "a",
                "text",
                "int4",
                "int2",
                "float4",
                "float8",
                "float4",
                "numeric",
                "numeric",
                "bpchar",
                "varchar",
                "bool",
                "timestamptz",
                "timestamptz",
                "time",
                "int8",
                "float8",
                "jsonb",
                "interval",
                "int4",
                "oid",
                "int4",
                "a",
                "int4",
                "?column?",
                "date",
                "timestamp",
                "interval",
                "b"
            ]
        );
    }

    #[test]
    fn columns_aliases_and_the_unnamed() {
        assert_eq!(
            names(
                "SELECT t.a, public.t.a, b AS \"Bee\", a AS X, (a), (count(*)), true, 1, 'x', NULL, \
                 a + 1, -a, a IS NULL, a BETWEEN 1 AND 2, b LIKE 'x', 'a' || 'b', 'x' COLLATE \"C\" FROM t"
            ),
            [
                "a", "a", "Bee", "x", "a", "count", "?column?", "?column?", "?column?", "?column?",
                "?column?", "?column?", "?column?", "?column?", "?column?", "?column?", "?column?"
            ]
        );
        // A set operation is named by its first select.
        assert_eq!(names("SELECT count(*) FROM t UNION ALL SELECT 1"), ["count"]);
    }

    #[test]
    fn names_go_on_the_planned_columns_by_position() {
        let names = ResultNames::of_sql("SELECT count(*), t.*, sum(a) AS total, 1 FROM t").unwrap();
        assert_eq!(
            names.apply(&["count(*)", "a", "b", "total", "Int64(1)"]),
            Some(vec![
                "count".into(),
                "a".into(),
                "b".into(),
                "total".into(),
                "?column?".into()
            ])
        );
        // Nothing to change, or a plan that does not line up with the list: DataFusion's names.
        assert_eq!(names.apply(&["count", "a", "total", "?column?"]), None);
        assert_eq!(names.apply(&["count(*)", "total"]), None);
        let names = ResultNames::of_sql("SELECT count(*) FROM t").unwrap();
        assert_eq!(names.apply(&["count(*)", "extra"]), None);
        assert_eq!(ResultNames::of_sql("INSERT INTO t VALUES (1)"), None);
        assert_eq!(ResultNames::of_sql("SELECT 1; SELECT 2"), None);
    }

    /// `sql` after [`alias_repeats`], or `None` when it changed nothing.
    fn repeats_aliased(sql: &str) -> Option<String> {
        let mut statement = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0);
        alias_repeats(&mut statement).then(|| statement.to_string())
    }

    #[test]
    fn repeats_get_internal_aliases() {
        assert_eq!(
            repeats_aliased("SELECT count(*), COUNT(*), a, t.a, a::text, 1, 1, b AS x, c AS X FROM t")
                .unwrap(),
            "SELECT count(*), COUNT(*) AS \"__tarn_repeat_2\", a, t.a AS \"__tarn_repeat_4\", \
             a::TEXT AS \"__tarn_repeat_5\", 1, 1 AS \"__tarn_repeat_7\", b AS x, c AS \"__tarn_repeat_9\" FROM t"
        );
        // A column beside `*` may be one of its columns.
        assert_eq!(
            repeats_aliased("SELECT *, a, (b)::text, a + 1 FROM t").unwrap(),
            "SELECT *, a AS \"__tarn_repeat_2\", (b)::TEXT AS \"__tarn_repeat_3\", a + 1 FROM t"
        );
        assert_eq!(
            repeats_aliased("SELECT count(*), count(a), sum(a) AS count_a FROM t"),
            None
        );
        assert_eq!(repeats_aliased("INSERT INTO t SELECT 1, 1"), None);
        assert_eq!(
            repeats_aliased("EXPLAIN SELECT 1, 1").unwrap(),
            "EXPLAIN SELECT 1, 1 AS \"__tarn_repeat_2\""
        );
    }

    #[test]
    fn set_operations_alias_repeats_on_both_sides() {
        assert_eq!(
            repeats_aliased("SELECT 1, 1 UNION ALL SELECT a, a FROM t").unwrap(),
            "SELECT 1, 1 AS \"__tarn_repeat_2\" UNION ALL SELECT a, a AS \"__tarn_repeat_2\" FROM t"
        );
    }
}
