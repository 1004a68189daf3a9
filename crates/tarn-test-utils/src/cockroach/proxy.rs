//! The stand-in's pgwire front: a proxy in front of the backing PostgreSQL that answers as a
//! CockroachDB node.
//!
//! - Startup: an SSL request is answered "N"; the startup `options` get
//!   `-c search_path=public,<version schema>,pg_catalog` appended (the client's own options
//!   kept), so unqualified catalog names resolve to the version's views while tables created
//!   without a schema still land in `public`; `server_version` is reported as `13.0.0`
//!   (`pkg/sql/vars.go`).
//! - Simple (`Q`) and extended (`P` Parse) queries are rewritten ([`super::rewrite`]):
//!   `pg_catalog.` / `information_schema.` names go to the version's schemas, unmodelled ones
//!   are refused with an ErrorResponse.
//! - CockroachDB-only statements ([`super::statements`]) are answered by the stand-in over
//!   the simple-query protocol, after every reply PostgreSQL still owes the client.

use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc};

use super::Inner;
use super::execute::{Answer, Session, execute, register_sinkless};
use super::jobs::{FlowEnd, FlowError, Out, Sink, run_flow};
use super::rewrite::{Context, calls_cluster_logical_timestamp, rewrite};
use super::statements::{SqlError, parse, parse_batch};

/// Reads one message (`tag`, body).
async fn read_message(r: &mut (impl AsyncReadExt + Unpin)) -> Option<(u8, Vec<u8>)> {
    let tag = r.read_u8().await.ok()?;
    let len = r.read_i32().await.ok()?;
    if len < 4 {
        return None;
    }
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await.ok()?;
    Some((tag, body))
}

/// A message with its header.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn row_description(fields: &[(&str, u32)]) -> Vec<u8> {
    let mut b = (fields.len() as i16).to_be_bytes().to_vec();
    for (name, oid) in fields {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    message(b'T', &b)
}

fn data_row(cells: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = (cells.len() as i16).to_be_bytes().to_vec();
    for c in cells {
        match c {
            Some(c) => {
                b.extend_from_slice(&(c.len() as i32).to_be_bytes());
                b.extend_from_slice(c);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    message(b'D', &b)
}

fn command_complete(tag: &str) -> Vec<u8> {
    let mut b = tag.as_bytes().to_vec();
    b.push(0);
    message(b'C', &b)
}

fn error_response(e: &SqlError) -> Vec<u8> {
    let mut b = Vec::new();
    for (field, value) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', e.code),
        (b'M', &e.message),
    ] {
        b.push(field);
        b.extend_from_slice(value.as_bytes());
        b.push(0);
    }
    if let Some(h) = &e.hint {
        b.push(b'H');
        b.extend_from_slice(h.as_bytes());
        b.push(0);
    }
    b.push(0);
    message(b'E', &b)
}

/// BYTES in text form: `\x` and hex.
fn bytea(s: &str) -> Vec<u8> {
    let mut out = b"\\x".to_vec();
    for b in s.bytes() {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out
}

/// What the two directions of a connection share.
struct Shared {
    state: std::sync::Mutex<Replies>,
    changed: Notify,
}

/// Replies PostgreSQL still owes: one ReadyForQuery per forwarded Query / Sync / FunctionCall.
struct Replies {
    pending: usize,
    /// ReadyForQuery messages to drop (answers to Syncs the proxy sent itself).
    swallow: usize,
    /// The last transaction status.
    status: u8,
}

impl Shared {
    fn add_pending(&self, swallow: bool) {
        let mut s = self.state.lock().unwrap();
        s.pending += 1;
        if swallow {
            s.swallow += 1;
        }
    }

    /// Waits until PostgreSQL owes the client nothing; returns the transaction status.
    async fn idle(&self) -> u8 {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.state.lock().unwrap();
                if s.pending == 0 {
                    return s.status;
                }
            }
            notified.await;
        }
    }
}

/// Serves one client connection.
pub async fn connection(inner: Arc<Inner>, client: TcpStream) {
    // A connection ends when either side hangs up; there is nothing to report.
    let _ = serve(inner, client).await;
}

async fn serve(inner: Arc<Inner>, client: TcpStream) -> Result<()> {
    let (mut from_client, to_client) = client.into_split();
    let to_client = Arc::new(AsyncMutex::new(to_client));
    // Startup.
    let params = loop {
        let len = from_client.read_i32().await?;
        if !(8..=1 << 20).contains(&len) {
            return Ok(());
        }
        let mut body = vec![0; len as usize - 4];
        from_client.read_exact(&mut body).await?;
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match code {
            80_877_103 | 80_877_104 => {
                to_client.lock().await.write_all(b"N").await?;
            }
            80_877_102 => {
                // CancelRequest: pass it on.
                let mut pg = TcpStream::connect(("127.0.0.1", inner.pg_port)).await?;
                pg.write_all(&len.to_be_bytes()).await?;
                pg.write_all(&body).await?;
                return Ok(());
            }
            _ => {
                let mut params: Vec<(String, String)> = Vec::new();
                let mut fields = body[4..].split(|b| *b == 0);
                while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                    if k.is_empty() {
                        break;
                    }
                    params.push((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ));
                }
                break params;
            }
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user").unwrap_or_default();
    let session = Session {
        database: get("database").unwrap_or_else(|| user.clone()),
        user,
    };
    let search_path = format!(
        "-c search_path=public,{},pg_catalog",
        inner.options.version.catalog_schema()
    );
    let mut startup = 196_608i32.to_be_bytes().to_vec();
    let mut has_options = false;
    for (k, v) in &params {
        let v = if k == "options" {
            has_options = true;
            format!("{v} {search_path}")
        } else {
            v.clone()
        };
        for s in [k.as_str(), v.as_str()] {
            startup.extend_from_slice(s.as_bytes());
            startup.push(0);
        }
    }
    if !has_options {
        for s in ["options", search_path.as_str()] {
            startup.extend_from_slice(s.as_bytes());
            startup.push(0);
        }
    }
    startup.push(0);
    let server = TcpStream::connect(("127.0.0.1", inner.pg_port)).await?;
    let (mut from_server, mut to_server) = server.into_split();
    to_server
        .write_all(&((startup.len() + 4) as i32).to_be_bytes())
        .await?;
    to_server.write_all(&startup).await?;
    let shared = Arc::new(Shared {
        state: std::sync::Mutex::new(Replies {
            pending: 1, // the startup's ReadyForQuery
            swallow: 0,
            status: b'I',
        }),
        changed: Notify::new(),
    });
    let pump = tokio::spawn({
        let shared = shared.clone();
        let out = to_client.clone();
        async move {
            while let Some((tag, mut body)) = read_message(&mut from_server).await {
                if tag == b'S' && body.starts_with(b"server_version\0") {
                    body = b"server_version\x0013.0.0\x00".to_vec();
                }
                if tag == b'Z' {
                    let swallow = {
                        let mut s = shared.state.lock().unwrap();
                        s.status = body.first().copied().unwrap_or(b'I');
                        if s.swallow > 0 {
                            s.swallow -= 1;
                            true
                        } else {
                            false
                        }
                    };
                    if !swallow && out.lock().await.write_all(&message(tag, &body)).await.is_err() {
                        return;
                    }
                    let mut s = shared.state.lock().unwrap();
                    s.pending = s.pending.saturating_sub(1);
                    drop(s);
                    shared.changed.notify_waiters();
                    continue;
                }
                if out.lock().await.write_all(&message(tag, &body)).await.is_err() {
                    return;
                }
            }
            // PostgreSQL went away: nothing more is owed.
            shared.state.lock().unwrap().pending = 0;
            shared.changed.notify_waiters();
        }
    });
    let result = client_loop(
        &inner,
        &session,
        &mut from_client,
        &to_client,
        &mut to_server,
        &shared,
    )
    .await;
    pump.abort();
    result
}

async fn reply(out: &AsyncMutex<OwnedWriteHalf>, parts: &[Vec<u8>]) -> Result<()> {
    let mut w = out.lock().await;
    for p in parts {
        w.write_all(p).await?;
    }
    w.flush().await?;
    Ok(())
}

fn ready(status: u8) -> Vec<u8> {
    message(b'Z', &[status])
}

async fn client_loop(
    inner: &Arc<Inner>,
    session: &Session,
    from_client: &mut tokio::net::tcp::OwnedReadHalf,
    to_client: &Arc<AsyncMutex<OwnedWriteHalf>>,
    to_server: &mut tokio::net::tcp::OwnedWriteHalf,
    shared: &Arc<Shared>,
) -> Result<()> {
    let mut skip_until_sync = false;
    loop {
        let next = tokio::select! {
            m = read_message(from_client) => m,
            () = inner.shutdown.cancelled() => return Ok(()),
        };
        let Some((tag, body)) = next else {
            return Ok(());
        };
        if skip_until_sync {
            if tag == b'S' {
                skip_until_sync = false;
                let status = shared.idle().await;
                reply(to_client, &[ready(status)]).await?;
            }
            continue;
        }
        match tag {
            b'Q' => {
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
                inner.record(&text);
                if let Some(parsed) = parse_batch(&text) {
                    let status = shared.idle().await;
                    let statements = match parsed {
                        Err(e) => {
                            reply(to_client, &[error_response(&e), ready(status)]).await?;
                            continue;
                        }
                        Ok(s) => s,
                    };
                    // As PostgreSQL answers a simple query of several statements: each one's
                    // reply in turn, the first error ends the batch, then one ReadyForQuery.
                    let last = statements.len() - 1;
                    let mut replies = Vec::new();
                    for (i, stmt) in statements.into_iter().enumerate() {
                        match execute(inner, session, stmt).await {
                            Err(e) => {
                                replies.push(error_response(&e));
                                break;
                            }
                            Ok(Answer::Tag(tag)) => replies.push(command_complete(tag)),
                            Ok(Answer::JobId(id)) => replies.extend([
                                row_description(&[("job_id", 20)]),
                                data_row(&[Some(id.to_string().as_bytes())]),
                                command_complete("CREATE CHANGEFEED"),
                            ]),
                            Ok(Answer::Sinkless(spec)) if i == last && replies.is_empty() => {
                                if !stream(inner, *spec, from_client, to_client, status).await? {
                                    return Ok(());
                                }
                                replies.clear();
                                break;
                            }
                            Ok(Answer::Sinkless(_)) => {
                                replies.push(error_response(&SqlError::not_modelled(
                                    "a sinkless changefeed in a batch of several statements",
                                )));
                                break;
                            }
                        }
                    }
                    if !replies.is_empty() {
                        replies.push(ready(status));
                        reply(to_client, &replies).await?;
                    }
                    continue;
                }
                match rewrite_query(inner, &text).await {
                    Ok(sql) => {
                        let mut b = sql.into_bytes();
                        b.push(0);
                        shared.add_pending(false);
                        to_server.write_all(&message(b'Q', &b)).await?;
                    }
                    Err(e) => {
                        let status = shared.idle().await;
                        reply(to_client, &[error_response(&e), ready(status)]).await?;
                    }
                }
            }
            b'P' => {
                let mut parts = body.splitn(3, |b| *b == 0);
                let name = parts.next().unwrap_or_default().to_vec();
                let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let rest = parts.next().unwrap_or_default().to_vec();
                inner.record(&query);
                let rewritten = if parse(&query).is_some() {
                    Err(SqlError::not_modelled(
                        "this statement over the extended protocol (the stand-in answers it in simple queries)",
                    ))
                } else {
                    rewrite_query(inner, &query).await
                };
                match rewritten {
                    Ok(sql) => {
                        let mut b = name;
                        b.push(0);
                        b.extend_from_slice(sql.as_bytes());
                        b.push(0);
                        b.extend_from_slice(&rest);
                        to_server.write_all(&message(b'P', &b)).await?;
                    }
                    Err(e) => {
                        // Let PostgreSQL answer what came before, then refuse; skip to Sync.
                        shared.add_pending(true);
                        to_server.write_all(&message(b'S', &[])).await?;
                        shared.idle().await;
                        reply(to_client, &[error_response(&e)]).await?;
                        skip_until_sync = true;
                    }
                }
            }
            b'S' | b'F' => {
                shared.add_pending(false);
                to_server.write_all(&message(tag, &body)).await?;
            }
            b'X' => {
                let _ = to_server.write_all(&message(tag, &body)).await;
                return Ok(());
            }
            _ => to_server.write_all(&message(tag, &body)).await?,
        }
    }
}

async fn rewrite_query(inner: &Arc<Inner>, sql: &str) -> Result<String, SqlError> {
    let now = if calls_cluster_logical_timestamp(sql) {
        Some(
            inner
                .capture
                .sync_now()
                .await
                .map_err(|e| SqlError::uncategorized(format!("{e:#}")))?,
        )
    } else {
        None
    };
    let settings = inner.settings.lock().unwrap().clone();
    let cx = Context {
        version: inner.options.version,
        pg_relations: &inner.pg_relations,
        now,
        settings: &settings,
    };
    rewrite(sql, &cx).map_err(|m| {
        if m.starts_with("the CockroachDB stand-in") {
            SqlError::new("0A000", m)
        } else {
            SqlError::uncategorized(m)
        }
    })
}

/// Streams a sinkless changefeed; `Ok(false)` when the connection is to be dropped.
async fn stream(
    inner: &Arc<Inner>,
    spec: super::jobs::FeedSpec,
    from_client: &mut tokio::net::tcp::OwnedReadHalf,
    to_client: &Arc<AsyncMutex<OwnedWriteHalf>>,
    status: u8,
) -> Result<bool> {
    // changefeed_stmt.go sinklessHeader: table STRING, key BYTES, value BYTES.
    reply(
        to_client,
        &[row_description(&[("table", 25), ("key", 17), ("value", 17)])],
    )
    .await?;
    let id = spec.id;
    let kill = register_sinkless(inner, id);
    let stop = inner.shutdown.child_token();
    let (tx, mut rx) = mpsc::channel::<Out>(1024);
    let cx = inner.flow_cx();
    let flow_stop = stop.clone();
    let flow = tokio::spawn(async move {
        let mut sink = Sink::Sinkless(tx);
        let name = format!("sinkless {id}");
        let r = run_flow(&cx, &spec, &name, &mut sink, None, &flow_stop, None).await;
        cx.capture.protect(spec.id, None);
        r
    });
    let outcome = loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(Out::Row { topic, key, value }) => {
                    let row = data_row(&[Some(topic.as_bytes()), Some(&bytea(&key)), Some(&bytea(&value))]);
                    if reply(to_client, &[row]).await.is_err() {
                        stop.cancel();
                        break None;
                    }
                }
                Some(Out::Resolved(value)) => {
                    if reply(to_client, &[data_row(&[None, None, Some(&bytea(&value))])]).await.is_err() {
                        stop.cancel();
                        break None;
                    }
                }
                None => break Some(flow.await),
            },
            m = read_message(from_client) => {
                // The client may only hang up (Terminate) while the feed streams.
                if m.is_none_or(|(tag, _)| tag == b'X') {
                    stop.cancel();
                    break None;
                }
            }
            () = kill.cancelled() => {
                stop.cancel();
                inner.sinkless.lock().unwrap().remove(&id);
                // As a failing node would: the connection just drops.
                let _ = to_client.lock().await.shutdown().await;
                return Ok(false);
            }
        }
    };
    inner.sinkless.lock().unwrap().remove(&id);
    match outcome {
        None => Ok(false),
        Some(Ok(Ok(FlowEnd::ScanDone))) => {
            reply(to_client, &[command_complete("CREATE CHANGEFEED"), ready(status)]).await?;
            Ok(true)
        }
        Some(Ok(Ok(FlowEnd::Stopped))) => Ok(false),
        Some(Ok(Err(FlowError::Retryable(e) | FlowError::Terminal(e)))) => {
            reply(
                to_client,
                &[error_response(&SqlError::uncategorized(e)), ready(status)],
            )
            .await?;
            Ok(true)
        }
        Some(Err(e)) => {
            reply(
                to_client,
                &[
                    error_response(&SqlError::uncategorized(e.to_string())),
                    ready(status),
                ],
            )
            .await?;
            Ok(true)
        }
    }
}
