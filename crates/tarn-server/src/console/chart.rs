//! Charts of a query's result — bar, line, area, scatter, pie — as plotly.js figures built
//! with the `plotly` crate's trace types (the browser only hands the figure to
//! `Plotly.newPlot`), and the dashboard of saved charts.
//!
//! A chart takes one column for the x axis (or the pie's labels) and one for the values; the
//! values are cast to numbers, so a non-numeric value column is refused naming the column.

use std::sync::Arc;

use arrow::array::{Array, Float64Array};
use arrow::datatypes::DataType;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use plotly::common::{Fill, Mode, Title};
use plotly::layout::{Axis, AxisType};
use plotly::{Bar, Layout, Pie, Plot, Scatter};
use serde::Deserialize;

use super::login::{ApiCaller, Caller};
use super::sql::{Ran, column_text, run};
use super::store::SavedChart;
use super::{Console, Frame, json_error, render, status_of};

/// The chart kinds.
pub(crate) const KINDS: [&str; 5] = ["bar", "line", "area", "scatter", "pie"];

/// What to draw.
#[derive(Deserialize)]
pub(crate) struct ChartRequest {
    sql: String,
    kind: String,
    /// The x axis / labels column; default: the first.
    #[serde(default)]
    x: String,
    /// The values column; default: the second (or the first when there is one).
    #[serde(default)]
    y: String,
    #[serde(default)]
    title: String,
}

/// Why a chart cannot be drawn.
fn bad(message: String) -> tarn_core::Error {
    tarn_core::Error::new(tarn_core::ErrorKind::InvalidInput, message)
}

/// The plotly figure (JSON) of `kind` over `sql`'s result.
async fn build(
    console: &Console,
    principal: &Arc<tarn_auth::Principal>,
    sql: &str,
    kind: &str,
    x: &str,
    y: &str,
    title: &str,
) -> tarn_core::Result<serde_json::Value> {
    if !KINDS.contains(&kind) {
        return Err(bad(format!(
            "chart kind {kind:?}: expected one of {}",
            KINDS.join(", ")
        )));
    }
    let (schema, batches) = match run(console, principal, sql).await? {
        Ran::Rows(schema, batches) => (schema, batches),
        Ran::Command(tag) => return Err(bad(format!("the statement returned no rows to chart ({tag})"))),
    };
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names.is_empty() {
        return Err(bad("the result has no columns to chart".into()));
    }
    let find = |wanted: &str, default: usize| -> tarn_core::Result<usize> {
        if wanted.is_empty() {
            return Ok(default.min(names.len() - 1));
        }
        names.iter().position(|n| *n == wanted).ok_or_else(|| {
            bad(format!(
                "the result has no column {wanted:?} (it has {})",
                names.join(", ")
            ))
        })
    };
    let (xi, yi) = (find(x, 0)?, find(y, 1)?);
    let labels: Vec<String> = column_text(&batches, xi)
        .map_err(|e| bad(format!("column {}: {e}", names[xi])))?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let mut values: Vec<Option<f64>> = Vec::new();
    for batch in &batches {
        let cast = arrow::compute::cast(batch.column(yi), &DataType::Float64).map_err(|e| {
            bad(format!(
                "column {} ({}) cannot be charted as numbers: {e}",
                names[yi],
                schema.field(yi).data_type()
            ))
        })?;
        let numbers = cast
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("cast to Float64");
        values.extend((0..numbers.len()).map(|i| (!numbers.is_null(i)).then(|| numbers.value(i))));
    }
    let mut plot = Plot::new();
    let series = names[yi].to_string();
    match kind {
        "bar" => plot.add_trace(Bar::new(labels, values).name(&series)),
        "line" => plot.add_trace(Scatter::new(labels, values).mode(Mode::Lines).name(&series)),
        "area" => plot.add_trace(
            Scatter::new(labels, values)
                .mode(Mode::Lines)
                .fill(Fill::ToZeroY)
                .name(&series),
        ),
        "scatter" => plot.add_trace(Scatter::new(labels, values).mode(Mode::Markers).name(&series)),
        _ => plot.add_trace(Pie::new(values.into_iter().map(|v| v.unwrap_or(0.0)).collect()).labels(labels)),
    }
    let title = if title.is_empty() {
        format!("{} by {}", names[yi], names[xi])
    } else {
        title.to_string()
    };
    let mut layout = Layout::new().title(Title::with_text(title));
    // Text on the x axis stays categories (plotly would read "1", "3", "5" as numbers).
    let x_type = schema.field(xi).data_type();
    if kind != "pie"
        && (matches!(
            x_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
        ))
    {
        layout = layout
            .x_axis(Axis::new().type_(AxisType::Category))
            .y_axis(Axis::new().title(Title::with_text(names[yi])));
    }
    plot.set_layout(layout);
    serde_json::from_str(&plot.to_json()).map_err(|e| bad(format!("cannot encode the chart: {e}")))
}

/// `POST /console/api/chart` (`{"sql", "kind", "x", "y", "title"}`): the figure.
pub(crate) async fn figure(
    State(console): State<Arc<Console>>,
    ApiCaller(principal): ApiCaller,
    axum::Json(r): axum::Json<ChartRequest>,
) -> Response {
    match build(&console, &principal, &r.sql, &r.kind, &r.x, &r.y, &r.title).await {
        Ok(figure) => axum::Json(figure).into_response(),
        Err(e) => json_error(status_of(&e), e.to_string()),
    }
}

/// A chart to save.
#[derive(Deserialize)]
pub(crate) struct SaveRequest {
    name: String,
    sql: String,
    /// A chart kind, or `table` for a saved query.
    kind: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    y: String,
    #[serde(default)]
    dashboard: bool,
}

/// `POST /console/api/charts`: saves a chart (or a query, kind `table`) for the caller; `201`
/// with `{"id"}`.
pub(crate) async fn save(
    State(console): State<Arc<Console>>,
    ApiCaller(principal): ApiCaller,
    axum::Json(r): axum::Json<SaveRequest>,
) -> Response {
    let Some(store) = &console.store else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "saved charts need the catalog database of `tarn serve` (not available here)",
        );
    };
    if r.name.trim().is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "a saved chart needs a name");
    }
    if r.kind != "table" && !KINDS.contains(&r.kind.as_str()) {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!(
                "chart kind {:?}: expected table or one of {}",
                r.kind,
                KINDS.join(", ")
            ),
        );
    }
    let chart = SavedChart {
        id: uuid::Uuid::new_v4().simple().to_string(),
        owner: principal.user.clone(),
        name: r.name.trim().to_string(),
        sql: r.sql,
        kind: r.kind,
        x: r.x,
        y: r.y,
        on_dashboard: r.dashboard,
        created_at: chrono::Utc::now().timestamp_millis(),
    };
    match store.save(&chart).await {
        Ok(()) => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({"id": chart.id})),
        )
            .into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// `GET /console/api/charts/{id}/figure`: a saved chart drawn from its query now.
pub(crate) async fn saved_figure(
    State(console): State<Arc<Console>>,
    ApiCaller(principal): ApiCaller,
    Path(id): Path<String>,
) -> Response {
    let Some(store) = &console.store else {
        return json_error(StatusCode::NOT_FOUND, "no saved charts here");
    };
    let chart = match store.get(&principal.user, &id).await {
        Ok(Some(c)) => c,
        Ok(None) => return json_error(StatusCode::NOT_FOUND, format!("no saved chart {id}")),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    match build(
        &console,
        &principal,
        &chart.sql,
        &chart.kind,
        &chart.x,
        &chart.y,
        &chart.name,
    )
    .await
    {
        Ok(figure) => axum::Json(figure).into_response(),
        Err(e) => json_error(status_of(&e), e.to_string()),
    }
}

/// `POST /console/charts/{id}/delete`.
pub(crate) async fn delete(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Response {
    if let Some(store) = &console.store
        && let Err(e) = store.delete(&principal.user, &id).await
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response();
    }
    Redirect::to("/console/dashboard").into_response()
}

#[derive(Template)]
#[template(path = "console/dashboard.html")]
struct Dashboard {
    frame: Frame,
    charts: Vec<SavedChart>,
    available: bool,
}

/// `GET /console/dashboard`: the caller's charts saved for the dashboard, each drawn by the
/// page's script from its figure.
pub(crate) async fn dashboard(State(console): State<Arc<Console>>, Caller(principal): Caller) -> Response {
    let charts = match &console.store {
        Some(store) => match store.list(&principal.user).await {
            Ok(c) => c
                .into_iter()
                .filter(|c| c.on_dashboard && c.kind != "table")
                .collect(),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
        },
        None => Vec::new(),
    };
    render(&Dashboard {
        frame: Frame::of(&principal, "dashboard"),
        charts,
        available: console.store.is_some(),
    })
}
