//! The Airbyte protocol as a source connector speaks it: the connector is a program run once
//! per command (`spec`, `check --config F`, `discover --config F`, `read --config F --catalog C
//! [--state S]`) that writes one JSON message per line on its standard output.
//!
//! [`Connector::run`] starts such a command and yields its messages in order
//! ([`MessageStream`]). A line that does not start with `{` is not a message: it is logged and
//! skipped, as the Airbyte platform does with stray prints of a connector's libraries. A line
//! that starts with `{` but is not valid JSON, or a message without a known `type`, is an error
//! naming the line. The connector's standard error is logged line by line and its last lines
//! are kept for the error that a non-zero exit becomes.
//!
//! Messages are kept as `serde_json::Value`s with typed accessors rather than a full set of
//! serde structs: records carry arbitrary data, states are opaque to tarn (stored and passed
//! back unchanged), and connectors of different protocol versions add fields freely.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How many of the connector's last standard-error lines an error quotes.
const STDERR_TAIL: usize = 20;

/// A source connector: the program and the words before the Airbyte command.
#[derive(Debug, Clone)]
pub struct Connector {
    program: String,
    args: Vec<String>,
}

impl Connector {
    /// The connector `command`: words separated by whitespace (no shell quoting), e.g.
    /// `source-faker` or `docker run --rm -i -v /tmp:/tmp airbyte/source-faker:6.2`.
    pub fn parse(command: &str) -> Result<Self> {
        let mut words = command.split_whitespace().map(str::to_string);
        let program = words.next().ok_or_else(|| {
            anyhow!("--connector is empty: give the connector's command, e.g. source-faker")
        })?;
        Ok(Self {
            program,
            args: words.collect(),
        })
    }

    /// The command as given, for messages.
    pub fn name(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts `command` (`spec`, `check`, ...) with `args` and returns its messages.
    pub fn run(&self, command: &str, args: &[(&str, &Path)]) -> Result<MessageStream> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).arg(command);
        for (flag, path) in args {
            cmd.arg(flag).arg(path);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the connector {:?} ({command})", self.name()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_task = {
            let tail = tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "tarn::airbyte::connector", "{line}");
                    let mut tail = tail.lock().expect("stderr tail lock");
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
        };
        Ok(MessageStream {
            command: command.to_string(),
            connector: self.name(),
            child,
            lines: BufReader::with_capacity(1 << 20, stdout).lines(),
            line_no: 0,
            stderr_tail: tail,
            stderr_task: Some(stderr_task),
        })
    }

    /// Runs `command` to its end and returns its messages of type `wanted` (logging the
    /// others); fails on a non-zero exit or an error trace.
    pub async fn collect(&self, command: &str, args: &[(&str, &Path)], wanted: &str) -> Result<Vec<Value>> {
        let mut stream = self.run(command, args)?;
        let mut out = Vec::new();
        while let Some(message) = stream.next().await? {
            let kind = message_type(&message);
            if kind == wanted {
                out.push(message);
            } else if kind == "TRACE" && trace_error(&message).is_some() {
                let (stream_name, text) = trace_error(&message).unwrap_or_default();
                stream.kill().await;
                bail!(
                    "the connector {:?} failed ({command}{}): {text}",
                    self.name(),
                    stream_name.map(|s| format!(", stream {s}")).unwrap_or_default()
                );
            } else {
                log_message(&message);
            }
        }
        stream.finish().await?;
        Ok(out)
    }
}

/// The messages of one running connector command.
pub struct MessageStream {
    command: String,
    connector: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    line_no: u64,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

impl MessageStream {
    /// The next message; `None` at the end of the output (then call [`Self::finish`]).
    pub async fn next(&mut self) -> Result<Option<Value>> {
        loop {
            let line =
                self.lines.next_line().await.with_context(|| {
                    format!("cannot read the output of the connector {:?}", self.connector)
                })?;
            let Some(line) = line else { return Ok(None) };
            self.line_no += 1;
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if !trimmed.starts_with('{') {
                tracing::warn!(
                    line = self.line_no,
                    "the connector printed a line that is not an Airbyte message: {trimmed}"
                );
                continue;
            }
            let message: Value = serde_json::from_str(trimmed).map_err(|e| {
                anyhow!(
                    "the connector {:?} ({}) wrote a malformed message at line {} of its output: {e}: {}",
                    self.connector,
                    self.command,
                    self.line_no,
                    truncate(trimmed, 300)
                )
            })?;
            match message.get("type").and_then(Value::as_str) {
                Some(
                    "RECORD" | "STATE" | "LOG" | "TRACE" | "CATALOG" | "SPEC" | "CONNECTION_STATUS"
                    | "CONTROL",
                ) => return Ok(Some(message)),
                other => bail!(
                    "the connector {:?} ({}) wrote a message of unknown type {} at line {} of its output: {}",
                    self.connector,
                    self.command,
                    other.map_or("(none)".to_string(), |t| format!("{t:?}")),
                    self.line_no,
                    truncate(trimmed, 300)
                ),
            }
        }
    }

    /// Waits for the connector to exit; a non-zero exit is an error quoting its standard error.
    pub async fn finish(mut self) -> Result<()> {
        let status = self
            .child
            .wait()
            .await
            .with_context(|| format!("cannot wait for the connector {:?}", self.connector))?;
        if let Some(task) = self.stderr_task.take() {
            let _ = task.await;
        }
        if status.success() {
            return Ok(());
        }
        let tail: Vec<String> = self
            .stderr_tail
            .lock()
            .expect("stderr tail lock")
            .iter()
            .cloned()
            .collect();
        bail!(
            "the connector {:?} ({}) exited with {status}{}",
            self.connector,
            self.command,
            if tail.is_empty() {
                String::new()
            } else {
                format!("; its last output on stderr:\n{}", tail.join("\n"))
            }
        )
    }

    /// Stops the connector (after an error on tarn's side).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A message's `type`.
pub fn message_type(message: &Value) -> &str {
    message.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// A stream descriptor's name (`{"name": ..., "namespace": ...}`).
pub fn descriptor_name(descriptor: &Value) -> Option<String> {
    descriptor.get("name").and_then(Value::as_str).map(str::to_string)
}

/// For an error trace: the stream it names (if any) and its message.
pub fn trace_error(message: &Value) -> Option<(Option<String>, String)> {
    let trace = message.get("trace")?;
    if trace.get("type").and_then(Value::as_str) != Some("ERROR") {
        return None;
    }
    let error = trace.get("error")?;
    let text = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("(no message)")
        .to_string();
    let internal = error.get("internal_message").and_then(Value::as_str);
    let text = match internal {
        Some(internal) if !internal.is_empty() && internal != text => format!("{text} ({internal})"),
        _ => text,
    };
    let stream = error.get("stream_descriptor").and_then(descriptor_name);
    Some((stream, text))
}

/// Logs a LOG message at its level, a TRACE (status, estimate) at info, others at debug.
pub fn log_message(message: &Value) {
    match message_type(message) {
        "LOG" => {
            let log = message.get("log").cloned().unwrap_or_default();
            let text = log.get("message").and_then(Value::as_str).unwrap_or_default();
            match log.get("level").and_then(Value::as_str).unwrap_or("INFO") {
                "FATAL" | "ERROR" => tracing::error!(target: "tarn::airbyte::connector", "{text}"),
                "WARN" => tracing::warn!(target: "tarn::airbyte::connector", "{text}"),
                "DEBUG" | "TRACE" => tracing::debug!(target: "tarn::airbyte::connector", "{text}"),
                _ => tracing::info!(target: "tarn::airbyte::connector", "{text}"),
            }
        }
        "TRACE" => {
            let trace = message.get("trace").cloned().unwrap_or_default();
            match trace.get("type").and_then(Value::as_str).unwrap_or_default() {
                "STREAM_STATUS" => {
                    let status = trace.get("stream_status").cloned().unwrap_or_default();
                    let stream = status
                        .get("stream_descriptor")
                        .and_then(descriptor_name)
                        .unwrap_or_default();
                    let state = status.get("status").and_then(Value::as_str).unwrap_or_default();
                    tracing::info!(stream, status = state, "stream status");
                }
                "ESTIMATE" => {
                    let estimate = trace.get("estimate").cloned().unwrap_or_default();
                    let stream = estimate.get("name").and_then(Value::as_str).unwrap_or_default();
                    let rows = estimate.get("row_estimate").and_then(Value::as_u64);
                    let bytes = estimate.get("byte_estimate").and_then(Value::as_u64);
                    tracing::info!(stream, rows = ?rows, bytes = ?bytes, "the connector estimates");
                }
                other => tracing::debug!(kind = other, "connector trace"),
            }
        }
        other => tracing::debug!(kind = other, "connector message"),
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with `...` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
