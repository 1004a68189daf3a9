//! CockroachDB changefeed messages in the JSON format with the `wrapped` envelope and the
//! `updated` and `resolved` options, as the webhook sink posts them and as a core (sinkless)
//! changefeed returns them as rows.
//!
//! A row message carries the table (`topic`, or the `table` column of a core changefeed), the
//! primary key as a JSON array in primary-index order, `after` (the row, or `null` for a
//! delete) and `updated` (the change's MVCC timestamp). A resolved message carries only
//! `resolved`: no row with an `updated` at or before it will come again.
//!
//! A webhook delivery is `{"payload": [message, ...], "length": n}`; a resolved timestamp
//! arrives as a bare `{"resolved": "..."}` body (or inside a payload). Values stay raw JSON
//! text ([`RawValue`]) so numbers keep every digit until a column's type reads them.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::position::Hlc;

/// A row's column values by name, as raw JSON.
pub type Columns = Vec<(String, Box<RawValue>)>;

/// One row change of a changefeed.
#[derive(Debug, Clone)]
pub struct RowMessage {
    /// The table as the changefeed names it (`database.schema.table` with `full_table_name`).
    pub topic: String,
    /// The primary key values, in primary-index order.
    pub key: Vec<Box<RawValue>>,
    /// The row after the change, column name → value; `None` for a delete.
    pub after: Option<Columns>,
    /// The change's timestamp.
    pub updated: Hlc,
}

impl RowMessage {
    /// The key as canonical text, for deduplication.
    pub fn key_text(&self) -> String {
        let mut s = String::new();
        for (i, k) in self.key.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(k.get());
        }
        s
    }

    /// An estimate of the memory the message holds.
    pub fn bytes(&self) -> usize {
        let after: usize = self
            .after
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.get().len() + 48)
            .sum();
        let key: usize = self.key.iter().map(|k| k.get().len() + 16).sum();
        self.topic.len() + key + after + 96
    }
}

/// A message of a changefeed.
#[derive(Debug, Clone)]
pub enum Message {
    /// A row changed.
    Row(RowMessage),
    /// Everything up to this timestamp has been delivered.
    Resolved(Hlc),
}

/// A malformed message: what is wrong and where (`payload[3].updated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageError {
    /// Where in the delivery.
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

fn bad(at: impl Into<String>, reason: impl Into<String>) -> MessageError {
    MessageError {
        at: at.into(),
        reason: reason.into(),
    }
}

/// The wrapped envelope's fields; unknown fields (`before`, `mvcc_timestamp`, ...) are
/// ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(default)]
    key: Option<&'a RawValue>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    resolved: Option<String>,
    #[serde(default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    length: Option<u64>,
}

fn timestamp(at: &str, field: &str, text: &str) -> Result<Hlc, MessageError> {
    text.parse::<Hlc>().map_err(|_| {
        bad(
            format!("{at}.{field}"),
            format!("expected a timestamp like \"1700000000123456789.0000000000\", got {text:?}"),
        )
    })
}

fn key_array(at: &str, raw: &RawValue) -> Result<Vec<Box<RawValue>>, MessageError> {
    serde_json::from_str::<Vec<Box<RawValue>>>(raw.get())
        .map_err(|_| {
            bad(
                format!("{at}.key"),
                format!("expected a JSON array of key values, got {}", raw.get()),
            )
        })
        .and_then(|k| {
            if k.is_empty() {
                Err(bad(format!("{at}.key"), "the key array is empty"))
            } else {
                Ok(k)
            }
        })
}

fn after_object(at: &str, raw: Option<&RawValue>) -> Result<Option<Columns>, MessageError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.get() == "null" {
        return Ok(None);
    }
    match serde_json::from_str::<std::collections::HashMap<String, Box<RawValue>>>(raw.get()) {
        Ok(map) => Ok(Some(map.into_iter().collect())),
        Err(_) => Err(bad(
            format!("{at}.after"),
            format!(
                "expected an object of column values or null, got {}",
                clip(raw.get())
            ),
        )),
    }
}

fn clip(s: &str) -> String {
    if s.len() <= 80 {
        s.to_string()
    } else {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// Reads one message in the wrapped envelope. `topic` is the table when it travels beside
/// the value (core changefeeds), `key` likewise; `scanned_at` is the time of a scan-only
/// changefeed, whose rows carry no `updated` (CockroachDB refuses the option with
/// `initial_scan = 'only'`).
fn envelope_message(
    at: &str,
    env: &Envelope<'_>,
    topic: Option<&str>,
    key: Option<&RawValue>,
    scanned_at: Option<Hlc>,
) -> Result<Message, MessageError> {
    if let Some(r) = &env.resolved {
        return Ok(Message::Resolved(timestamp(at, "resolved", r)?));
    }
    let topic = match (&env.topic, topic) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.to_string(),
        (None, None) => return Err(bad(format!("{at}.topic"), "missing: which table changed")),
    };
    let key = match (env.key, key) {
        (Some(k), _) => key_array(at, k)?,
        (None, Some(k)) => key_array(at, k)?,
        (None, None) => return Err(bad(format!("{at}.key"), "missing: the row's primary key")),
    };
    let updated = match (&env.updated, scanned_at) {
        (Some(u), _) => timestamp(at, "updated", u)?,
        (None, Some(t)) => t,
        (None, None) => {
            return Err(bad(
                format!("{at}.updated"),
                "missing: create the changefeed WITH updated (tarn orders and deduplicates by it)",
            ));
        }
    };
    let after = after_object(at, env.after)?;
    Ok(Message::Row(RowMessage {
        topic,
        key,
        after,
        updated,
    }))
}

/// Parses a webhook delivery's body: `{"payload": [...], "length": n}` or a bare
/// `{"resolved": "..."}`.
pub fn parse_webhook(body: &[u8]) -> Result<Vec<Message>, MessageError> {
    let text = std::str::from_utf8(body).map_err(|e| bad("body", format!("not UTF-8: {e}")))?;
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        bad(
            "body",
            format!("expected a JSON object with `payload` or `resolved` ({e})"),
        )
    })?;
    if env.resolved.is_some() && env.payload.is_none() {
        return Ok(vec![envelope_message("body", &env, None, None, None)?]);
    }
    let Some(payload) = env.payload else {
        return Err(bad(
            "body",
            "expected a `payload` array or a `resolved` timestamp",
        ));
    };
    let items: Vec<&RawValue> =
        serde_json::from_str(payload.get()).map_err(|_| bad("payload", "expected an array of messages"))?;
    if let Some(n) = env.length
        && n != items.len() as u64
    {
        return Err(bad(
            "length",
            format!("says {n} messages, the payload holds {}", items.len()),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("payload[{i}]");
        let env: Envelope<'_> = serde_json::from_str(item.get())
            .map_err(|e| bad(&at, format!("expected a message object ({e})")))?;
        out.push(envelope_message(&at, &env, None, None, None)?);
    }
    Ok(out)
}

/// Parses one row of a core changefeed: `table` (NULL for resolved messages), `key` and
/// `value` (JSON bytes); `scanned_at` as for a scan-only changefeed (see `envelope_message`).
pub fn parse_core_row(
    table: Option<&str>,
    key: Option<&[u8]>,
    value: &[u8],
    scanned_at: Option<Hlc>,
) -> Result<Message, MessageError> {
    let at = format!("changefeed row of {}", table.unwrap_or("(resolved)"));
    let value = std::str::from_utf8(value).map_err(|e| bad(&at, format!("value is not UTF-8: {e}")))?;
    let env: Envelope<'_> = serde_json::from_str(value)
        .map_err(|e| bad(format!("{at}.value"), format!("expected a JSON object ({e})")))?;
    let key = match key {
        Some(k) => {
            let k =
                std::str::from_utf8(k).map_err(|e| bad(format!("{at}.key"), format!("not UTF-8: {e}")))?;
            Some(
                serde_json::from_str::<&RawValue>(k)
                    .map_err(|e| bad(format!("{at}.key"), format!("not JSON ({e})")))?,
            )
        }
        None => None,
    };
    envelope_message(&at, &env, table, key, scanned_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_payloads() {
        let body = br#"{"payload":[{"after":{"id":1,"name":"Petee","price":12345678901234567.891},"key":[1],"topic":"shop.public.dogs","updated":"1700000000000000000.0000000001"},
            {"after":null,"key":[2],"topic":"shop.public.dogs","updated":"1700000000000000001.0000000000"}],"length":2}"#;
        let m = parse_webhook(body).unwrap();
        assert_eq!(m.len(), 2);
        let Message::Row(r) = &m[0] else { panic!() };
        assert_eq!(r.topic, "shop.public.dogs");
        assert_eq!(r.key_text(), "1");
        let after = r.after.as_ref().unwrap();
        let price = after.iter().find(|(k, _)| k == "price").unwrap();
        assert_eq!(price.1.get(), "12345678901234567.891");
        let Message::Row(d) = &m[1] else { panic!() };
        assert!(d.after.is_none());
        assert!(d.updated > r.updated);
        let m = parse_webhook(br#"{"resolved":"1700000000000000002.0000000000"}"#).unwrap();
        assert!(matches!(m[0], Message::Resolved(p) if p.wall_nanos == 1_700_000_000_000_000_002));
    }

    #[test]
    fn malformed_payloads_name_the_place() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "body"),
            (br#"{"payload":{}}"#, "payload"),
            (br#"{"payload":[],"length":1}"#, "length"),
            (
                br#"{"payload":[{"after":{},"key":[1],"topic":"t"}]}"#,
                "payload[0].updated",
            ),
            (
                br#"{"payload":[{"after":{},"key":1,"topic":"t","updated":"1700000000000000000.0"}]}"#,
                "payload[0].key",
            ),
            (
                br#"{"payload":[{"after":[1],"key":[1],"topic":"t","updated":"1700000000000000000.0"}]}"#,
                "payload[0].after",
            ),
            (
                br#"{"payload":[{"after":{},"key":[1],"updated":"1700000000000000000.0"}]}"#,
                "payload[0].topic",
            ),
            (
                br#"{"payload":[{"after":{},"key":[1],"topic":"t","updated":"yesterday"}]}"#,
                "payload[0].updated",
            ),
            (br#"{"resolved":"soon"}"#, "body.resolved"),
            (b"{}", "body"),
        ];
        for (body, at) in cases {
            let e = parse_webhook(body).unwrap_err();
            assert_eq!(e.at, *at, "{e} for {}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn core_rows() {
        let m = parse_core_row(
            Some("shop.public.dogs"),
            Some(b"[7]"),
            br#"{"after":{"id":7},"updated":"1700000000000000000.0000000000"}"#,
            None,
        )
        .unwrap();
        assert!(matches!(&m, Message::Row(r) if r.topic == "shop.public.dogs" && r.key_text() == "7"));
        let m = parse_core_row(
            None,
            None,
            br#"{"resolved":"1700000000000000000.0000000005"}"#,
            None,
        )
        .unwrap();
        assert!(matches!(m, Message::Resolved(_)));
        assert!(parse_core_row(Some("t"), Some(b"[1"), b"{}", None).is_err());
    }
}
