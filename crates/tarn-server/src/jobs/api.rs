//! The jobs' HTTP API on `tarn serve`'s HTTP listener, under `/jobs`:
//!
//! | request | what |
//! |---|---|
//! | `GET /jobs` | the jobs (name, schedule, tasks, next due time) and unreadable files |
//! | `POST /jobs/{job}/runs` | queue a run (`{"logical_date": "...", "params": {...}}`, both optional): `201` with the run |
//! | `GET /jobs/{job}/runs?limit=N` | the job's latest runs |
//! | `GET /jobs/{job}/runs/{run_id}` | one run with its tasks and tries |
//! | `GET /jobs/{job}/runs/{run_id}/logs?task=T&try=N` | the run's task logs |
//!
//! Authorized like the rest of the HTTP endpoint: with `[auth.oidc]` every request needs a
//! bearer token (the middleware of `serve`); with a policy, the caller's principal is asked
//! `ViewJob` (listings, history, logs) or `RunJob` (triggering) on the resource
//! `{"job": {"name": JOB}}`, and the decision goes to the audit trail. Errors are JSON
//! `{"error": {"message", "type", "code"}}`, as the Iceberg REST catalog answers.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tarn_auth::Principal;
use tarn_query::governance::Governance;

use super::Jobs;
use super::runner::{next_due, parse_when};

#[derive(Clone)]
struct ApiState {
    jobs: Arc<Jobs>,
    governance: Option<Arc<Governance>>,
}

/// The `/jobs` routes, to merge into the guarded part of the HTTP endpoint.
pub fn router(jobs: Arc<Jobs>, governance: Option<Arc<Governance>>) -> Router {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{job}/runs", get(runs).post(trigger))
        .route("/jobs/{job}/runs/{run_id}", get(run))
        .route("/jobs/{job}/runs/{run_id}/logs", get(logs))
        .with_state(ApiState { jobs, governance })
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

fn internal(e: &anyhow::Error) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        format!("{e:#}"),
    )
}

type Caller = Option<Extension<Arc<Principal>>>;

/// Asks the policy whether the caller may do `operation` on `job`; records the decision.
fn authorize(state: &ApiState, caller: &Caller, operation: &str, job: &str) -> Result<(), Box<Response>> {
    let Some(governance) = &state.governance else {
        return Ok(());
    };
    let Some(Extension(principal)) = caller else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "NotAuthorizedException",
            "a policy is configured: the jobs API serves only callers with an OIDC bearer token (auth.oidc)",
        )));
    };
    decide(governance, principal, operation, job, "")
        .map_err(|e| Box::new(error(StatusCode::FORBIDDEN, "ForbiddenException", e)))
}

/// Asks the policy whether `principal` may do `operation` (`ViewJob`, `RunJob`) on `job`, and
/// records the decision in the audit trail (`via` says where from, e.g. ` (console)`); the
/// refusal's text when it may not. Shared by the jobs API and the console's jobs pages.
pub(crate) fn decide(
    governance: &Governance,
    principal: &tarn_auth::Principal,
    operation: &str,
    job: &str,
    via: &str,
) -> Result<(), String> {
    let decided = governance.policy().check(
        principal,
        operation,
        Some(json!({"job": {"name": job}})),
        &format!("job {job}"),
    );
    governance.record_decision(
        principal,
        vec![format!("{operation} job {job}{via}")],
        Vec::new(),
        decided.as_ref().err().map(ToString::to_string),
    );
    decided.map_err(|e| e.to_string())
}

async fn list(State(state): State<ApiState>, caller: Caller) -> Response {
    if state.governance.is_some() && caller.is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "NotAuthorizedException",
            "a policy is configured: the jobs API serves only callers with an OIDC bearer token (auth.oidc)",
        );
    }
    let (jobs, errors) = state.jobs.load();
    let now = Utc::now();
    let mut out = Vec::new();
    for job in jobs {
        // Only the jobs the caller may see.
        if state.governance.is_some() && authorize(&state, &caller, "ViewJob", &job.name).is_err() {
            continue;
        }
        out.push(json!({
            "name": job.name,
            "description": job.description,
            "schedule": job.schedule_text,
            "next_due": next_due(&job, now),
            "catchup": job.catchup,
            "sla_seconds": job.sla.map(|d| d.as_secs_f64()),
            "tasks": job.tasks.iter().map(|t| json!({
                "id": t.id, "kind": t.kind.name(), "depends_on": t.depends_on, "retries": t.retries,
                "timeout_seconds": t.timeout.as_secs_f64(),
            })).collect::<Vec<_>>(),
        }));
    }
    // Unreadable files name paths: only where no policy restricts callers.
    let errors = if state.governance.is_none() {
        errors
    } else {
        Vec::new()
    };
    Json(json!({"jobs": out, "errors": errors})).into_response()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    logical_date: Option<String>,
    params: Option<serde_json::Map<String, Value>>,
}

async fn trigger(
    State(state): State<ApiState>,
    caller: Caller,
    Path(job): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = authorize(&state, &caller, "RunJob", &job) {
        return *r;
    }
    let body: TriggerBody = match body {
        Some(Json(v)) => match serde_json::from_value(v) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequestException",
                    format!("request body: {e}"),
                );
            }
        },
        None => TriggerBody::default(),
    };
    let spec = match state.jobs.job(&job) {
        Ok(j) => j,
        Err(e) => return error(StatusCode::NOT_FOUND, "NoSuchJobException", format!("{e:#}")),
    };
    let date = match body.logical_date.as_deref().map(parse_when).transpose() {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequestException",
                format!("logical_date: {e:#}"),
            );
        }
    };
    match state
        .jobs
        .trigger(&spec, date, body.params.map(Value::Object), "manual")
        .await
    {
        Ok(run) => (StatusCode::CREATED, Json(json!(run))).into_response(),
        Err(e) => internal(&e),
    }
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn runs(
    State(state): State<ApiState>,
    caller: Caller,
    Path(job): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    if let Err(r) = authorize(&state, &caller, "ViewJob", &job) {
        return *r;
    }
    match state
        .jobs
        .store()
        .runs(Some(&job), q.limit.unwrap_or(50).clamp(1, 1000))
        .await
    {
        Ok(runs) => Json(json!({"runs": runs})).into_response(),
        Err(e) => internal(&e),
    }
}

async fn run(
    State(state): State<ApiState>,
    caller: Caller,
    Path((job, run_id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = authorize(&state, &caller, "ViewJob", &job) {
        return *r;
    }
    let store = state.jobs.store();
    let run = match store.run(&run_id).await {
        Ok(Some(r)) if r.job == job => r,
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                "NoSuchRunException",
                format!("job {job} has no run {run_id}"),
            );
        }
        Err(e) => return internal(&e),
    };
    let (tasks, tries) = match (store.tasks(&run_id).await, store.tries(&run_id).await) {
        (Ok(t), Ok(x)) => (t, x),
        (Err(e), _) | (_, Err(e)) => return internal(&e),
    };
    Json(json!({"run": run, "tasks": tasks, "tries": tries})).into_response()
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    task: Option<String>,
    #[serde(rename = "try")]
    try_number: Option<i64>,
}

async fn logs(
    State(state): State<ApiState>,
    caller: Caller,
    Path((job, run_id)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &caller, "ViewJob", &job) {
        return *r;
    }
    let store = state.jobs.store();
    match store.run(&run_id).await {
        Ok(Some(r)) if r.job == job => {}
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                "NoSuchRunException",
                format!("job {job} has no run {run_id}"),
            );
        }
        Err(e) => return internal(&e),
    }
    match store.logs(&run_id, q.task.as_deref(), q.try_number).await {
        Ok(lines) => Json(json!({"logs": lines})).into_response(),
        Err(e) => internal(&e),
    }
}
