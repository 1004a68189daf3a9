//! Row-level SQL on Iceberg tables: `DELETE`, `UPDATE` and `MERGE INTO`.
//!
//! A statement becomes a query DataFusion plans and runs like any other, over the target table
//! *pinned at one snapshot* and shown with two more columns: each row's data file
//! ([`FILE_COLUMN`]) and its position in that file ([`POS_COLUMN`]) ([`RowIdTable`], read with
//! [`tarn_lake::Lake::scan_live_rows`]). The query yields, per affected row, its identity and
//! the row's new values:
//!
//! - `DELETE FROM t [USING ...] [WHERE c]` → `SELECT file, pos FROM t [, ...] [WHERE c]`;
//! - `UPDATE t SET a = e [FROM ...] [WHERE c]` → `SELECT file, pos, <every column, assigned
//!   ones replaced by their expression> FROM t [, ...] [WHERE c]`;
//! - `MERGE INTO t USING s ON c WHEN ...` → `SELECT file, pos, <clause number>, <values> FROM
//!   t RIGHT JOIN s ON c` (an inner join without `WHEN NOT MATCHED` clauses); the clause number
//!   is a `CASE` over the clauses in order, as in PostgreSQL and Spark the first clause whose
//!   kind and condition hold applies, none: the row is left alone.
//!
//! Because it is an ordinary query, governance applies as to any read ([`crate::governance`]):
//! the policy sees the target and source tables with the columns read, row filters keep rows the
//! principal may not see out of reach, and the write itself is authorized as `DeleteFromTable`,
//! `UpdateTableColumns` (with the columns assigned) or `InsertIntoTable`. An `UPDATE`, or a
//! `MERGE` that updates, is refused on a table with a column mask for the principal: the
//! rewritten rows would carry the masked values.
//!
//! Writing follows the table property `write.delete.mode` / `write.update.mode` /
//! `write.merge.mode` (as Spark): `merge-on-read` (the default) writes the new rows as data
//! files and the old rows' positions as position delete files, committed together as one row
//! delta; `copy-on-write` rewrites every data file holding an affected row without it (and with
//! the new rows) and commits an overwrite that replaces those files.
//!
//! Conflicts are serializable. The statement read snapshot S; its commit carries a
//! [`CommitGuard`] that validates every snapshot committed since S against what the statement
//! did, on each attempt of the compare-and-swap, so the commit lands only on validated ones:
//!
//! - an `append` (new rows only) does not conflict: the statement did not read those rows, and
//!   the appender did not read what the statement writes, so the statement orders before it —
//!   except under a `MERGE` that inserted rows (below);
//! - a compaction (`replace`: the same rows in other files) or a commit of tarn's CDC sink
//!   (blind writes of the source's changes) conflicts only when it deleted one of the rows the
//!   statement deletes or rewrites, or added equality deletes — a CDC pipeline updating other
//!   rows of the same files does not hold the statement up;
//! - any other commit (another statement, another engine) may have read and changed anything
//!   the statement read, and conflicts;
//! - files the statement deletes from must still be live (the commit itself checks);
//! - a `MERGE` that inserted rows (a `WHEN NOT MATCHED` clause applied) conflicts with a
//!   commit other than a compaction that added a row with the key of a row it inserted — an
//!   append, a CDC commit, anything: its insert rests on the source row matching no target row,
//!   and such a row may match it (a CDC pipeline inserting the same key would otherwise leave
//!   the key twice). The key: the target columns its `ON` equates with expressions of the
//!   source alone (`t.id = s.id AND ...`); the live rows of the data files added since the read
//!   are checked against the inserted rows' values ([`InsertCheck`]). Without such a column any
//!   added row conflicts. This is Iceberg's serializable check for `MERGE` (no new data matching
//!   its condition); the re-run reads the new rows and matches them.
//!
//! On a conflict the statement re-runs on the new snapshot, up to [`ATTEMPTS`] times, then fails
//! with a commit conflict (SQLSTATE 40001). A concurrent change is never overwritten.
//!
//! A target row matched by more than one source row of an `UPDATE ... FROM` or a `MERGE` is an
//! error (PostgreSQL's "cannot affect row a second time"); `DELETE ... USING` deletes it once.
//! The identities of affected rows are held in memory (16 bytes and the file name's share a
//! row) until the commit; the rows themselves stream.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList, Session, TableProvider};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableType;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, Delete, Expr as SqlExpr, FromTable, Ident, Merge,
    MergeAction, MergeClauseKind, MergeInsertExpr, MergeInsertKind, ObjectName, Statement, TableFactor,
    TableWithJoins, Update, UpdateTableFromKind, visit_expressions,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures::{StreamExt, TryStreamExt};
use iceberg::TableIdent;
use iceberg::spec::{FormatVersion, Operation};
use iceberg::table::Table;
use iceberg_datafusion::physical_plan::convert_filters_to_predicate;
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::{CommitGuard, DataWriter, Lake, Overwrite, RowDelta};

use crate::provider::{cast_to, df_error, uuid_columns, view_schema};
use crate::session::{Output, TarnSession, command, from_df_error};

/// The data file a row of a [`RowIdTable`] is in.
pub const FILE_COLUMN: &str = "__tarn_file";
/// The position of a row of a [`RowIdTable`] in its data file.
pub const POS_COLUMN: &str = "__tarn_pos";
/// How many times a statement runs before a conflict with concurrent commits fails it.
pub const ATTEMPTS: u32 = 5;

/// A hook run between a row-level statement's read and its commit, given the attempt's number
/// ([`TarnSession::pause_row_level_commits`], for tests).
pub(crate) type BeforeCommit = dyn Fn(u32) -> futures::future::BoxFuture<'static, ()> + Send + Sync;

/// Whether `name` is one of the columns a [`RowIdTable`] adds.
pub(crate) fn is_row_id_column(name: &str) -> bool {
    name == FILE_COLUMN || name == POS_COLUMN
}

/// The statements this module runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Delete,
    Update,
    Merge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Delete => "DELETE",
            Kind::Update => "UPDATE",
            Kind::Merge => "MERGE",
        }
    }

    /// The table property choosing the write mode (Spark's names).
    fn mode_property(self) -> &'static str {
        match self {
            Kind::Delete => "write.delete.mode",
            Kind::Update => "write.update.mode",
            Kind::Merge => "write.merge.mode",
        }
    }
}

/// What a row of the read query does to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowAction {
    Delete,
    Update,
    Insert,
}

/// A row-level statement, taken apart.
#[derive(Clone)]
struct Parsed {
    kind: Kind,
    target: ObjectName,
    /// How the query names the target's columns: its alias, else its name as written.
    qualifier: String,
    /// The target relation as the query's `FROM` writes it.
    target_relation: String,
    /// More relations (`USING` of a `DELETE`, `FROM` of an `UPDATE`, the source of a `MERGE`).
    others: Vec<String>,
    selection: Option<String>,
    assignments: Vec<Assignment>,
    merge: Option<Merge>,
}

/// The read query of one run of a statement.
struct ReadQuery {
    sql: String,
    /// For `MERGE`: the action of clause `i + 1` (the query yields 0 for no clause).
    actions: Vec<Option<RowAction>>,
    /// Where the new values start among the query's columns (none for `DELETE`).
    values_from: usize,
    /// For `MERGE`: target columns its `ON` equates with an expression of the source alone (a
    /// top-level `AND` of `t.c = e`); the query yields each `e` after the clause number.
    keys: Vec<String>,
}

fn unsupported(what: impl fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("{what} is not supported"))
}

fn quoted(name: &str) -> String {
    Ident::with_quote('"', name).to_string()
}

fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// The target of `relation`: a plain table, with no joins.
fn single_table(relation: &TableWithJoins, statement: &str) -> Result<(ObjectName, String, String)> {
    if !relation.joins.is_empty() {
        return Err(unsupported(format!("a JOIN in the target of {statement}")));
    }
    target_factor(&relation.relation, statement)
}

/// How a `MERGE`'s source is named in its clauses: its alias, else its table's name as
/// written (the last part: `s` of `db.s`).
fn source_qualifier(source: &TableFactor) -> Result<String> {
    match source {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        } => Ok(alias.name.to_string()),
        TableFactor::Table { name, .. } => Ok(name.0.last().map(ToString::to_string).unwrap_or_default()),
        other => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("UPDATE SET * and INSERT * need a MERGE source with a name or alias, not {other}"),
        )),
    }
}

fn target_factor(factor: &TableFactor, statement: &str) -> Result<(ObjectName, String, String)> {
    match factor {
        TableFactor::Table {
            name, alias, args, ..
        } if args.is_none() => {
            let qualifier = match alias {
                Some(alias) => alias.name.to_string(),
                None => name.to_string(),
            };
            Ok((name.clone(), qualifier, factor.to_string()))
        }
        other => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{statement} needs a table as its target, not {other}"),
        )),
    }
}

impl Parsed {
    fn of(statement: &Statement) -> Result<Option<Self>> {
        Ok(Some(match statement {
            Statement::Delete(delete) => Self::delete(delete)?,
            Statement::Update(update) => Self::update(update)?,
            Statement::Merge(merge) => Self::merge(merge)?,
            _ => return Ok(None),
        }))
    }

    fn delete(delete: &Delete) -> Result<Self> {
        if delete.returning.is_some() {
            return Err(unsupported("DELETE ... RETURNING"));
        }
        if !delete.order_by.is_empty() || delete.limit.is_some() || !delete.tables.is_empty() {
            return Err(unsupported("DELETE with ORDER BY, LIMIT or several tables"));
        }
        let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) = &delete.from;
        let [relation] = tables.as_slice() else {
            return Err(unsupported("DELETE from several tables"));
        };
        let (target, qualifier, target_relation) = single_table(relation, "DELETE")?;
        Ok(Self {
            kind: Kind::Delete,
            target,
            qualifier,
            target_relation,
            others: delete.using.iter().flatten().map(ToString::to_string).collect(),
            selection: delete.selection.as_ref().map(ToString::to_string),
            assignments: Vec::new(),
            merge: None,
        })
    }

    fn update(update: &Update) -> Result<Self> {
        if update.returning.is_some() {
            return Err(unsupported("UPDATE ... RETURNING"));
        }
        if update.limit.is_some() || update.or.is_some() {
            return Err(unsupported("UPDATE with LIMIT or OR"));
        }
        let (target, qualifier, target_relation) = single_table(&update.table, "UPDATE")?;
        let others = match &update.from {
            Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) => {
                from.iter().map(ToString::to_string).collect()
            }
            None => Vec::new(),
        };
        Ok(Self {
            kind: Kind::Update,
            target,
            qualifier,
            target_relation,
            others,
            selection: update.selection.as_ref().map(ToString::to_string),
            assignments: update.assignments.clone(),
            merge: None,
        })
    }

    fn merge(merge: &Merge) -> Result<Self> {
        if merge.output.is_some() {
            return Err(unsupported("MERGE ... OUTPUT"));
        }
        let (target, qualifier, target_relation) = target_factor(&merge.table, "MERGE")?;
        for clause in &merge.clauses {
            if clause.clause_kind == MergeClauseKind::NotMatchedBySource {
                return Err(unsupported("WHEN NOT MATCHED BY SOURCE in MERGE"));
            }
            match &clause.action {
                MergeAction::Update(update)
                    if update.update_predicate.is_some() || update.delete_predicate.is_some() =>
                {
                    return Err(unsupported("UPDATE SET ... WHERE in a MERGE clause"));
                }
                MergeAction::Insert(insert)
                    if insert.insert_predicate.is_some() || matches!(insert.kind, MergeInsertKind::Row) =>
                {
                    return Err(unsupported("INSERT ROW or INSERT ... WHERE in a MERGE clause"));
                }
                _ => {}
            }
        }
        Ok(Self {
            kind: Kind::Merge,
            target,
            qualifier,
            target_relation,
            others: vec![merge.source.to_string()],
            selection: None,
            assignments: Vec::new(),
            merge: Some(merge.clone()),
        })
    }

    /// This statement with a `MERGE`'s `UPDATE SET *` and `INSERT *` (Spark's every-column
    /// actions, marked by [`crate::sql_ext::ALL_COLUMNS`]) written out for the target's
    /// `columns`: each column set to, or inserted from, the source's column of the same name
    /// (`SET c = s.c`, `INSERT (c, ...) VALUES (s.c, ...)`), `s` the source's alias or name.
    fn with_columns(&self, columns: &[String]) -> Result<Self> {
        let Some(merge) = &self.merge else {
            return Ok(self.clone());
        };
        let is_marker = |name: &ObjectName| {
            name.0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value == crate::sql_ext::ALL_COLUMNS)
        };
        let mut merge = merge.clone();
        let mut source: Option<String> = None;
        for clause in &mut merge.clauses {
            let starred = match &clause.action {
                MergeAction::Update(u) => u
                    .assignments
                    .iter()
                    .any(|a| matches!(&a.target, AssignmentTarget::ColumnName(n) if is_marker(n))),
                MergeAction::Insert(i) => i.columns.iter().any(is_marker),
                MergeAction::Delete { .. } => false,
            };
            if !starred {
                continue;
            }
            let source = match &source {
                Some(s) => s.clone(),
                None => source.insert(source_qualifier(&merge.source)?).clone(),
            };
            let from_source = |c: &String| {
                SqlExpr::CompoundIdentifier(vec![Ident::new(source.clone()), Ident::with_quote('"', c)])
            };
            let column = |c: &String| ObjectName::from(vec![Ident::with_quote('"', c)]);
            match &mut clause.action {
                MergeAction::Update(update) => {
                    if update.assignments.len() > 1 {
                        return Err(unsupported("UPDATE SET * beside other assignments"));
                    }
                    update.assignments = columns
                        .iter()
                        .map(|c| Assignment {
                            target: AssignmentTarget::ColumnName(column(c)),
                            value: from_source(c),
                        })
                        .collect();
                }
                MergeAction::Insert(insert) => {
                    insert.columns = columns.iter().map(column).collect();
                    insert.kind = MergeInsertKind::Values(datafusion::sql::sqlparser::ast::Values {
                        explicit_row: false,
                        value_keyword: false,
                        rows: vec![columns.iter().map(from_source).collect()],
                    });
                }
                MergeAction::Delete { .. } => {}
            }
        }
        Ok(Self {
            merge: Some(merge),
            ..self.clone()
        })
    }

    /// The columns `assignments` set, by their index among `columns`, with their values.
    fn assigned(&self, assignments: &[Assignment], columns: &[String]) -> Result<HashMap<usize, String>> {
        let mut out = HashMap::new();
        for assignment in assignments {
            let AssignmentTarget::ColumnName(name) = &assignment.target else {
                return Err(unsupported("assigning a tuple of columns"));
            };
            let Some(ident) = name.0.last().and_then(|p| p.as_ident()) else {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("cannot assign to {name}"),
                ));
            };
            let column = normalize(ident);
            let Some(i) = columns.iter().position(|c| *c == column) else {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("column \"{column}\" not found in relation {}", self.target),
                ));
            };
            if out.insert(i, format!("({})", assignment.value)).is_some() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("syntax error: multiple assignments to the same column \"{column}\""),
                ));
            }
        }
        Ok(out)
    }

    /// The columns `UPDATE` or a `MERGE` clause assigns, by name, for the policy.
    fn updated_columns(&self, columns: &[String]) -> Result<Vec<String>> {
        let mut assigned: Vec<&Assignment> = self.assignments.iter().collect();
        if let Some(merge) = &self.merge {
            for clause in &merge.clauses {
                if let MergeAction::Update(update) = &clause.action {
                    assigned.extend(&update.assignments);
                }
            }
        }
        let owned: Vec<Assignment> = assigned.into_iter().cloned().collect();
        let mut indices: Vec<usize> = Vec::new();
        // Assignments of different MERGE clauses may repeat a column: check them one by one.
        for a in &owned {
            indices.extend(self.assigned(std::slice::from_ref(a), columns)?.into_keys());
        }
        indices.sort_unstable();
        indices.dedup();
        Ok(indices.into_iter().map(|i| columns[i].clone()).collect())
    }

    /// The values the statement gives columns as written — `SET a = <value>` of `UPDATE` and
    /// of `MERGE`'s clauses, `INSERT VALUES (<value>, ...)` of `MERGE`'s — by the column's
    /// index among `columns` ([`TarnSession::row_level_parameter_types`]).
    fn assigned_values<'a>(&'a self, columns: &[String]) -> Result<Vec<(usize, &'a SqlExpr)>> {
        let mut assignments: Vec<&Assignment> = self.assignments.iter().collect();
        let mut out = Vec::new();
        for clause in self.merge.iter().flat_map(|m| &m.clauses) {
            match &clause.action {
                MergeAction::Update(update) => assignments.extend(&update.assignments),
                MergeAction::Insert(insert) => {
                    let MergeInsertKind::Values(values) = &insert.kind else {
                        continue;
                    };
                    let targets = insert_targets(insert, columns);
                    for row in &values.rows {
                        for (target, value) in targets.iter().zip(row) {
                            if let Some(i) = columns.iter().position(|c| c == target) {
                                out.push((i, value));
                            }
                        }
                    }
                }
                MergeAction::Delete { .. } => {}
            }
        }
        for a in assignments {
            let indices = self.assigned(std::slice::from_ref(a), columns)?;
            out.extend(indices.into_keys().map(|i| (i, &a.value)));
        }
        Ok(out)
    }

    /// Whether the statement writes new rows (and so copies the values of unassigned columns).
    fn writes_rows(&self) -> bool {
        match self.kind {
            Kind::Delete => false,
            Kind::Update => true,
            Kind::Merge => self.merge.as_ref().is_some_and(|m| {
                m.clauses
                    .iter()
                    .any(|c| matches!(c.action, MergeAction::Update(_)))
            }),
        }
    }

    fn column_of(&self, column: &str) -> String {
        format!("{}.{}", self.qualifier, quoted(column))
    }

    /// The read query over a target with `columns`.
    fn read_query(&self, columns: &[String]) -> Result<ReadQuery> {
        let ids = format!("{}, {}", self.column_of(FILE_COLUMN), self.column_of(POS_COLUMN));
        let mut from = self.target_relation.clone();
        let keys = match &self.merge {
            Some(merge) => self.merge_keys(&merge.on, columns),
            None => Vec::new(),
        };
        let (select, actions, values_from) = match self.kind {
            Kind::Delete => {
                for other in &self.others {
                    from.push_str(&format!(", {other}"));
                }
                (ids, Vec::new(), 2)
            }
            Kind::Update => {
                for other in &self.others {
                    from.push_str(&format!(", {other}"));
                }
                let assigned = self.assigned(&self.assignments, columns)?;
                let values: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match assigned.get(&i) {
                        Some(value) => format!("{value} AS {}", quoted(c)),
                        None => self.column_of(c),
                    })
                    .collect();
                (format!("{ids}, {}", values.join(", ")), Vec::new(), 2)
            }
            Kind::Merge => {
                let merge = self.merge.as_ref().expect("a MERGE has its clauses");
                let inserts = merge.clauses.iter().any(|c| {
                    matches!(
                        c.clause_kind,
                        MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget
                    )
                });
                let join = if inserts { "RIGHT JOIN" } else { "JOIN" };
                from.push_str(&format!(" {join} {} ON {}", self.others[0], merge.on));
                let matched = format!("{} IS NOT NULL", self.column_of(POS_COLUMN));
                let mut case = String::from("CASE");
                let mut actions = Vec::new();
                let mut values: Vec<Vec<(usize, String)>> = vec![Vec::new(); columns.len()];
                for (n, clause) in merge.clauses.iter().enumerate() {
                    let code = n + 1;
                    let side = match clause.clause_kind {
                        MergeClauseKind::Matched => matched.clone(),
                        _ => format!("NOT ({matched})"),
                    };
                    let condition = match &clause.predicate {
                        Some(p) => format!("{side} AND ({p})"),
                        None => side,
                    };
                    case.push_str(&format!(" WHEN {condition} THEN {code}"));
                    match (&clause.clause_kind, &clause.action) {
                        (MergeClauseKind::Matched, MergeAction::Delete { .. }) => {
                            actions.push(Some(RowAction::Delete));
                        }
                        (MergeClauseKind::Matched, MergeAction::Update(update)) => {
                            actions.push(Some(RowAction::Update));
                            let assigned = self.assigned(&update.assignments, columns)?;
                            for (i, column) in columns.iter().enumerate() {
                                let value = assigned
                                    .get(&i)
                                    .cloned()
                                    .unwrap_or_else(|| self.column_of(column));
                                values[i].push((code, value));
                            }
                        }
                        (
                            MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget,
                            MergeAction::Insert(insert),
                        ) => {
                            actions.push(Some(RowAction::Insert));
                            let MergeInsertKind::Values(rows) = &insert.kind else {
                                return Err(unsupported("INSERT ROW in a MERGE clause"));
                            };
                            let [row] = rows.rows.as_slice() else {
                                return Err(Error::new(
                                    ErrorKind::InvalidInput,
                                    "INSERT in a MERGE clause takes one row of VALUES",
                                ));
                            };
                            let targets = insert_targets(insert, columns);
                            if targets.len() != row.len() {
                                return Err(Error::new(
                                    ErrorKind::InvalidInput,
                                    format!(
                                        "INSERT in a MERGE clause names {} columns but gives {} values",
                                        targets.len(),
                                        row.len()
                                    ),
                                ));
                            }
                            for (target, value) in targets.iter().zip(row) {
                                let Some(i) = columns.iter().position(|c| c == target) else {
                                    return Err(Error::new(
                                        ErrorKind::InvalidInput,
                                        format!("column \"{target}\" not found in relation {}", self.target),
                                    ));
                                };
                                if values[i].iter().any(|(c, _)| *c == code) {
                                    return Err(Error::new(
                                        ErrorKind::InvalidInput,
                                        format!(
                                            "column \"{target}\" specified more than once in a MERGE INSERT"
                                        ),
                                    ));
                                }
                                values[i].push((code, format!("({value})")));
                            }
                        }
                        (kind, action) => {
                            return Err(Error::new(
                                ErrorKind::InvalidInput,
                                format!("syntax error: WHEN {kind} cannot {action}"),
                            ));
                        }
                    }
                }
                case.push_str(" ELSE 0 END");
                let mut select = format!("{ids}, {case} AS \"__tarn_action\"");
                for (i, (_, expr)) in keys.iter().enumerate() {
                    select.push_str(&format!(", {expr} AS \"__tarn_key_{i}\""));
                }
                for (i, column) in columns.iter().enumerate() {
                    if values[i].is_empty() {
                        select.push_str(&format!(", NULL AS {}", quoted(column)));
                        continue;
                    }
                    let mut value = format!("CASE {case}");
                    for (code, v) in &values[i] {
                        value.push_str(&format!(" WHEN {code} THEN {v}"));
                    }
                    value.push_str(&format!(" END AS {}", quoted(column)));
                    select.push_str(&format!(", {value}"));
                }
                (select, actions, 3 + keys.len())
            }
        };
        let mut sql = format!("SELECT {select} FROM {from}");
        if let Some(selection) = &self.selection {
            sql.push_str(&format!(" WHERE {selection}"));
        }
        Ok(ReadQuery {
            sql,
            actions,
            values_from,
            keys: keys.into_iter().map(|(c, _)| c).collect(),
        })
    }

    /// The target columns `on` equates with an expression of the source alone, with that
    /// expression: every row a source row matches has those values, so a row added meanwhile
    /// without them cannot match a source row the statement inserted for.
    fn merge_keys(&self, on: &SqlExpr, columns: &[String]) -> Vec<(String, String)> {
        fn conjuncts<'a>(e: &'a SqlExpr, out: &mut Vec<&'a SqlExpr>) {
            match e {
                SqlExpr::BinaryOp {
                    left,
                    op: BinaryOperator::And,
                    right,
                } => {
                    conjuncts(left, out);
                    conjuncts(right, out);
                }
                SqlExpr::Nested(inner) => conjuncts(inner, out),
                other => out.push(other),
            }
        }
        let qualifier = self.qualifier.to_ascii_lowercase();
        // `q.c` with `q` the target's qualifier and `c` one of its columns.
        let target_column = |e: &SqlExpr| -> Option<String> {
            let SqlExpr::CompoundIdentifier(parts) = e else {
                return None;
            };
            let (column, prefix) = parts.split_last()?;
            let prefix: Vec<String> = prefix
                .iter()
                .map(|p| p.to_string().to_ascii_lowercase())
                .collect();
            let column = normalize(column);
            (prefix.join(".") == qualifier && columns.contains(&column)).then_some(column)
        };
        // Whether `e` may read the target: a name qualified by it, or a bare name that is one
        // of its columns.
        let reads_target = |e: &SqlExpr| -> bool {
            let found = visit_expressions(e, |x| {
                let hit = match x {
                    SqlExpr::Identifier(ident) => columns.contains(&normalize(ident)),
                    SqlExpr::CompoundIdentifier(parts) => {
                        let last = qualifier.rsplit('.').next().unwrap_or_default();
                        let prefix = &parts[..parts.len().saturating_sub(1)];
                        prefix
                            .iter()
                            .map(|p| p.to_string().to_ascii_lowercase())
                            .collect::<Vec<_>>()
                            .join(".")
                            == qualifier
                            || prefix.iter().any(|p| normalize(p) == last)
                    }
                    SqlExpr::Subquery(_) | SqlExpr::Exists { .. } | SqlExpr::InSubquery { .. } => true,
                    _ => false,
                };
                if hit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            found.is_break()
        };
        let mut all = Vec::new();
        conjuncts(on, &mut all);
        let mut keys: Vec<(String, String)> = Vec::new();
        for conjunct in all {
            let SqlExpr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = conjunct
            else {
                continue;
            };
            for (side, other) in [(left, right), (right, left)] {
                if let Some(column) = target_column(side)
                    && !reads_target(other)
                    && !keys.iter().any(|(c, _)| *c == column)
                {
                    keys.push((column, other.to_string()));
                    break;
                }
            }
        }
        keys
    }
}

/// How a statement writes its changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    MergeOnRead,
    CopyOnWrite,
}

fn write_mode(table: &Table, kind: Kind) -> Result<WriteMode> {
    match table
        .metadata()
        .properties()
        .get(kind.mode_property())
        .map(String::as_str)
    {
        None | Some("merge-on-read") => Ok(WriteMode::MergeOnRead),
        Some("copy-on-write") => Ok(WriteMode::CopyOnWrite),
        Some(other) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "table {} has {} = {other:?}: expected merge-on-read or copy-on-write",
                table.identifier(),
                kind.mode_property()
            ),
        )),
    }
}

/// What one run of a statement found and wrote, before it commits.
struct Changes {
    /// (data file, position) of every row deleted or replaced.
    deletes: Vec<(Arc<str>, u64)>,
    writer: DataWriter,
    inserted: u64,
    updated: u64,
    deleted: u64,
    /// The [`ReadQuery::keys`] values of the rows inserted (a `MERGE`'s `NOT MATCHED` rows).
    inserted_keys: Vec<RecordBatch>,
}

impl Changes {
    fn count(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

impl TarnSession {
    /// Runs `statement` if it is a `DELETE`, `UPDATE` or `MERGE`; `None` for other statements.
    pub(crate) async fn run_row_level(&self, statement: &Statement) -> Result<Option<Output>> {
        let Some(parsed) = Parsed::of(statement)? else {
            return Ok(None);
        };
        let ident = self.table_ident(&parsed.target)?;
        let mut attempt = 0;
        loop {
            match self.run_row_level_once(&parsed, &ident, attempt).await {
                Err(e) if e.kind() == ErrorKind::CommitConflict && attempt + 1 < ATTEMPTS => {
                    tracing::info!(table = %ident, statement = parsed.kind.name(), attempt, error = %e, "retrying on the new snapshot");
                    tokio::time::sleep(tarn_lake::commit::retry_backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) if e.kind() == ErrorKind::CommitConflict => {
                    return Err(Error::new(
                        ErrorKind::CommitConflict,
                        format!(
                            "could not serialize {} of {ident} with concurrent commits after {ATTEMPTS} attempts: {e}",
                            parsed.kind.name()
                        ),
                    ));
                }
                other => return other.map(Some),
            }
        }
    }

    /// Plans `sql`, a statement's read query, in the session's own state with `table` pinned
    /// and showing its rows' identities.
    async fn plan_read_query(
        &self,
        table: &Table,
        sql: &str,
    ) -> Result<(
        datafusion::execution::SessionState,
        datafusion::logical_expr::LogicalPlan,
    )> {
        let state = self.ctx.state();
        let list = MemoryCatalogProviderList::new();
        for name in state.catalog_list().catalog_names() {
            if let Some(catalog) = state.catalog_list().catalog(&name) {
                list.register_catalog(name, catalog);
            }
        }
        list.register_catalog(
            self.lake.name().to_string(),
            Arc::new(self.catalog.with_row_ids(table.clone())),
        );
        let state = SessionStateBuilder::new_from_existing(state)
            .with_catalog_list(Arc::new(list))
            .build();
        let mut statements = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("SQL syntax error: {e}")))?;
        let statement = statements.pop_front().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "the read query of a row-level statement is empty",
            )
        })?;
        let plan = state.statement_to_plan(statement).await.map_err(from_df_error)?;
        Ok((state, plan))
    }

    /// The types of the parameters (`$1`, `$2`, ...) of row-level `statement`, by id, for the
    /// extended protocol's `Describe`; `None` when `statement` is not a row-level statement.
    /// A parameter compared with a column takes its type (as DataFusion infers it for a
    /// query), one assigned to a column (`SET a = $1`, `INSERT VALUES ($1)`) the column's; the
    /// rest stay unknown, and the client's value is then read as text.
    pub async fn row_level_parameter_types(
        &self,
        statement: &Statement,
    ) -> Result<Option<HashMap<String, Option<DataType>>>> {
        let Some(parsed) = Parsed::of(statement)? else {
            return Ok(None);
        };
        let ident = self.table_ident(&parsed.target)?;
        let table = self.lake.load_table(&ident).await?;
        let fields = RowIdTable::new(self.lake.clone(), table.clone())
            .map_err(from_df_error)?
            .schema;
        let columns = tarn_lake::column_names(&table);
        let parsed = parsed.with_columns(&columns)?;
        let query = parsed.read_query(&columns)?;
        let (_, plan) = self.plan_read_query(&table, &query.sql).await?;
        let mut types = plan.get_parameter_types().map_err(from_df_error)?;
        for (column, value) in parsed.assigned_values(&columns)? {
            if let SqlExpr::Value(v) = value
                && let datafusion::sql::sqlparser::ast::Value::Placeholder(id) = &v.value
                && let Some(slot @ None) = types.get_mut(id)
            {
                *slot = Some(fields.field(column).data_type().clone());
            }
        }
        Ok(Some(types))
    }

    fn authorize_row_level(&self, parsed: &Parsed, table: &Table, columns: &[String]) -> Result<()> {
        let ident = table.identifier();
        let Some(g) = &self.governance else {
            return Ok(());
        };
        let name = g.lake_table(ident);
        let what = name.to_string();
        let mut writes: Vec<(&str, Option<Vec<String>>)> = Vec::new();
        match parsed.kind {
            Kind::Delete => writes.push(("DeleteFromTable", None)),
            Kind::Update => writes.push(("UpdateTableColumns", Some(parsed.updated_columns(columns)?))),
            Kind::Merge => {
                let merge = parsed.merge.as_ref().expect("a MERGE has its clauses");
                let has = |f: fn(&MergeAction) -> bool| merge.clauses.iter().any(|c| f(&c.action));
                if has(|a| matches!(a, MergeAction::Insert(_))) {
                    writes.push(("InsertIntoTable", None));
                }
                if has(|a| matches!(a, MergeAction::Update(_))) {
                    writes.push(("UpdateTableColumns", Some(parsed.updated_columns(columns)?)));
                }
                if has(|a| matches!(a, MergeAction::Delete { .. })) {
                    writes.push(("DeleteFromTable", None));
                }
            }
        }
        for (operation, columns) in writes {
            g.check(operation, Some(name.resource(columns.as_deref())), &what)?;
        }
        let fields = RowIdTable::new(self.lake.clone(), table.clone())
            .map_err(from_df_error)?
            .schema;
        if parsed.writes_rows()
            && let Some(masked) = g.masked_column(
                &name,
                &fields.fields()[..columns.len()]
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect::<Vec<_>>(),
            )?
        {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "access denied: {} of {what} would write rows with masked values: {masked}",
                    parsed.kind.name()
                ),
            ));
        }
        Ok(())
    }

    async fn run_row_level_once(&self, parsed: &Parsed, ident: &TableIdent, attempt: u32) -> Result<Output> {
        let table = self.lake.load_table(ident).await?;
        if table.metadata().format_version() >= FormatVersion::V3 {
            return Err(unsupported(format!(
                "{} on format-v3 table {ident} (deletion vectors)",
                parsed.kind.name()
            )));
        }
        let columns = tarn_lake::column_names(&table);
        let parsed = &parsed.with_columns(&columns)?;
        self.authorize_row_level(parsed, &table, &columns)?;
        let mode = write_mode(&table, parsed.kind)?;
        let query = parsed.read_query(&columns)?;
        tracing::debug!(table = %ident, sql = %query.sql, "row-level read query");

        let (state, plan) = self.plan_read_query(&table, &query.sql).await?;
        let mut stream = DataFrame::new(state, plan.clone())
            .execute_stream()
            .await
            .map_err(from_df_error)?;

        let prefix = format!(
            "{}-{}",
            parsed.kind.name().to_ascii_lowercase(),
            uuid::Uuid::new_v4()
        );
        let mut changes = Changes {
            deletes: Vec::new(),
            writer: DataWriter::new(&table, &prefix)?,
            inserted: 0,
            updated: 0,
            deleted: 0,
            inserted_keys: Vec::new(),
        };
        let mut paths: HashMap<String, Arc<str>> = HashMap::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(from_df_error)?;
            collect_batch(parsed.kind, &query, &batch, &mut changes, &mut paths).await?;
        }
        // Sorted by file and position, as position delete files are; a row twice is an error
        // unless the statement only deletes.
        changes.deletes.sort_unstable();
        let before = changes.deletes.len();
        changes.deletes.dedup();
        if changes.deletes.len() != before {
            if parsed.kind != Kind::Delete {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{} command cannot affect row a second time: a row of {ident} matches more than one source row; \
                         ensure that no more than one source row matches any one target row",
                        parsed.kind.name()
                    ),
                ));
            }
            changes.deleted = changes.deletes.len() as u64;
        }
        let count = changes.count();
        let counts = (changes.inserted, changes.updated, changes.deleted);
        if changes.deletes.is_empty() && changes.inserted == 0 {
            self.audit_row_level(parsed.kind, ident, counts);
            return Ok(command(parsed.kind.name(), Some(count)));
        }
        let mut summary = HashMap::from([(
            "tarn.statement".to_string(),
            parsed.kind.name().to_ascii_lowercase(),
        )]);
        if let Some(read) = table.metadata().current_snapshot_id() {
            // The snapshot the statement read: its parent when nothing landed in between.
            summary.insert("tarn.statement.read-snapshot-id".to_string(), read.to_string());
        }
        let referenced: HashSet<String> = changes.deletes.iter().map(|(p, _)| p.to_string()).collect();
        let ours = changes.deletes.clone();
        let mut written: Vec<String> = Vec::new();
        let change = match mode {
            WriteMode::MergeOnRead => {
                let data_files = changes.writer.close().await?;
                written.extend(data_files.iter().map(|f| f.file_path().to_string()));
                let delete_files = tarn_lake::write_position_deletes(&table, &prefix, changes.deletes).await;
                let delete_files = match delete_files {
                    Ok(files) => files,
                    Err(e) => {
                        self.delete_files(&written).await;
                        return Err(e);
                    }
                };
                written.extend(delete_files.iter().map(|f| f.file_path().to_string()));
                Change::RowDelta(RowDelta {
                    data_files,
                    delete_files,
                    referenced_data_files: referenced.clone(),
                    summary,
                })
            }
            WriteMode::CopyOnWrite => {
                let mut writer = changes.writer;
                copy_kept_rows(
                    &self.lake,
                    &table,
                    &columns,
                    &changes.deletes,
                    &referenced,
                    &mut writer,
                )
                .await?;
                let added = writer.close().await?;
                written.extend(added.iter().map(|f| f.file_path().to_string()));
                let live = self.lake.current_data_files(&table).await?;
                let removed = referenced
                    .iter()
                    .map(|path| {
                        live.get(path).cloned().ok_or_else(|| {
                            Error::new(
                                ErrorKind::Internal,
                                format!(
                                    "data file {path} of {ident} is not in the snapshot the statement read"
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Change::Overwrite(Overwrite {
                    removed_data_files: removed,
                    removed_delete_files: Vec::new(),
                    added_data_files: added,
                    summary,
                })
            }
        };
        if let Some(hook) = &self.before_row_level_commit {
            hook(attempt).await;
        }
        let inserted = if counts.0 == 0 {
            InsertCheck::Nothing
        } else {
            match InsertedKeys::of(&table, &query.keys, &changes.inserted_keys) {
                Some(keys) => InsertCheck::Keys(Arc::new(keys)),
                None => InsertCheck::AnyAddedRow,
            }
        };
        if let Err(e) = self
            .commit_serializable(parsed.kind, &table, change, ours, referenced, inserted)
            .await
        {
            self.delete_files(&written).await;
            return Err(e);
        }
        self.audit_row_level(parsed.kind, ident, counts);
        self.record_lineage(ident, &plan).await;
        Ok(command(parsed.kind.name(), Some(count)))
    }

    /// The audit trail's write records of a committed row-level statement: one per kind of
    /// change with its rows (`inserted`, `updated`, `deleted`), the statement's own kind when
    /// it changed nothing.
    fn audit_row_level(&self, kind: Kind, ident: &TableIdent, (inserted, updated, deleted): (u64, u64, u64)) {
        let Some(g) = &self.governance else { return };
        let table = g.lake_table(ident).to_string();
        let changed = [
            ("InsertIntoTable", inserted),
            ("UpdateTableColumns", updated),
            ("DeleteFromTable", deleted),
        ];
        let mut any = false;
        for (operation, rows) in changed.into_iter().filter(|(_, rows)| *rows > 0) {
            g.record_write(operation, &table, rows);
            any = true;
        }
        if !any {
            let operation = match kind {
                Kind::Delete => "DeleteFromTable",
                Kind::Update => "UpdateTableColumns",
                Kind::Merge => "MergeIntoTable",
            };
            g.record_write(operation, &table, 0);
        }
    }
}

/// What a statement commits.
enum Change {
    RowDelta(RowDelta),
    Overwrite(Overwrite),
}

/// The summary key tarn's CDC sink records its pipeline under (`tarn_cdc`'s
/// `SUMMARY_PIPELINE`): its commits are blind writes of the source's changes.
const CDC_PIPELINE_KEY: &str = "tarn.cdc.pipeline";

impl TarnSession {
    /// Commits `change`, planned on `base`, serializably (see the module doc): a guard validates
    /// every snapshot committed since `base` with [`check_concurrent`] before the commit lands
    /// on it; a real conflict is a [`ErrorKind::CommitConflict`] error, on which the statement
    /// re-runs. `inserted`: the change inserts rows of a `MERGE`'s `WHEN NOT MATCHED` clauses.
    async fn commit_serializable(
        &self,
        kind: Kind,
        base: &Table,
        change: Change,
        ours: Vec<(Arc<str>, u64)>,
        referenced: HashSet<String>,
        inserted: InsertCheck,
    ) -> Result<()> {
        let validated = Arc::new(tokio::sync::Mutex::new(base.metadata().current_snapshot_id()));
        let (ours, referenced) = (Arc::new(ours), Arc::new(referenced));
        // The data files the statement read, to tell the ones added since.
        let read_files: Arc<HashSet<String>> = Arc::new(match &inserted {
            InsertCheck::Keys(_) if base.metadata().current_snapshot().is_some() => self
                .lake
                .current_data_files(base)
                .await?
                .keys()
                .cloned()
                .collect(),
            _ => HashSet::new(),
        });
        let lake = self.lake.clone();
        let guard = CommitGuard::new_async(move |current: Table| {
            let (lake, validated, ours, referenced, inserted, read_files) = (
                lake.clone(),
                validated.clone(),
                ours.clone(),
                referenced.clone(),
                inserted.clone(),
                read_files.clone(),
            );
            async move {
                let mut validated = validated.lock().await;
                check_concurrent(&lake, kind, *validated, &current, &ours, &referenced).await?;
                check_inserted(&lake, kind, *validated, &current, &inserted, &read_files).await?;
                // The next attempt (after a lost race) validates only what landed since.
                *validated = current.metadata().current_snapshot_id();
                Ok(HashMap::new())
            }
        });
        match change {
            Change::RowDelta(delta) => {
                self.lake
                    .commit_row_delta_guarded(base, delta, Some(&guard))
                    .await?;
            }
            Change::Overwrite(overwrite) => {
                self.lake
                    .commit_overwrite_guarded(base, overwrite, Some(&guard))
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes files a failed statement wrote (best effort: orphan removal finds any left).
    async fn delete_files(&self, paths: &[String]) {
        for path in paths {
            if let Err(e) = self.lake.file_io().delete(path).await {
                tracing::warn!(file = %path, error = %e, "cannot delete a file of a failed statement");
            }
        }
    }
}

/// The columns a `MERGE` clause's `INSERT` names, or all of `columns` when it names none.
fn insert_targets(insert: &MergeInsertExpr, columns: &[String]) -> Vec<String> {
    if insert.columns.is_empty() {
        return columns.to_vec();
    }
    insert
        .columns
        .iter()
        .map(|c| {
            c.0.last()
                .and_then(|p| p.as_ident())
                .map(normalize)
                .unwrap_or_else(|| c.to_string())
        })
        .collect()
}

/// Whether `statement` has parameters (`$1`, ...), as a prepared statement of the extended
/// protocol does.
pub fn has_parameters(statement: &Statement) -> bool {
    visit_expressions(statement, |e| match e {
        SqlExpr::Value(v) if matches!(v.value, datafusion::sql::sqlparser::ast::Value::Placeholder(_)) => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// `statement` with its parameters (`$1`, ...) replaced by `params`' values as SQL literals, so
/// a row-level statement prepared over the extended protocol runs as written with them. A
/// parameter without a value is an error naming it, as PostgreSQL's "bind message supplies N
/// parameters" is.
pub fn bind_parameters(statement: &Statement, params: &datafusion::common::ParamValues) -> Result<Statement> {
    use datafusion::sql::sqlparser::ast::{Value, visit_expressions_mut};
    use datafusion::sql::unparser::Unparser;
    use datafusion::sql::unparser::dialect::PostgreSqlDialect as Unparsed;
    let dialect = Unparsed {};
    let unparser = Unparser::new(&dialect);
    let mut bound = statement.clone();
    let mut failed = None;
    let _ = visit_expressions_mut(&mut bound, |e| {
        if let SqlExpr::Value(v) = e
            && let Value::Placeholder(id) = &v.value
        {
            let literal = params
                .get_placeholders_with_values(id)
                .map_err(|_| {
                    format!(
                        "parameter {id} has no value: the statement takes more parameters than were bound"
                    )
                })
                .and_then(|value| {
                    unparser
                        .expr_to_sql(&Expr::Literal(value.value, None))
                        .map_err(|err| format!("parameter {id}: {err}"))
                });
            match literal {
                // Parenthesized: a negative number stays one operand (`a - $1` with -5).
                Ok(literal) => *e = SqlExpr::Nested(Box::new(literal)),
                Err(why) => {
                    failed = Some(why);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    match failed {
        Some(why) => Err(Error::new(ErrorKind::InvalidInput, why)),
        None => Ok(bound),
    }
}

/// `kind` on `ident` lost to a concurrent commit, for `why` (retried, then 40001).
fn conflict_error(kind: Kind, ident: &iceberg::TableIdent, why: String) -> Error {
    Error::new(
        ErrorKind::CommitConflict,
        format!(
            "{} of {ident} conflicts with a concurrent commit: {why}",
            kind.name()
        ),
    )
}

/// Whether the snapshots committed after snapshot `from` (the one the statement read, or the
/// last one validated) up to `current` leave the statement's reads valid: appends do; a
/// compaction (`replace`) or a CDC commit does unless it deleted one of the rows the statement
/// deletes or rewrites (`ours`, in the data files `referenced`) or added equality deletes; any
/// other commit (another statement, another engine) may have read and changed anything, so it
/// conflicts.
async fn check_concurrent(
    lake: &Lake,
    kind: Kind,
    from: Option<i64>,
    current: &Table,
    ours: &[(Arc<str>, u64)],
    referenced: &HashSet<String>,
) -> Result<()> {
    let ident = current.identifier();
    let metadata = current.metadata();
    let conflict = |why: String| conflict_error(kind, ident, why);
    let mut id = metadata.current_snapshot_id();
    let mut rows_to_check = false;
    while id != from {
        let Some(snapshot) = id.and_then(|i| metadata.snapshot_by_id(i)) else {
            return Err(conflict(format!(
                "snapshot {} it read is no longer in the table's history",
                from.map_or("none".into(), |b| b.to_string())
            )));
        };
        let summary = snapshot.summary();
        match summary.operation {
            Operation::Append => {}
            Operation::Replace => rows_to_check = true,
            _ if summary.additional_properties.contains_key(CDC_PIPELINE_KEY) => rows_to_check = true,
            ref other => {
                return Err(conflict(format!(
                    "snapshot {} ({}) changed rows after the snapshot it read",
                    snapshot.snapshot_id(),
                    other.as_str()
                )));
            }
        }
        id = snapshot.parent_snapshot_id();
    }
    if !rows_to_check {
        return Ok(());
    }
    let since = from
        .and_then(|id| metadata.snapshot_by_id(id))
        .map_or(0, |s| s.sequence_number());
    let deleted = lake.deletes_since(current, since, referenced).await?;
    if let Some(file) = deleted.equality_files.first() {
        return Err(conflict(format!(
            "equality delete file {file} may delete the rows it changes"
        )));
    }
    if let Some((path, pos)) = ours.iter().find(|(path, pos)| {
        deleted
            .positions
            .get(path.as_ref())
            .is_some_and(|gone| gone.contains(pos))
    }) {
        return Err(conflict(format!(
            "row {pos} of data file {path} was changed meanwhile"
        )));
    }
    Ok(())
}

/// What the commit of a statement checks for the rows it inserted (a `MERGE`'s `WHEN NOT
/// MATCHED` clauses): an insert rests on its source row matching no row of the table, and a
/// row added meanwhile may match it.
#[derive(Clone)]
enum InsertCheck {
    /// The statement inserted nothing.
    Nothing,
    /// Any row added meanwhile (by a commit other than a compaction) conflicts: the `ON` gives
    /// no key to tell.
    AnyAddedRow,
    /// A row added meanwhile conflicts when it has the key of an inserted row.
    Keys(Arc<InsertedKeys>),
}

/// The keys ([`ReadQuery::keys`]) of the rows a `MERGE` inserted, as the target's columns hold
/// them, in Arrow's row encoding. A row whose key has a NULL matches nothing and is left out.
struct InsertedKeys {
    columns: Vec<String>,
    types: Vec<DataType>,
    rows: HashSet<Box<[u8]>>,
}

impl InsertedKeys {
    /// The keys of `batches` (the values of `columns`' `ON` expressions); `None` when there
    /// are no key columns, or a value's type may compare with the column's otherwise than its
    /// cast would (then any added row conflicts).
    fn of(table: &Table, columns: &[String], batches: &[RecordBatch]) -> Option<Self> {
        if columns.is_empty() {
            return None;
        }
        let schema = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema()).ok()?;
        let types: Vec<DataType> = columns
            .iter()
            .map(|c| schema.field_with_name(c).ok().map(|f| f.data_type().clone()))
            .collect::<Option<_>>()?;
        let comparable = |value: &DataType, column: &DataType| {
            let string =
                |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
            value == column
                || (value.is_integer() && column.is_integer())
                || (string(value) && string(column))
        };
        let mut rows = HashSet::new();
        for batch in batches {
            if !batch
                .columns()
                .iter()
                .zip(&types)
                .all(|(a, t)| comparable(a.data_type(), t))
            {
                return None;
            }
            rows.extend(encode_keys(&types, batch.columns()).ok()?.into_iter().flatten());
        }
        Some(Self {
            columns: columns.to_vec(),
            types,
            rows,
        })
    }
}

/// `arrays` cast to `types`, each row in Arrow's row encoding; `None` for a row with a NULL.
fn encode_keys(types: &[DataType], arrays: &[ArrayRef]) -> Result<Vec<Option<Box<[u8]>>>> {
    let internal = |e: arrow::error::ArrowError| {
        Error::new(ErrorKind::Internal, "encoding the keys of inserted rows").with_source(e)
    };
    let arrays: Vec<ArrayRef> = arrays
        .iter()
        .zip(types)
        .map(|(a, t)| {
            if a.data_type() == t {
                Ok(a.clone())
            } else {
                cast(a, t)
            }
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(internal)?;
    let converter =
        RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect()).map_err(internal)?;
    let encoded = converter.convert_columns(&arrays).map_err(internal)?;
    let rows = arrays.first().map_or(0, |a| a.len());
    Ok((0..rows)
        .map(|i| (!arrays.iter().any(|a| a.is_null(i))).then(|| Box::from(encoded.row(i).as_ref())))
        .collect())
}

/// Whether the snapshots committed after `from` up to `current` leave the rows a `MERGE`
/// inserted valid (see [`InsertCheck`]): a compaction (`replace`) adds no rows; any other
/// snapshot that added rows conflicts — with [`InsertCheck::Keys`], only when a live row of a
/// data file that is not one the statement read has the key of a row it inserted.
async fn check_inserted(
    lake: &Lake,
    kind: Kind,
    from: Option<i64>,
    current: &Table,
    inserted: &InsertCheck,
    read_files: &HashSet<String>,
) -> Result<()> {
    if matches!(inserted, InsertCheck::Nothing) {
        return Ok(());
    }
    let ident = current.identifier();
    let metadata = current.metadata();
    let conflict = |why: String| conflict_error(kind, ident, why);
    let mut id = metadata.current_snapshot_id();
    let mut added_by = None;
    while id != from {
        // check_concurrent saw the chain whole.
        let Some(snapshot) = id.and_then(|i| metadata.snapshot_by_id(i)) else {
            break;
        };
        let summary = snapshot.summary();
        if summary.operation != Operation::Replace {
            let added = added_rows(summary);
            if added > 0 {
                added_by = Some(format!(
                    "snapshot {} ({}) added {added} rows",
                    snapshot.snapshot_id(),
                    summary.operation.as_str()
                ));
            }
        }
        id = snapshot.parent_snapshot_id();
    }
    let Some(added_by) = added_by else {
        return Ok(());
    };
    let keys = match inserted {
        InsertCheck::Keys(keys) => keys,
        _ => {
            return Err(conflict(format!(
                "{added_by}, which may match source rows it inserted as not matched"
            )));
        }
    };
    let live = lake.current_data_files(current).await?;
    let added: HashSet<String> = live
        .keys()
        .filter(|path| !read_files.contains(*path))
        .cloned()
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let mut rows = lake.scan_live_rows(current, &keys.columns, Some(&added)).await?;
    while let Some(live) = rows.try_next().await? {
        let arrays = &live.batch.columns()[..keys.columns.len()];
        if let Some(i) = encode_keys(&keys.types, arrays)?
            .iter()
            .position(|k| k.as_ref().is_some_and(|k| keys.rows.contains(k)))
        {
            let pos = live
                .batch
                .column(keys.columns.len())
                .as_primitive::<Int64Type>()
                .value(i);
            return Err(conflict(format!(
                "{added_by}: row {pos} of data file {} has the key ({}) of a row it inserted",
                live.data_file,
                keys.columns.join(", ")
            )));
        }
    }
    Ok(())
}

/// How many rows a snapshot added, by its summary: writers leave zero counters out, and one
/// that keeps no counters at all (no `total-records` either) may have added rows (taken as 1).
fn added_rows(summary: &iceberg::spec::Summary) -> u64 {
    let counters = &summary.additional_properties;
    match counters.get("added-records") {
        Some(n) => n.parse::<u64>().unwrap_or(1),
        None if counters.contains_key("total-records") => 0,
        None => 1,
    }
}

/// Adds the changes of one batch of the read query to `changes`.
async fn collect_batch(
    kind: Kind,
    query: &ReadQuery,
    batch: &RecordBatch,
    changes: &mut Changes,
    paths: &mut HashMap<String, Arc<str>>,
) -> Result<()> {
    let rows = batch.num_rows();
    if rows == 0 {
        return Ok(());
    }
    let internal = |e: arrow::error::ArrowError| {
        Error::new(ErrorKind::Internal, "reading the rows a statement affects").with_source(e)
    };
    let files = cast(batch.column(0), &DataType::Utf8).map_err(internal)?;
    let files = files.as_string::<i32>();
    let positions = cast(batch.column(1), &DataType::Int64).map_err(internal)?;
    let positions = positions.as_primitive::<Int64Type>();
    let actions: Vec<Option<RowAction>> = match kind {
        Kind::Delete => vec![Some(RowAction::Delete); rows],
        Kind::Update => vec![Some(RowAction::Update); rows],
        Kind::Merge => {
            let codes = cast(batch.column(2), &DataType::Int64).map_err(internal)?;
            let codes = codes.as_primitive::<Int64Type>();
            (0..rows)
                .map(|i| match codes.value(i) {
                    0 => None,
                    code => query.actions.get(code as usize - 1).copied().flatten(),
                })
                .collect()
        }
    };
    let mut keep = Vec::with_capacity(rows);
    for (i, action) in actions.iter().enumerate() {
        if let Some(RowAction::Delete | RowAction::Update) = action {
            if files.is_null(i) || positions.is_null(i) {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "an affected row came without its data file and position",
                ));
            }
            let path = files.value(i);
            let path = match paths.get(path) {
                Some(p) => p.clone(),
                None => {
                    let p: Arc<str> = Arc::from(path);
                    paths.insert(path.to_string(), p.clone());
                    p
                }
            };
            changes.deletes.push((path, positions.value(i) as u64));
        }
        match action {
            Some(RowAction::Delete) => changes.deleted += 1,
            Some(RowAction::Update) => changes.updated += 1,
            Some(RowAction::Insert) => changes.inserted += 1,
            None => {}
        }
        keep.push(matches!(action, Some(RowAction::Update | RowAction::Insert)));
    }
    if !query.keys.is_empty() && actions.contains(&Some(RowAction::Insert)) {
        let inserts: BooleanArray = actions
            .iter()
            .map(|a| Some(*a == Some(RowAction::Insert)))
            .collect();
        let keys: Vec<usize> = (3..3 + query.keys.len()).collect();
        let keys = batch.project(&keys).map_err(internal)?;
        changes
            .inserted_keys
            .push(filter_record_batch(&keys, &inserts).map_err(internal)?);
    }
    if kind == Kind::Delete || !keep.iter().any(|k| *k) {
        return Ok(());
    }
    let values: Vec<usize> = (query.values_from..batch.num_columns()).collect();
    let values = batch.project(&values).map_err(internal)?;
    let values = filter_record_batch(&values, &BooleanArray::from(keep)).map_err(internal)?;
    changes.writer.write(values).await
}

/// Writes the live rows of the data files in `affected` other than those at `deletes` (sorted)
/// to `writer`: the rows a copy-on-write statement keeps.
async fn copy_kept_rows(
    lake: &Lake,
    table: &Table,
    columns: &[String],
    deletes: &[(Arc<str>, u64)],
    affected: &HashSet<String>,
    writer: &mut DataWriter,
) -> Result<()> {
    let mut stream = lake.scan_live_rows(table, columns, Some(affected)).await?;
    while let Some(live) = stream.try_next().await? {
        let start = deletes.partition_point(|(p, _)| p.as_ref() < live.data_file.as_ref());
        let end = deletes.partition_point(|(p, _)| p.as_ref() <= live.data_file.as_ref());
        let gone: HashSet<u64> = deletes[start..end].iter().map(|(_, pos)| *pos).collect();
        let pos = live.batch.column(columns.len()).as_primitive::<Int64Type>();
        let keep: BooleanArray = pos
            .iter()
            .map(|p| Some(!gone.contains(&(p.unwrap_or(-1) as u64))))
            .collect();
        let rows: Vec<usize> = (0..columns.len()).collect();
        let rows = live
            .batch
            .project(&rows)
            .and_then(|b| filter_record_batch(&b, &keep))
            .map_err(|e| Error::new(ErrorKind::Internal, "copying kept rows").with_source(e))?;
        writer.write(rows).await?;
    }
    Ok(())
}

/// A lake table pinned at one snapshot with its columns as [`crate::provider::LakeTable`]
/// shows them, then [`FILE_COLUMN`] and [`POS_COLUMN`]: the identity of each live row, which
/// row-level statements delete by. Scans prune data files with Iceberg's manifests for the
/// filters on the table's own columns and read the rest with
/// [`tarn_lake::Lake::scan_live_rows`].
#[derive(Debug)]
pub struct RowIdTable {
    lake: Lake,
    table: Table,
    /// The columns as Iceberg's Arrow reader gives them, then the two identity columns.
    native: SchemaRef,
    /// The columns as SQL sees them (view types, UUIDs as text), then the identity columns.
    schema: SchemaRef,
}

impl RowIdTable {
    /// `table` at its current snapshot.
    pub(crate) fn new(lake: Lake, table: Table) -> DFResult<Self> {
        let native =
            iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema()).map_err(|e| {
                df_error(tarn_lake::iceberg_error(
                    format!("cannot map the schema of {}", table.identifier()),
                    e,
                ))
            })?;
        let shown = view_schema(&native, &uuid_columns(&table));
        let ids = [
            Field::new(FILE_COLUMN, DataType::Utf8, false),
            Field::new(POS_COLUMN, DataType::Int64, false),
        ];
        let with_ids = |schema: &Schema| {
            let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.extend(ids.iter().cloned());
            Arc::new(Schema::new(fields))
        };
        Ok(Self {
            native: with_ids(&native),
            schema: with_ids(&shown),
            lake,
            table,
        })
    }

    fn base_columns(&self) -> usize {
        self.schema.fields().len() - 2
    }
}

#[async_trait]
impl TableProvider for RowIdTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let base = self.base_columns();
        // Data files that may hold matching rows, by the manifests' partition values and column
        // bounds; only filters on the table's own columns go to Iceberg.
        let prunable: Vec<Expr> = filters
            .iter()
            .filter(|f| f.column_refs().iter().all(|c| !is_row_id_column(&c.name)))
            .cloned()
            .collect();
        let files = match convert_filters_to_predicate(&prunable) {
            Some(predicate) if self.table.metadata().current_snapshot().is_some() => {
                let ice = |e: iceberg::Error| {
                    df_error(tarn_lake::iceberg_error(
                        format!("cannot plan a scan of {}", self.table.identifier()),
                        e,
                    ))
                };
                let tasks: Vec<iceberg::scan::FileScanTask> = self
                    .table
                    .scan()
                    .select_all()
                    .with_filter(predicate)
                    .build()
                    .map_err(ice)?
                    .plan_files()
                    .await
                    .map_err(ice)?
                    .try_collect()
                    .await
                    .map_err(ice)?;
                Some(tasks.into_iter().map(|t| t.data_file_path).collect())
            }
            _ => None,
        };
        let columns: Vec<String> = projection
            .iter()
            .filter(|&&i| i < base)
            .map(|&i| self.schema.field(i).name().clone())
            .collect();
        let native = Arc::new(self.native.project(&projection)?);
        let exec = Arc::new(LiveRowsExec::new(
            self.lake.clone(),
            self.table.clone(),
            columns,
            files,
            projection.iter().map(|&i| i.checked_sub(base)).collect(),
            native,
        ));
        cast_to(exec, &self.schema.project(&projection)?)
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DFResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// Streams the live rows of a pinned table with their data file and position.
struct LiveRowsExec {
    lake: Lake,
    table: Table,
    /// The table's columns to read.
    columns: Vec<String>,
    /// Only these data files, when pruned.
    files: Option<HashSet<String>>,
    /// Per output column: `None` for the next of `columns`, `Some(0)` the file, `Some(1)` the
    /// position.
    output: Vec<Option<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for LiveRowsExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LiveRowsExec({})", self.table.identifier())
    }
}

impl LiveRowsExec {
    fn new(
        lake: Lake,
        table: Table,
        columns: Vec<String>,
        files: Option<HashSet<String>>,
        output: Vec<Option<usize>>,
        schema: SchemaRef,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            lake,
            table,
            columns,
            files,
            output,
            schema,
            properties,
        }
    }
}

impl DisplayAs for LiveRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LiveRowsExec: table={} snapshot={:?} files={}",
            self.table.identifier(),
            self.table.metadata().current_snapshot_id(),
            self.files
                .as_ref()
                .map_or("all".to_string(), |f| f.len().to_string())
        )
    }
}

impl ExecutionPlan for LiveRowsExec {
    fn name(&self) -> &str {
        "LiveRowsExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("LiveRowsExec takes no children".into()))
        }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LiveRowsExec has one partition, asked for {partition}"
            )));
        }
        let (lake, table, columns, files) = (
            self.lake.clone(),
            self.table.clone(),
            self.columns.clone(),
            self.files.clone(),
        );
        let (output, schema) = (self.output.clone(), self.schema.clone());
        let read = columns.len();
        let stream = futures::stream::once(async move {
            if table.metadata().current_snapshot().is_none() {
                return Ok(futures::stream::empty().boxed());
            }
            lake.scan_live_rows(&table, &columns, files.as_ref()).await
        })
        .try_flatten()
        .map(move |live| {
            let live = live.map_err(df_error)?;
            let rows = live.batch.num_rows();
            let mut next = 0;
            let mut arrays: Vec<ArrayRef> = Vec::with_capacity(output.len());
            for (field, which) in schema.fields().iter().zip(&output) {
                let array: ArrayRef = match which {
                    None => {
                        next += 1;
                        live.batch.column(next - 1).clone()
                    }
                    Some(0) => Arc::new(StringArray::from(vec![live.data_file.as_ref(); rows])),
                    Some(_) => live.batch.column(read).clone(),
                };
                let array = if array.data_type() == field.data_type() {
                    array
                } else {
                    cast(&array, field.data_type())?
                };
                arrays.push(array);
            }
            let options = RecordBatchOptions::new().with_row_count(Some(rows));
            Ok(RecordBatch::try_new_with_options(
                schema.clone(),
                arrays,
                &options,
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream.boxed(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::{ParamValues, ScalarValue};

    #[test]
    fn parameters_are_bound_as_literals() {
        let statement = DFParser::parse_sql_with_dialect(
            "UPDATE t SET v = $1, n = n - $2 WHERE id = $3 AND d = $4",
            &PostgreSqlDialect {},
        )
        .unwrap()
        .pop_front()
        .unwrap();
        let datafusion::sql::parser::Statement::Statement(statement) = statement else {
            panic!("not a statement");
        };
        assert!(has_parameters(&statement));
        let params = ParamValues::List(
            [
                ScalarValue::Utf8(Some("it's".into())),
                ScalarValue::Int64(Some(-5)),
                ScalarValue::Int32(None),
                ScalarValue::Date32(Some(20_000)),
            ]
            .into_iter()
            .map(Into::into)
            .collect(),
        );
        let bound = bind_parameters(&statement, &params).unwrap();
        assert!(!has_parameters(&bound));
        let sql = bound.to_string();
        assert!(sql.contains("v = ('it''s')"), "{sql}");
        assert!(sql.contains("n - (-5)"), "{sql}");
        assert!(sql.contains("id = (NULL)"), "{sql}");
        assert!(sql.contains("2024-10-04"), "{sql}");
        // Re-parsed as tarn runs it.
        DFParser::parse_sql_with_dialect(&sql, &PostgreSqlDialect {}).unwrap();
        let short = ParamValues::List(vec![ScalarValue::Int64(Some(1)).into()]);
        let e = bind_parameters(&statement, &short).unwrap_err().to_string();
        assert!(e.contains("$2"), "{e}");
    }
}
