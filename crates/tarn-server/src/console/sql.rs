//! The SQL editor: statements run for the logged-in principal through the path a Postgres
//! client's take — the session's policy (authorization, column masks, row filters, audit),
//! the workload's admission queue and per-role limits, `statement_timeout` (the principal's
//! roles' or `query.statement_timeout`), listed in `tarn_stat_activity` meanwhile — on the
//! query runtime. Results come back as JSON for the editor's table (the first
//! `console.max_rows` rows) or whole as CSV or Parquet downloads.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use askama::Template;
use axum::extract::{Form, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tarn_auth::Principal;
use tarn_core::{Error, ErrorKind};
use tarn_query::Output;
use tokio_util::sync::CancellationToken;

use super::login::{ApiCaller, Caller};
use super::{Console, Frame, json_error, render, status_of};

/// The connection id statements of the console are listed under in `tarn_stat_activity`.
const CONSOLE_PID: i32 = 0;

/// What a statement produced.
pub(crate) enum Ran {
    /// Rows.
    Rows(SchemaRef, Vec<RecordBatch>),
    /// A command's tag.
    Command(String),
}

/// Runs `sql` (one statement) for `principal`; see the module doc.
pub(crate) async fn run(console: &Console, principal: &Arc<Principal>, sql: &str) -> tarn_core::Result<Ran> {
    let outcome = run_admitted(console, principal, sql).await;
    let label = if outcome.is_ok() { "ok" } else { "error" };
    metrics::counter!("tarn_console_statements_total", "outcome" => label).increment(1);
    outcome
}

async fn run_admitted(console: &Console, principal: &Arc<Principal>, sql: &str) -> tarn_core::Result<Ran> {
    let sql = sql.trim().trim_end_matches(';').trim();
    if sql.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "no statement to run"));
    }
    let mut roles = vec![principal.user.clone()];
    roles.extend(principal.groups.iter().cloned());
    let token = CancellationToken::new();
    let statement = console.workload.begin(
        CONSOLE_PID,
        &principal.user,
        sql,
        console.workload.default_timeout(&roles),
        token.clone(),
    );
    // Listed until this function returns, however it returns.
    let _listed = tarn_query::workload::StatementGuard(statement.clone());
    let admission = console.workload.admit(&statement, &roles).await?;
    let session = console.session.for_principal((**principal).clone());
    let owned = sql.to_string();
    let work = console.query_runtime.spawn(async move {
        match session.run_sql(&owned).await? {
            Output::Rows(stream) => {
                let schema = stream.schema();
                let batches = datafusion::physical_plan::common::collect(stream)
                    .await
                    .map_err(tarn_query::from_df_error)?;
                Ok(Ran::Rows(schema, batches))
            }
            Output::Command { tag, .. } => Ok(Ran::Command(tag)),
        }
    });
    let abort = work.abort_handle();
    let result = tokio::select! {
        done = work => done.map_err(|e| Error::new(ErrorKind::Internal, format!("the statement's task failed: {e}")))?,
        reason = statement.stopped() => {
            abort.abort();
            Err(tarn_query::workload::stop_error(reason))
        }
    };
    drop(admission);
    token.cancel();
    result
}

#[derive(Template)]
#[template(path = "console/sql.html")]
struct Editor {
    frame: Frame,
    sql: String,
    saved: Vec<super::store::SavedChart>,
}

#[derive(Deserialize)]
pub(crate) struct EditorQuery {
    sql: Option<String>,
}

/// `GET /console/sql?sql=...`.
pub(crate) async fn editor(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    axum::extract::Query(q): axum::extract::Query<EditorQuery>,
) -> Response {
    let saved = match &console.store {
        Some(store) => store.list(&principal.user).await.unwrap_or_default(),
        None => Vec::new(),
    };
    render(&Editor {
        frame: Frame::of(&principal, "sql"),
        sql: q.sql.unwrap_or_else(|| "SELECT 1 AS one".into()),
        saved,
    })
}

/// A statement from the editor.
#[derive(Deserialize)]
pub(crate) struct Statement {
    pub(crate) sql: String,
}

/// A column's values as text, as psql shows them (`NULL` as none).
pub(crate) fn column_text(
    batches: &[RecordBatch],
    column: usize,
) -> Result<Vec<Option<String>>, arrow::error::ArrowError> {
    let options = FormatOptions::default();
    let mut out = Vec::new();
    for batch in batches {
        let array = batch.column(column);
        let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;
        for row in 0..batch.num_rows() {
            out.push((!array.is_null(row)).then(|| formatter.value(row).to_string()));
        }
    }
    Ok(out)
}

/// `POST /console/api/query` (`{"sql"}`): `{"columns", "types", "rows", "row_count",
/// "truncated", "elapsed_ms"}` or `{"command"}`; `{"error"}` with 400/403/503/500.
pub(crate) async fn query(
    State(console): State<Arc<Console>>,
    ApiCaller(principal): ApiCaller,
    axum::Json(statement): axum::Json<Statement>,
) -> Response {
    let started = Instant::now();
    match run(&console, &principal, &statement.sql).await {
        Ok(Ran::Command(tag)) => axum::Json(serde_json::json!({
            "command": tag,
            "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
        }))
        .into_response(),
        Ok(Ran::Rows(schema, batches)) => {
            let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let shown = total.min(console.max_rows);
            let mut columns = Vec::new();
            for i in 0..schema.fields().len() {
                match column_text(&batches, i) {
                    Ok(mut values) => {
                        values.truncate(shown);
                        columns.push(values);
                    }
                    Err(e) => {
                        return json_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("cannot show the result: {e}"),
                        );
                    }
                }
            }
            let rows: Vec<Vec<Option<String>>> = (0..shown)
                .map(|r| columns.iter().map(|c| c[r].clone()).collect())
                .collect();
            axum::Json(serde_json::json!({
                "columns": schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
                "types": schema.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>(),
                "rows": rows,
                "row_count": total,
                "truncated": total > shown,
                "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
            }))
            .into_response()
        }
        Err(e) => json_error(status_of(&e), e.to_string()),
    }
}

/// A download of a result.
#[derive(Deserialize)]
pub(crate) struct Download {
    sql: String,
    format: String,
}

/// `POST /console/download` (form `sql`, `format` = `csv` | `parquet`): every row of the
/// result as an attachment.
pub(crate) async fn download(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    Form(form): Form<Download>,
) -> Response {
    let (schema, batches) = match run(&console, &principal, &form.sql).await {
        Ok(Ran::Rows(schema, batches)) => (schema, batches),
        Ok(Ran::Command(tag)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the statement returned no rows ({tag})"),
            )
                .into_response();
        }
        Err(e) => return (status_of(&e), e.to_string()).into_response(),
    };
    let encoded = match form.format.as_str() {
        "csv" => encode_csv(&batches).map(|b| (b, "text/csv; charset=utf-8", "csv")),
        "parquet" => {
            encode_parquet(&schema, &batches).map(|b| (b, "application/vnd.apache.parquet", "parquet"))
        }
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("download format {other:?}: expected csv or parquet"),
            )
                .into_response();
        }
    };
    match encoded {
        Ok((bytes, kind, extension)) => (
            [
                (header::CONTENT_TYPE, kind.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"result.{extension}\""),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the result as {}: {e}", form.format),
        )
            .into_response(),
    }
}

fn encode_csv(batches: &[RecordBatch]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
        for batch in batches {
            writer.write(batch)?;
        }
    }
    Ok(out)
}

fn encode_parquet(schema: &SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), None)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(out)
}
