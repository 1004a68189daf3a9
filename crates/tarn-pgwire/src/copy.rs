//! `COPY` over the wire.
//!
//! - `COPY table [(columns)] TO STDOUT` and `COPY (query) TO STDOUT`, with PostgreSQL's options
//!   (`FORMAT text|csv|binary`, `HEADER`, `DELIMITER`, `NULL`, `QUOTE`, `ESCAPE`,
//!   `FORCE_QUOTE`) and its pre-9.0 spelling (`WITH CSV HEADER`, what psql's `\copy ... to`
//!   sends): the rows stream to the client as CopyData messages, encoded by `pgwire`'s
//!   `CopyEncoder` from the Arrow values as `datafusion-postgres` encodes query results. The
//!   rows come from the same governed session as a query's, so masks and row filters apply and
//!   reading needs what a `SELECT` needs.
//! - DataFusion's `COPY (query) TO 'file' STORED AS PARQUET|CSV|JSON`, which the wire endpoint's
//!   PostgreSQL parser does not know: run by the session as `tarn sql` runs it, answered with
//!   `COPY n`, where a policy is configured (its `CopyTo` decides who writes which path). With
//!   no policy every user who logs in could write any file the server may, so it is refused.
//!
//! `COPY ... FROM`, PostgreSQL's `COPY ... TO 'file'` and `TO PROGRAM` are refused with a
//! message saying what to use instead.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, SchemaRef, UInt64Type};
use bytes::{Bytes, BytesMut};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields;
use datafusion_postgres::arrow_pg::encoder::encode_value;
use datafusion_postgres::pgwire;
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{
    CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, FieldFormat, FieldInfo, Response, Tag,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use tarn_query::{Output, TarnSession};

/// What a statement is, as far as `COPY` goes.
pub(crate) enum Copy {
    /// `COPY ... TO STDOUT`: the query whose rows are sent, and how.
    ToStdout { query: String, format: CopyFormat },
    /// DataFusion's `COPY ... TO 'file'`: run by the session.
    ToFile,
    /// A `COPY` tarn does not run: why, and what to use.
    Refused(String),
}

/// The format of `COPY ... TO STDOUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyFormat {
    kind: Kind,
    header: bool,
    delimiter: Option<char>,
    null: Option<String>,
    quote: Option<char>,
    escape: Option<char>,
    /// Columns always quoted (CSV); `None`: none, `Some(empty)`: all (`*`).
    force_quote: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Csv,
    Binary,
}

impl Default for CopyFormat {
    fn default() -> Self {
        Self {
            kind: Kind::Text,
            header: false,
            delimiter: None,
            null: None,
            quote: None,
            escape: None,
            force_quote: None,
        }
    }
}

/// What `sql` (one statement) is, when it is a `COPY`; `None` for anything else, and for text
/// neither parser reads (the ordinary path reports the syntax error).
pub(crate) fn classify(sql: &str) -> Option<Copy> {
    if !sql
        .trim_start()
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case("copy"))
    {
        return None;
    }
    if let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        && statements.len() == 1
        && let Some(Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        }) = statements.pop()
    {
        if !to {
            return Some(Copy::Refused(COPY_FROM.into()));
        }
        match target {
            CopyTarget::Stdout => {}
            CopyTarget::File { filename } => {
                return Some(Copy::Refused(format!(
                    "COPY ... TO '{filename}' in PostgreSQL's form is not supported: write COPY (query) TO '{filename}' STORED AS PARQUET|CSV|JSON, or COPY ... TO STDOUT (psql's \\copy) to receive the rows"
                )));
            }
            CopyTarget::Stdin | CopyTarget::Program { .. } => {
                return Some(Copy::Refused(
                    "COPY ... TO PROGRAM is not supported: tarn runs no programs for a statement; use COPY ... TO STDOUT".into(),
                ));
            }
        }
        let query = match source {
            CopySource::Query(query) => query.to_string(),
            CopySource::Table { table_name, columns } if columns.is_empty() => {
                format!("SELECT * FROM {table_name}")
            }
            CopySource::Table { table_name, columns } => format!(
                "SELECT {} FROM {table_name}",
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Some(match copy_format(&options, &legacy_options) {
            Ok(format) => Copy::ToStdout { query, format },
            Err(refused) => Copy::Refused(refused),
        });
    }
    match DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}) {
        Ok(statements) if statements.len() == 1 && matches!(statements[0], DFStatement::CopyTo(_)) => {
            Some(Copy::ToFile)
        }
        // The parser wants `COPY ... FROM STDIN`'s rows inline; a client sends them after.
        _ if sql
            .split_whitespace()
            .map(|w| w.trim_end_matches(';').to_ascii_lowercase())
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == "from" && w[1] == "stdin") =>
        {
            Some(Copy::Refused(COPY_FROM.into()))
        }
        _ => None,
    }
}

const COPY_FROM: &str =
    "COPY ... FROM is not supported: load files with `tarn load` or INSERT INTO ... SELECT from a file table";

fn copy_format(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<CopyFormat, String> {
    let mut format = CopyFormat::default();
    for option in options {
        match option {
            CopyOption::Format(name) => {
                format.kind = match name.value.to_ascii_lowercase().as_str() {
                    "text" => Kind::Text,
                    "csv" => Kind::Csv,
                    "binary" => Kind::Binary,
                    other => {
                        return Err(format!(
                            "COPY format \"{other}\" not recognized (text, csv or binary)"
                        ));
                    }
                }
            }
            CopyOption::Header(on) => format.header = *on,
            CopyOption::Delimiter(c) => format.delimiter = Some(*c),
            CopyOption::Null(s) => format.null = Some(s.clone()),
            CopyOption::Quote(c) => format.quote = Some(*c),
            CopyOption::Escape(c) => format.escape = Some(*c),
            CopyOption::ForceQuote(columns) => format.force_quote = Some(names(columns)),
            CopyOption::Encoding(e) if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => {
                return Err(format!(
                    "COPY option {other} is not supported for COPY ... TO STDOUT"
                ));
            }
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Binary => format.kind = Kind::Binary,
            CopyLegacyOption::Delimiter(c) => format.delimiter = Some(*c),
            CopyLegacyOption::Null(s) => format.null = Some(s.clone()),
            CopyLegacyOption::Header => format.header = true,
            CopyLegacyOption::Csv(csv) => {
                format.kind = Kind::Csv;
                for option in csv {
                    match option {
                        CopyLegacyCsvOption::Header => format.header = true,
                        CopyLegacyCsvOption::Quote(c) => format.quote = Some(*c),
                        CopyLegacyCsvOption::Escape(c) => format.escape = Some(*c),
                        CopyLegacyCsvOption::ForceQuote(columns) => format.force_quote = Some(names(columns)),
                        other => {
                            return Err(format!(
                                "COPY option {other} is not supported for COPY ... TO STDOUT"
                            ));
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                    "COPY option {other} is not supported for COPY ... TO STDOUT"
                ));
            }
        }
    }
    if format.kind != Kind::Csv
        && (format.quote.is_some() || format.escape.is_some() || format.force_quote.is_some())
    {
        return Err("COPY QUOTE, ESCAPE and FORCE_QUOTE are available only in CSV mode".into());
    }
    if format.kind == Kind::Binary && (format.header || format.delimiter.is_some() || format.null.is_some()) {
        return Err("cannot specify HEADER, DELIMITER or NULL in BINARY mode".into());
    }
    Ok(format)
}

/// Column names of a `FORCE_QUOTE` list; `*` is the empty list (every column).
fn names(columns: &[datafusion::sql::sqlparser::ast::Ident]) -> Vec<String> {
    columns
        .iter()
        .filter(|c| c.value != "*")
        .map(|c| c.value.clone())
        .collect()
}

/// Runs `sql`, the `COPY` [`classify`] made `copy` of (for the task's principal): its
/// response, or its error as the client's. The caller admits it first and watches its
/// `statement_timeout` and cancellation, while it plans and while its data is sent.
pub(crate) async fn run(session: &TarnSession, sql: &str, copy: Copy) -> PgWireResult<Response> {
    let user = |e: tarn_core::Error| crate::user_error(&e);
    match copy {
        Copy::ToStdout { query, format } => {
            tarn_query::audit::with_statement(sql, to_stdout(session, &query, &format))
                .await
                .map_err(user)
        }
        // A file on the server, written by any user who can log in: only where a policy
        // decides it (`CopyTo`), as PostgreSQL keeps it to roles granted it.
        Copy::ToFile if session.governance().is_none() => Err(refused(
            "COPY ... TO a file on the server is refused over the wire when no policy is configured ([policy]: \
             a policy decides it with CopyTo); use COPY ... TO STDOUT (psql's \\copy) to receive the rows, or `tarn sql` on the server"
                .into(),
        )),
        Copy::ToFile => to_file(session, sql).await.map_err(user),
        Copy::Refused(why) => Err(refused(why)),
    }
}

/// The client's error for a refused `COPY` (SQLSTATE 0A000, feature not supported).
pub(crate) fn refused(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "0A000".into(), message)))
}

/// Runs `query` in `session` and answers with its rows as `COPY ... TO STDOUT` data.
async fn to_stdout(
    session: &TarnSession,
    query: &str,
    format: &CopyFormat,
) -> Result<Response, tarn_core::Error> {
    let mut statements = TarnSession::prepare(query)?;
    let statement = match (statements.pop(), statements.is_empty()) {
        (Some(s), true) => s,
        _ => {
            return Err(tarn_core::Error::new(
                tarn_core::ErrorKind::InvalidInput,
                "COPY (query) TO STDOUT takes one query",
            ));
        }
    };
    let Output::Rows(stream) = session.run(&statement).await? else {
        return Err(tarn_core::Error::new(
            tarn_core::ErrorKind::InvalidInput,
            "COPY (query) TO STDOUT takes a query that returns rows",
        ));
    };
    let schema = stream.schema();
    let encoding = match format.kind {
        Kind::Binary => Format::UnifiedBinary,
        Kind::Text | Kind::Csv => Format::UnifiedText,
    };
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &encoding, None).map_err(wire_to_tarn)?);
    let encoder = encoder_for(format, &schema, &fields)?;
    let header = (format.header && format.kind == Kind::Csv).then(|| header_line(&schema, format));
    let rows = CopyRows {
        stream,
        schema: schema.clone(),
        fields,
        encoder,
        header,
        ready: VecDeque::new(),
        done: false,
    };
    let mut rows = rows;
    // The first rows are produced here, while the caller still watches the statement's
    // timeout and cancellation before anything is sent: a statement stopped before its first
    // row (an aggregate, a sort) fails with a plain 57014, not in the middle of the copy.
    let first = match rows.next().await {
        Some(Err(e)) => return Err(row_error(e)),
        first => first,
    };
    let code = if format.kind == Kind::Binary { 1 } else { 0 };
    let rest = futures::stream::unfold(rows, |mut rows| async move {
        let next = rows.next().await?;
        Some((next, rows))
    });
    let data = futures::stream::iter(first).chain(rest);
    Ok(Response::CopyOut(CopyResponse::new(
        code,
        schema.fields().len(),
        data,
    )))
}

/// Runs DataFusion's `COPY ... TO 'file'` in `session`: `COPY n`.
async fn to_file(session: &TarnSession, sql: &str) -> Result<Response, tarn_core::Error> {
    let mut statements = TarnSession::prepare(sql)?;
    let Some(statement) = statements.pop() else {
        return Ok(Response::EmptyQuery);
    };
    let rows = match session.run(&statement).await? {
        Output::Rows(mut stream) => {
            let mut n = 0u64;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(tarn_query::from_df_error)?;
                if batch.num_columns() > 0
                    && let Some(counts) = batch.column(0).as_primitive_opt::<UInt64Type>()
                {
                    n += counts.iter().flatten().sum::<u64>();
                }
            }
            n
        }
        Output::Command { rows, .. } => rows.unwrap_or(0),
    };
    Ok(Response::Execution(Tag::new("COPY").with_rows(rows as usize)))
}

fn encoder_for(
    format: &CopyFormat,
    schema: &SchemaRef,
    fields: &Arc<Vec<FieldInfo>>,
) -> Result<CopyEncoder, tarn_core::Error> {
    Ok(match format.kind {
        Kind::Binary => CopyEncoder::new_binary(fields.clone()),
        Kind::Text => {
            let mut options = CopyTextOptions::default();
            if let Some(d) = format.delimiter {
                options.delimiter = d.to_string().into();
            }
            if let Some(n) = &format.null {
                options.null_string = n.as_str().into();
            }
            CopyEncoder::new_text(fields.clone(), options)
        }
        Kind::Csv => {
            let mut options = CopyCsvOptions::default();
            if let Some(d) = format.delimiter {
                options.delimiter = d.to_string().into();
            }
            if let Some(n) = &format.null {
                options.null_string = n.as_str().into();
            }
            if let Some(q) = format.quote {
                options.quote = q.to_string().into();
                // PostgreSQL: ESCAPE defaults to QUOTE.
                options.escape = q.to_string().into();
            }
            if let Some(e) = format.escape {
                options.escape = e.to_string().into();
            }
            if let Some(columns) = &format.force_quote {
                options.force_quote = if columns.is_empty() {
                    (0..schema.fields().len()).collect()
                } else {
                    columns
                        .iter()
                        .map(|c| {
                            schema.index_of(c).map_err(|_| {
                                tarn_core::Error::new(
                                    tarn_core::ErrorKind::InvalidInput,
                                    format!("FORCE_QUOTE column \"{c}\" is not in the COPY's columns"),
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?
                };
            }
            CopyEncoder::new_csv(fields.clone(), options)
        }
    })
}

/// The CSV header line: the column names, quoted where CSV needs it.
fn header_line(schema: &SchemaRef, format: &CopyFormat) -> Bytes {
    let delimiter = format.delimiter.unwrap_or(',');
    let quote = format.quote.unwrap_or('"');
    let escape = format.escape.unwrap_or(quote);
    let mut line = String::new();
    for (i, field) in schema.fields().iter().enumerate() {
        if i > 0 {
            line.push(delimiter);
        }
        let name = field.name();
        if name.contains([delimiter, quote, '\n', '\r']) {
            line.push(quote);
            for c in name.chars() {
                if c == quote || c == escape {
                    line.push(escape);
                }
                line.push(c);
            }
            line.push(quote);
        } else {
            line.push_str(name);
        }
    }
    line.push('\n');
    Bytes::from(line)
}

/// The rows of a `COPY ... TO STDOUT`, one CopyData message per row (as PostgreSQL sends them,
/// so the client's `COPY n` counts rows); the CSV header travels with the first row.
struct CopyRows {
    stream: SendableRecordBatchStream,
    schema: SchemaRef,
    fields: Arc<Vec<FieldInfo>>,
    encoder: CopyEncoder,
    header: Option<Bytes>,
    ready: VecDeque<CopyData>,
    done: bool,
}

impl CopyRows {
    async fn next(&mut self) -> Option<PgWireResult<CopyData>> {
        loop {
            if let Some(row) = self.ready.pop_front() {
                return Some(Ok(match self.header.take() {
                    Some(header) => {
                        let mut both = BytesMut::from(header.as_ref());
                        both.extend_from_slice(&row.data);
                        CopyData::new(both.freeze())
                    }
                    None => row,
                }));
            }
            if self.done {
                // No rows: the header alone.
                return self.header.take().map(|h| Ok(CopyData::new(h)));
            }
            match self.stream.next().await {
                Some(Ok(batch)) => {
                    if let Err(e) = self.encode(&batch) {
                        self.done = true;
                        self.header = None;
                        return Some(Err(e));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.header = None;
                    return Some(Err(PgWireError::ApiError(Box::new(e))));
                }
                None => self.done = true,
            }
        }
    }

    fn encode(&mut self, batch: &RecordBatch) -> PgWireResult<()> {
        // Text and CSV write floating point as PostgreSQL does (`1e+15`, `Infinity`), not as
        // the value encoder would (`1000000000000000.0`, `inf`); see `text_values`.
        let columns: Vec<(ArrayRef, Field)> = batch
            .columns()
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let field = self.schema.field(i);
                match (
                    self.fields[i].format(),
                    crate::text_values::float_column_as_text(column),
                ) {
                    (FieldFormat::Text, Some(text)) => (
                        text,
                        Field::new(field.name(), DataType::Utf8, field.is_nullable()),
                    ),
                    _ => (column.clone(), field.clone()),
                }
            })
            .collect();
        for row in 0..batch.num_rows() {
            for (i, (column, field)) in columns.iter().enumerate() {
                encode_value(&mut self.encoder, column, row, field, &self.fields[i])?;
            }
            self.ready.push_back(self.encoder.take_copy());
        }
        Ok(())
    }
}

/// The error of producing a COPY's rows, with its kind (53200 for memory and so on) kept.
fn row_error(e: PgWireError) -> tarn_core::Error {
    match e {
        PgWireError::ApiError(inner) => match inner.downcast::<datafusion::error::DataFusionError>() {
            Ok(df) => tarn_query::from_df_error(*df),
            Err(other) => tarn_core::Error::new(tarn_core::ErrorKind::Query, other.to_string()),
        },
        other => tarn_core::Error::new(tarn_core::ErrorKind::Query, other.to_string()),
    }
}

fn wire_to_tarn(e: PgWireError) -> tarn_core::Error {
    tarn_core::Error::new(
        tarn_core::ErrorKind::Internal,
        format!("cannot describe the COPY's columns: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_of(sql: &str) -> CopyFormat {
        match classify(sql) {
            Some(Copy::ToStdout { format, .. }) => format,
            Some(Copy::Refused(why)) => panic!("{sql}: refused: {why}"),
            _ => panic!("{sql}: not a COPY TO STDOUT"),
        }
    }

    #[test]
    fn copy_statements_are_told_apart() {
        assert!(classify("SELECT 1").is_none());
        assert!(matches!(
            classify("COPY (SELECT 1) TO '/tmp/x.csv' STORED AS CSV"),
            Some(Copy::ToFile)
        ));
        match classify("copy s.t (a, b) to stdout") {
            Some(Copy::ToStdout { query, format }) => {
                assert_eq!(query, "SELECT a, b FROM s.t");
                assert_eq!(format, CopyFormat::default());
            }
            _ => panic!("not a COPY TO STDOUT"),
        }
        for refused in [
            "COPY t FROM STDIN",
            "COPY t TO '/etc/passwd' (FORMAT csv)",
            "COPY t TO PROGRAM 'rm -rf /'",
            "COPY t TO STDOUT (FORMAT xml)",
            "COPY t TO STDOUT (FORMAT binary, HEADER)",
            "COPY t TO STDOUT (QUOTE '''')",
        ] {
            assert!(matches!(classify(refused), Some(Copy::Refused(_))), "{refused}");
        }
    }

    #[test]
    fn options_in_both_spellings() {
        // psql's `\copy (select ...) to 'f' csv header`.
        let legacy = format_of("COPY ( SELECT 1 ) TO STDOUT csv header");
        let modern = format_of("COPY (SELECT 1) TO STDOUT (FORMAT csv, HEADER)");
        assert_eq!(legacy, modern);
        assert_eq!(legacy.kind, Kind::Csv);
        assert!(legacy.header);
        let f =
            format_of("COPY t TO STDOUT WITH (FORMAT csv, DELIMITER ';', NULL 'n/a', FORCE_QUOTE (name))");
        assert_eq!((f.delimiter, f.null.as_deref()), (Some(';'), Some("n/a")));
        assert_eq!(f.force_quote, Some(vec!["name".to_string()]));
        assert_eq!(format_of("COPY t TO STDOUT BINARY").kind, Kind::Binary);
    }
}
