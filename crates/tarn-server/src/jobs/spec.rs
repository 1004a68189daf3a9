//! Job files: one job (a DAG of tasks) per `*.toml` file in `jobs.dir`, parsed and checked
//! here — unknown keys, unknown task kinds, missing or cyclic dependencies and bad cron
//! patterns are errors naming the file and the task.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// A job: tasks with dependencies, an optional cron schedule, and how its runs behave.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's name (the `name` key, else the file's stem).
    pub name: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// What the job is for.
    pub description: Option<String>,
    /// The cron pattern (UTC; 5 fields, or 6 with seconds first), when scheduled.
    pub schedule: Option<croner::Cron>,
    /// The pattern as written.
    pub schedule_text: Option<String>,
    /// The first interval's start, for catch-up.
    pub start: Option<DateTime<Utc>>,
    /// Whether missed intervals (since `start`, or since the last scheduled run) are run.
    pub catchup: bool,
    /// Who the job's `sql`, `load` and `export` tasks run as under the policy.
    pub principal: Option<String>,
    /// The principal's groups.
    pub groups: Vec<String>,
    /// Runs of this job at once.
    pub max_active_runs: usize,
    /// Tasks of one run at once.
    pub max_active_tasks: usize,
    /// A run must finish within this of its scheduled time (the interval's end), else an SLA
    /// miss is alerted.
    pub sla: Option<Duration>,
    /// Parameters, templated as `{{ params.NAME }}`.
    pub params: BTreeMap<String, String>,
    /// The tasks, in file order.
    pub tasks: Vec<Task>,
}

/// One task of a job.
#[derive(Debug, Clone)]
pub struct Task {
    /// Unique within the job.
    pub id: String,
    /// Tasks that must succeed first.
    pub depends_on: Vec<String>,
    /// Retries after a failed try.
    pub retries: u32,
    /// The wait before the first retry; doubled for each further one.
    pub retry_delay: Duration,
    /// The longest wait between tries.
    pub max_retry_delay: Duration,
    /// A try that takes longer fails.
    pub timeout: Duration,
    /// What it does.
    pub kind: TaskKind,
}

impl Task {
    /// The wait before try `next_try` (2, 3, ...): exponential backoff, capped.
    pub fn backoff(&self, next_try: u32) -> Duration {
        let exp = next_try.saturating_sub(2).min(30);
        self.retry_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_retry_delay)
    }
}

/// What a task does. Text fields are templates (`{{ ds }}`, `{{ params.x }}`, docs/jobs.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TaskKind {
    /// SQL statements through the governed session, as the job's principal.
    Sql {
        /// Statements separated by `;`.
        sql: String,
    },
    /// Files into a table, as `tarn load`.
    Load {
        /// Local paths or s3:// URLs; globs allowed.
        paths: Vec<String>,
        /// NAMESPACE.TABLE.
        table: String,
        /// parquet, csv or json; from the extension when absent.
        format: Option<String>,
        /// CSV delimiter.
        delimiter: Option<char>,
        /// CSV files have a header line (default true).
        header: Option<bool>,
        /// Partition fields of a new table.
        #[serde(default)]
        partition_by: Vec<String>,
    },
    /// Table maintenance, as `tarn maintain`.
    Maintain {
        /// Tables or namespaces; every table when empty.
        #[serde(default)]
        tables: Vec<String>,
        /// Compact (with `expire` and `orphans`: all three when none is set).
        #[serde(default)]
        compact: bool,
        /// Expire snapshots.
        #[serde(default)]
        expire: bool,
        /// Remove orphan files.
        #[serde(default)]
        orphans: bool,
    },
    /// A query's result as Parquet files at `path` (relative to the warehouse, or a URL).
    Export {
        /// One SELECT.
        sql: String,
        /// Where: a path under the warehouse, or a file:// or s3:// URL.
        path: String,
    },
    /// An HTTP request; a status outside 200-299 (or `expect_status`) fails the task.
    Http {
        /// The URL.
        url: String,
        /// GET, POST, PUT, DELETE, ...
        #[serde(default = "default_method")]
        method: String,
        /// Request body.
        body: Option<String>,
        /// Request headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Statuses that count as success.
        #[serde(default)]
        expect_status: Vec<u16>,
    },
    /// A command run by `sh -c` in the job file's directory.
    Shell {
        /// The command line.
        command: String,
        /// Extra environment variables.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// The working directory (relative to the job file's directory).
        cwd: Option<String>,
    },
    /// An Airbyte source connector's sync: `tarn ingest airbyte`.
    Airbyte {
        /// The connector command (e.g. `source-faker`).
        connector: String,
        /// The connector's config file.
        config: String,
        /// The configured catalog file.
        catalog: String,
        /// The namespace the streams land in.
        namespace: String,
    },
    /// A check of a Kafka ingest pipeline (`tarn ingest kafka`, `cdc.source_kind = "kafka"`):
    /// fails when its lake tables are more than `max_lag` records behind the topics' ends, or
    /// when the oldest record not yet in the lake is older than `max_age`.
    IngestKafka {
        /// The pipeline whose tables are checked (`cdc.pipeline`); default this process's.
        pipeline: Option<String>,
        /// The lake namespace of its tables (`cdc.namespace`); default this process's.
        namespace: Option<String>,
        /// Bootstrap servers (`cdc.kafka.brokers`); default this process's.
        brokers: Option<String>,
        /// Topics, names or one `^regex` (`cdc.kafka.topics`); default this process's.
        #[serde(default)]
        topics: Vec<String>,
        /// The consumer group whose committed offsets stand in for a table that names none
        /// (`cdc.kafka.group`); default this process's. Nothing is committed to it.
        group: Option<String>,
        /// Most records, over all partitions, not yet in the lake; default 0 (caught up)
        /// unless `max_age` is set.
        max_lag: Option<u64>,
        /// How old (by its Kafka timestamp) the oldest record not yet in the lake may be.
        max_age: Option<String>,
    },
}

fn default_method() -> String {
    "GET".into()
}

impl TaskKind {
    /// The kind's name as written in job files.
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Sql { .. } => "sql",
            TaskKind::Load { .. } => "load",
            TaskKind::Maintain { .. } => "maintain",
            TaskKind::Export { .. } => "export",
            TaskKind::Http { .. } => "http",
            TaskKind::Shell { .. } => "shell",
            TaskKind::Airbyte { .. } => "airbyte",
            TaskKind::IngestKafka { .. } => "ingest-kafka",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: Option<String>,
    description: Option<String>,
    schedule: Option<String>,
    start: Option<String>,
    #[serde(default)]
    catchup: bool,
    principal: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    max_active_runs: Option<usize>,
    max_active_tasks: Option<usize>,
    sla: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    /// Defaults of every task.
    retries: Option<u32>,
    retry_delay: Option<String>,
    max_retry_delay: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    tasks: Vec<toml::Table>,
}

/// The keys every task has, beside its kind's.
const COMMON_KEYS: [&str; 6] = [
    "id",
    "depends_on",
    "retries",
    "retry_delay",
    "max_retry_delay",
    "timeout",
];

fn duration(what: &str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value.trim())
        .map_err(|e| anyhow!("{what}: expected a duration like 30s or 5m, got {value:?} ({e})"))
}

/// Parses a date or time: RFC 3339, `YYYY-MM-DDTHH:MM:SS` (UTC) or `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(value: &str) -> Result<DateTime<Utc>> {
    let v = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S") {
        return Ok(t.and_utc());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    bail!("expected a date (2026-12-01) or an RFC 3339 time (2026-12-01T06:00:00Z), got {value:?}")
}

/// Parses a cron pattern (5 fields, or 6 with seconds first; `@daily` and the like).
pub fn parse_cron(pattern: &str) -> Result<croner::Cron> {
    croner::Cron::from_str(pattern).map_err(|e| anyhow!("schedule {pattern:?} is not a cron pattern: {e}"))
}

impl Job {
    /// Parses job file `file` with contents `text`.
    pub fn parse(file: &Path, text: &str) -> Result<Job> {
        let at = file.display();
        let raw: JobFile = toml::from_str(text).map_err(|e| anyhow!("{at}: {}", e.to_string().trim()))?;
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let name = raw.name.unwrap_or(stem);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("{at}: job name {name:?}: expected letters, digits, `_` or `-`");
        }
        let schedule = raw
            .schedule
            .as_deref()
            .map(parse_cron)
            .transpose()
            .with_context(|| format!("{at}: key `schedule`"))?;
        let start = raw
            .start
            .as_deref()
            .map(parse_time)
            .transpose()
            .with_context(|| format!("{at}: key `start`"))?;
        if raw.catchup && (schedule.is_none() || start.is_none()) {
            bail!("{at}: `catchup = true` needs `schedule` and `start` (the first interval to run)");
        }
        let sla = raw
            .sla
            .as_deref()
            .map(|s| duration(&format!("{at}: key `sla`"), s))
            .transpose()?;
        let default_delay = duration(
            &format!("{at}: key `retry_delay`"),
            raw.retry_delay.as_deref().unwrap_or("30s"),
        )?;
        let default_max_delay = duration(
            &format!("{at}: key `max_retry_delay`"),
            raw.max_retry_delay.as_deref().unwrap_or("10m"),
        )?;
        let default_timeout = duration(
            &format!("{at}: key `timeout`"),
            raw.timeout.as_deref().unwrap_or("1h"),
        )?;
        let mut params = BTreeMap::new();
        for (k, v) in raw.params {
            let text = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            params.insert(k, text);
        }
        let mut tasks = Vec::new();
        let mut seen = HashSet::new();
        for (i, mut table) in raw.tasks.into_iter().enumerate() {
            let id = match table.remove("id") {
                Some(toml::Value::String(s)) if !s.is_empty() => s,
                _ => bail!("{at}: task {} has no `id` (a non-empty string)", i + 1),
            };
            let here = format!("{at}: task `{id}`");
            if !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bail!("{here}: id: expected letters, digits, `_` or `-`");
            }
            if !seen.insert(id.clone()) {
                bail!("{here}: a second task with this id");
            }
            let depends_on = match table.remove("depends_on") {
                None => Vec::new(),
                Some(toml::Value::Array(items)) => items
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s),
                        other => Err(anyhow!("{here}: depends_on: expected task ids, got {other}")),
                    })
                    .collect::<Result<_>>()?,
                Some(other) => bail!("{here}: depends_on: expected a list of task ids, got {other}"),
            };
            let take_str = |table: &mut toml::Table, key: &str| -> Result<Option<String>> {
                match table.remove(key) {
                    None => Ok(None),
                    Some(toml::Value::String(s)) => Ok(Some(s)),
                    Some(other) => bail!("{here}: {key}: expected a string, got {other}"),
                }
            };
            let retries = match table.remove("retries") {
                None => raw.retries.unwrap_or(0),
                Some(toml::Value::Integer(n)) if (0..=100).contains(&n) => n as u32,
                Some(other) => bail!("{here}: retries: expected a number 0-100, got {other}"),
            };
            let retry_delay = take_str(&mut table, "retry_delay")?
                .map(|s| duration(&format!("{here}: retry_delay"), &s))
                .transpose()?
                .unwrap_or(default_delay);
            let max_retry_delay = take_str(&mut table, "max_retry_delay")?
                .map(|s| duration(&format!("{here}: max_retry_delay"), &s))
                .transpose()?
                .unwrap_or(default_max_delay);
            let timeout = take_str(&mut table, "timeout")?
                .map(|s| duration(&format!("{here}: timeout"), &s))
                .transpose()?
                .unwrap_or(default_timeout);
            debug_assert!(COMMON_KEYS.iter().all(|k| !table.contains_key(*k)));
            if !table.contains_key("kind") {
                bail!(
                    "{here}: no `kind` (sql, load, maintain, export, http, shell, airbyte or ingest-kafka)"
                );
            }
            let kind = TaskKind::deserialize(toml::Value::Table(table))
                .map_err(|e| anyhow!("{here}: {}", e.to_string().trim()))?;
            if let TaskKind::IngestKafka {
                max_age: Some(age), ..
            } = &kind
            {
                duration(&format!("{here}: max_age"), age)?;
            }
            tasks.push(Task {
                id,
                depends_on,
                retries,
                retry_delay,
                max_retry_delay,
                timeout,
                kind,
            });
        }
        if tasks.is_empty() {
            bail!("{at}: no tasks: add [[tasks]] tables");
        }
        for t in &tasks {
            for d in &t.depends_on {
                if !seen.contains(d) {
                    bail!(
                        "{at}: task `{}` depends on `{d}`, which is not a task of the job",
                        t.id
                    );
                }
            }
        }
        let job = Job {
            name,
            file: file.to_path_buf(),
            description: raw.description,
            schedule,
            schedule_text: raw.schedule,
            start,
            catchup: raw.catchup,
            principal: raw.principal,
            groups: raw.groups,
            max_active_runs: raw.max_active_runs.unwrap_or(1).max(1),
            max_active_tasks: raw.max_active_tasks.unwrap_or(4).max(1),
            sla,
            params,
            tasks,
        };
        if let Some(cycle) = job.cycle() {
            bail!("{at}: the dependencies form a cycle: {}", cycle.join(" -> "));
        }
        Ok(job)
    }

    /// A dependency cycle, when there is one.
    fn cycle(&self) -> Option<Vec<String>> {
        let deps: HashMap<&str, &[String]> = self
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.depends_on.as_slice()))
            .collect();
        // 0 unvisited, 1 on the path, 2 done.
        let mut mark: HashMap<&str, u8> = HashMap::new();
        fn visit<'a>(
            id: &'a str,
            deps: &HashMap<&'a str, &'a [String]>,
            mark: &mut HashMap<&'a str, u8>,
            path: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            match mark.get(id) {
                Some(2) => return None,
                Some(1) => {
                    let from = path.iter().position(|p| *p == id).unwrap_or(0);
                    let mut cycle: Vec<String> = path[from..].iter().map(ToString::to_string).collect();
                    cycle.push(id.to_string());
                    return Some(cycle);
                }
                _ => {}
            }
            mark.insert(id, 1);
            path.push(id);
            for d in deps.get(id).copied().unwrap_or_default() {
                if let Some(c) = visit(d.as_str(), deps, mark, path) {
                    return Some(c);
                }
            }
            path.pop();
            mark.insert(id, 2);
            None
        }
        for t in &self.tasks {
            let mut path = Vec::new();
            if let Some(c) = visit(t.id.as_str(), &deps, &mut mark, &mut path) {
                return Some(c);
            }
        }
        None
    }

    /// The task `id`.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// The next time the schedule fires after `t`.
    pub fn next_fire(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.as_ref()?.find_next_occurrence(&t, false).ok()
    }

    /// The last time the schedule fired at or before `t`.
    pub fn previous_fire(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.as_ref()?.find_previous_occurrence(&t, true).ok()
    }
}

/// The jobs of directory `dir`, and the files that failed to parse with their errors. A
/// missing directory holds no jobs.
pub fn load_dir(dir: &Path) -> (Vec<Job>, Vec<String>) {
    let mut jobs: Vec<Job> = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (jobs, errors),
        Err(e) => {
            errors.push(format!("cannot read the jobs directory {}: {e}", dir.display()));
            return (jobs, errors);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))
            .and_then(|text| Job::parse(&file, &text));
        match parsed {
            Ok(job) => {
                if let Some(other) = jobs.iter().find(|j| j.name == job.name) {
                    errors.push(format!(
                        "{}: job {:?} is already defined in {}",
                        file.display(),
                        job.name,
                        other.file.display()
                    ));
                } else {
                    jobs.push(job);
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (jobs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Job> {
        Job::parse(Path::new("jobs/daily.toml"), text)
    }

    #[test]
    fn a_job_file_parses_with_defaults() {
        let job = parse(
            r#"
            schedule = "0 6 * * *"
            retries = 2
            [params]
            region = "eu"
            [[tasks]]
            id = "stage"
            kind = "sql"
            sql = "SELECT 1"
            [[tasks]]
            id = "load"
            kind = "load"
            paths = ["x.csv"]
            table = "a.b"
            depends_on = ["stage"]
            retries = 5
            "#,
        )
        .unwrap();
        assert_eq!(job.name, "daily");
        assert_eq!(job.tasks[0].retries, 2);
        assert_eq!(job.tasks[1].retries, 5);
        assert_eq!(job.params["region"], "eu");
        let t = parse_time("2026-12-01T06:00:00Z").unwrap();
        assert_eq!(
            job.next_fire(t).unwrap(),
            parse_time("2026-12-02T06:00:00Z").unwrap()
        );
        assert_eq!(job.previous_fire(t).unwrap(), t);
    }

    #[test]
    fn bad_job_files_name_the_file_task_and_key() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        let e = err("[[tasks]]\nid = \"a\"\nkind = \"sql\"\nsql = \"x\"\ntabel = 1\n");
        assert!(
            e.contains("jobs/daily.toml: task `a`") && e.contains("tabel"),
            "{e}"
        );
        let e = err("[[tasks]]\nid = \"a\"\nkind = \"spark\"\n");
        assert!(e.contains("task `a`") && e.contains("spark"), "{e}");
        let e = err("[[tasks]]\nid = \"a\"\nkind = \"sql\"\nsql = \"x\"\ndepends_on = [\"b\"]\n");
        assert!(e.contains("depends on `b`"), "{e}");
        let e = err(
            "[[tasks]]\nid = \"a\"\nkind = \"sql\"\nsql = \"x\"\ndepends_on = [\"b\"]\n[[tasks]]\nid = \"b\"\nkind = \"sql\"\nsql = \"x\"\ndepends_on = [\"a\"]\n",
        );
        assert!(e.contains("cycle: a -> b -> a"), "{e}");
        let e = err("schedule = \"every day\"\n[[tasks]]\nid = \"a\"\nkind = \"sql\"\nsql = \"x\"\n");
        assert!(e.contains("key `schedule`"), "{e}");
        let e = err("shedule = \"* * * * *\"\n");
        assert!(e.contains("shedule"), "{e}");
    }

    #[test]
    fn every_task_kind_parses() {
        let job = parse(
            r#"
            [[tasks]]
            id = "sync"
            kind = "airbyte"
            connector = "source-faker"
            config = "faker/config.json"
            catalog = "faker/catalog.json"
            namespace = "faker"
            [[tasks]]
            id = "export"
            kind = "export"
            sql = "SELECT 1"
            path = "exports/{{ ds }}"
            [[tasks]]
            id = "ping"
            kind = "http"
            url = "http://127.0.0.1:1/x"
            [[tasks]]
            id = "m"
            kind = "maintain"
            "#,
        )
        .unwrap();
        let kinds: Vec<&str> = job.tasks.iter().map(|t| t.kind.name()).collect();
        assert_eq!(kinds, ["airbyte", "export", "http", "maintain"]);
        match &job.tasks[0].kind {
            TaskKind::Airbyte {
                connector, namespace, ..
            } => {
                assert_eq!(
                    (connector.as_str(), namespace.as_str()),
                    ("source-faker", "faker")
                );
            }
            other => panic!("{other:?}"),
        }
        match &job.tasks[2].kind {
            TaskKind::Http { method, .. } => assert_eq!(method, "GET"),
            other => panic!("{other:?}"),
        }
        let e = format!(
            "{:#}",
            parse("[[tasks]]\nid = \"s\"\nkind = \"airbyte\"\nconnector = \"x\"\n").unwrap_err()
        );
        assert!(e.contains("task `s`") && e.contains("config"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let job = parse(
            "retry_delay = \"1s\"\nmax_retry_delay = \"5s\"\n[[tasks]]\nid = \"a\"\nkind = \"shell\"\ncommand = \"true\"\n",
        )
        .unwrap();
        let t = &job.tasks[0];
        let secs: Vec<u64> = (2..=6).map(|n| t.backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 5, 5]);
    }
}
