//! The pipeline page (the CDC pipeline's state, lag and rate, as `/cdc/status` reports them,
//! drawn over time by the page while it is open) and the jobs pages (jobs, runs, a run's
//! tasks, tries and logs; trigger and retry), through the jobs' store and the same policy
//! operations as the jobs API (`ViewJob`, `RunJob`).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;
use tarn_auth::Principal;

use super::login::{ApiCaller, Caller};
use super::{Console, Frame, refused, render};

#[derive(Template)]
#[template(path = "console/pipeline.html")]
struct PipelinePage {
    frame: Frame,
    configured: bool,
}

/// `GET /console/pipeline`.
pub(crate) async fn pipeline(State(console): State<Arc<Console>>, Caller(principal): Caller) -> Response {
    render(&PipelinePage {
        frame: Frame::of(&principal, "pipeline"),
        configured: console.cdc.is_some(),
    })
}

/// `GET /console/api/pipeline`: the CDC pipeline's report (what `/cdc/status` serves).
pub(crate) async fn pipeline_status(
    State(console): State<Arc<Console>>,
    ApiCaller(_): ApiCaller,
) -> Response {
    match &console.cdc {
        Some(status) => axum::Json(json!({"cdc": status.report()})).into_response(),
        None => axum::Json(json!({"cdc": null, "message": "no CDC pipeline: cdc.source is not set"}))
            .into_response(),
    }
}

/// Asks the policy, when there is one, whether `principal` may do `operation` on `job`, and
/// records the decision.
fn allowed(console: &Console, principal: &Principal, operation: &str, job: &str) -> Result<(), String> {
    match console.session.governance() {
        Some(governance) => crate::jobs::api::decide(governance, principal, operation, job, " (console)"),
        None => Ok(()),
    }
}

pub(crate) struct JobRow {
    name: String,
    description: String,
    schedule: String,
    tasks: usize,
}

#[derive(Template)]
#[template(path = "console/jobs.html")]
struct JobsPage {
    frame: Frame,
    jobs: Vec<JobRow>,
    available: bool,
}

fn no_jobs(principal: &Principal) -> Response {
    refused(
        principal,
        StatusCode::NOT_FOUND,
        "No scheduler",
        "jobs are served by `tarn serve` (the scheduler's store is not open here)",
    )
}

/// `GET /console/jobs`.
pub(crate) async fn jobs(State(console): State<Arc<Console>>, Caller(principal): Caller) -> Response {
    let Some(jobs) = &console.jobs else {
        return render(&JobsPage {
            frame: Frame::of(&principal, "jobs"),
            jobs: Vec::new(),
            available: false,
        });
    };
    let (specs, _) = jobs.load();
    let rows = specs
        .into_iter()
        .filter(|j| {
            console.session.governance().is_none()
                || allowed(&console, &principal, "ViewJob", &j.name).is_ok()
        })
        .map(|j| JobRow {
            tasks: j.tasks.len(),
            description: j.description.clone().unwrap_or_default(),
            schedule: j.schedule_text.clone().unwrap_or_else(|| "manual".into()),
            name: j.name,
        })
        .collect();
    render(&JobsPage {
        frame: Frame::of(&principal, "jobs"),
        jobs: rows,
        available: true,
    })
}

pub(crate) struct RunRow {
    run_id: String,
    trigger: String,
    state: String,
    logical_date: String,
    started: String,
    finished: String,
    error: String,
}

#[derive(Template)]
#[template(path = "console/job.html")]
struct JobPage {
    frame: Frame,
    job: String,
    runs: Vec<RunRow>,
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// `GET /console/jobs/{job}`: the job's latest runs.
pub(crate) async fn job_runs(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    Path(job): Path<String>,
) -> Response {
    let Some(jobs) = &console.jobs else {
        return no_jobs(&principal);
    };
    if let Err(e) = allowed(&console, &principal, "ViewJob", &job) {
        return refused(&principal, StatusCode::FORBIDDEN, "Access denied", &e);
    }
    let runs = match jobs.store().runs(Some(&job), 50).await {
        Ok(r) => r,
        Err(e) => {
            return refused(
                &principal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read the runs",
                &format!("{e:#}"),
            );
        }
    };
    render(&JobPage {
        frame: Frame::of(&principal, "jobs"),
        job,
        runs: runs
            .into_iter()
            .map(|r| RunRow {
                run_id: r.run_id,
                trigger: r.trigger,
                state: r.state.to_string(),
                logical_date: time(Some(r.logical_date)),
                started: time(r.started_at),
                finished: time(r.finished_at),
                error: r.error.unwrap_or_default(),
            })
            .collect(),
    })
}

/// `POST /console/jobs/{job}/trigger`: queues a manual run, then shows the job's runs.
pub(crate) async fn trigger(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    Path(job): Path<String>,
) -> Response {
    let Some(jobs) = &console.jobs else {
        return no_jobs(&principal);
    };
    if let Err(e) = allowed(&console, &principal, "RunJob", &job) {
        return refused(&principal, StatusCode::FORBIDDEN, "Access denied", &e);
    }
    let spec = match jobs.job(&job) {
        Ok(s) => s,
        Err(e) => {
            return refused(
                &principal,
                StatusCode::NOT_FOUND,
                "No such job",
                &format!("{e:#}"),
            );
        }
    };
    match jobs.trigger(&spec, None, None, "manual").await {
        Ok(_) => Redirect::to(&format!("/console/jobs/{}", urlencode(&job))).into_response(),
        Err(e) => refused(
            &principal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot trigger the job",
            &format!("{e:#}"),
        ),
    }
}

/// Run `run_id` of `job`, or the page that says why not (no such run, the store failed).
async fn run_of(
    jobs: &crate::jobs::Jobs,
    principal: &Principal,
    job: &str,
    run_id: &str,
) -> Result<crate::jobs::store::Run, Response> {
    match jobs.store().run(run_id).await {
        Ok(Some(r)) if r.job == job => Ok(r),
        Ok(_) => Err(refused(
            principal,
            StatusCode::NOT_FOUND,
            "No such run",
            &format!("job {job} has no run {run_id}"),
        )),
        Err(e) => Err(refused(
            principal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot read the run",
            &format!("{e:#}"),
        )),
    }
}

/// `POST /console/jobs/{job}/runs/{run_id}/retry`: a new manual run with the failed run's
/// logical date and parameters.
pub(crate) async fn retry(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    Path((job, run_id)): Path<(String, String)>,
) -> Response {
    let Some(jobs) = &console.jobs else {
        return no_jobs(&principal);
    };
    if let Err(e) = allowed(&console, &principal, "RunJob", &job) {
        return refused(&principal, StatusCode::FORBIDDEN, "Access denied", &e);
    }
    let run = match run_of(jobs, &principal, &job, &run_id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let spec = match jobs.job(&job) {
        Ok(s) => s,
        Err(e) => {
            return refused(
                &principal,
                StatusCode::NOT_FOUND,
                "No such job",
                &format!("{e:#}"),
            );
        }
    };
    match jobs
        .trigger(&spec, Some(run.logical_date), run.params, "manual")
        .await
    {
        Ok(_) => Redirect::to(&format!("/console/jobs/{}", urlencode(&job))).into_response(),
        Err(e) => refused(
            &principal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot retry the run",
            &format!("{e:#}"),
        ),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(crate) struct TaskRow {
    task_id: String,
    state: String,
    try_number: i64,
}

pub(crate) struct TryRow {
    task_id: String,
    try_number: i64,
    state: String,
    started: String,
    finished: String,
    error: String,
}

#[derive(Template)]
#[template(path = "console/run.html")]
struct RunPage {
    frame: Frame,
    job: String,
    run_id: String,
    state: String,
    error: String,
    tasks: Vec<TaskRow>,
    tries: Vec<TryRow>,
    logs: String,
}

/// `GET /console/jobs/{job}/runs/{run_id}`: a run's tasks, tries and logs.
pub(crate) async fn run(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    Path((job, run_id)): Path<(String, String)>,
) -> Response {
    let Some(jobs) = &console.jobs else {
        return no_jobs(&principal);
    };
    if let Err(e) = allowed(&console, &principal, "ViewJob", &job) {
        return refused(&principal, StatusCode::FORBIDDEN, "Access denied", &e);
    }
    let store = jobs.store();
    let run = match run_of(jobs, &principal, &job, &run_id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let (tasks, tries, logs) = match (
        store.tasks(&run_id).await,
        store.tries(&run_id).await,
        store.logs(&run_id, None, None).await,
    ) {
        (Ok(t), Ok(x), Ok(l)) => (t, x, l),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            return refused(
                &principal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read the run",
                &format!("{e:#}"),
            );
        }
    };
    let logs = logs
        .iter()
        .map(|l| {
            format!(
                "{} [{} try {}] {}",
                l.at.format("%H:%M:%S"),
                l.task_id,
                l.try_number,
                l.line
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    render(&RunPage {
        frame: Frame::of(&principal, "jobs"),
        job,
        run_id,
        state: run.state.to_string(),
        error: run.error.unwrap_or_default(),
        tasks: tasks
            .into_iter()
            .map(|t| TaskRow {
                task_id: t.task_id,
                state: t.state.to_string(),
                try_number: t.try_number,
            })
            .collect(),
        tries: tries
            .into_iter()
            .map(|t| TryRow {
                task_id: t.task_id,
                try_number: t.try_number,
                state: t.state.to_string(),
                started: time(Some(t.started_at)),
                finished: time(t.finished_at),
                error: t.error.unwrap_or_default(),
            })
            .collect(),
        logs,
    })
}
