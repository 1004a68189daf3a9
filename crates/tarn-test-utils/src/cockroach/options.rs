//! Changefeed `WITH` options: which exist in which version, and CockroachDB's checks of them,
//! in the order it runs them, with its error texts.
//!
//! - Option names and value shapes: `changefeedbase/options.go` (`ChangefeedOptionExpectValues`,
//!   OPTS-new / OPTS-mid in the research notes); names per version from each version's
//!   `create-changefeed.md` option table (see [`CockroachVersion::extra_changefeed_options`]).
//! - Unknown options and value presence: `pkg/sql/exprutil/kv_string_opt.go`
//!   (`invalid option %q`, `option %q requires a value`, `option %q does not take a value`; no
//!   code, so `XXUUU`).
//! - `ValidateForCreateChangefeed` (wrapped as 22023): durations (`time.ParseDuration`),
//!   enums (`unknown %s: %s, %s` with `describeEnum`), initial-scan combinations, the options
//!   `initial_scan = 'only'` excludes, incompatible and dependent options. Go iterates maps in
//!   random order; the stand-in checks options in name order, so which of several offending
//!   options is named is stable.
//! - Encoding checks (`EncodingOptions.Validate`, no code).

use std::time::Duration;

use super::statements::SqlError;
use super::version::CockroachVersion;

/// How an option is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Flag,
    String,
    Timestamp,
    Duration {
        zero_ok: bool,
    },
    /// `resolved`: a duration that may be empty (meaning every advance) or zero.
    Resolved,
    Enum(&'static [&'static str], Option<&'static str>),
    Json,
}

const BASE_OPTIONS: &[&str] = &[
    "avro_schema_prefix",
    "compression",
    "confluent_schema_registry",
    "cursor",
    "diff",
    "end_time",
    "envelope",
    "execution_locality",
    "format",
    "full_table_name",
    "gc_protect_expires_after",
    "initial_scan",
    "initial_scan_only",
    "kafka_sink_config",
    "key_column",
    "key_in_value",
    "metrics_label",
    "min_checkpoint_frequency",
    "mvcc_timestamp",
    "no_initial_scan",
    "on_error",
    "protect_data_from_gc_on_pause",
    "resolved",
    "schema_change_events",
    "schema_change_policy",
    "split_column_families",
    "topic_in_value",
    "unordered",
    "updated",
    "virtual_columns",
    "webhook_auth_header",
    "webhook_client_timeout",
    "webhook_sink_config",
];

fn shape(name: &str, v: CockroachVersion) -> Option<Shape> {
    if !BASE_OPTIONS.contains(&name) && !v.extra_changefeed_options().contains(&name) {
        return None;
    }
    Some(match name {
        "diff"
        | "full_table_name"
        | "key_in_value"
        | "topic_in_value"
        | "updated"
        | "mvcc_timestamp"
        | "split_column_families"
        | "no_initial_scan"
        | "initial_scan_only"
        | "protect_data_from_gc_on_pause"
        | "unordered"
        | "ignore_disable_changefeed_replication"
        | "encode_json_value_null_as_object" => Shape::Flag,
        "cursor" | "end_time" => Shape::Timestamp,
        "resolved" => Shape::Resolved,
        "min_checkpoint_frequency" | "gc_protect_expires_after" => Shape::Duration { zero_ok: true },
        "webhook_client_timeout" | "lagging_ranges_threshold" | "lagging_ranges_polling_interval" => {
            Shape::Duration { zero_ok: false }
        }
        "envelope" => Shape::Enum(v.envelopes(), None),
        "format" => Shape::Enum(&["json", "avro", "csv", "experimental_avro", "parquet"], None),
        "compression" => Shape::Enum(&["gzip", "zstd"], None),
        "schema_change_events" => Shape::Enum(&["column_changes", "default"], None),
        "schema_change_policy" => Shape::Enum(&["backfill", "nobackfill", "stop", "ignore"], None),
        "initial_scan" => Shape::Enum(&["yes", "no", "only"], Some("yes")),
        "on_error" => Shape::Enum(&["pause", "fail"], None),
        "virtual_columns" => Shape::Enum(&["omitted", "null"], None),
        "kafka_sink_config" | "pubsub_sink_config" | "webhook_sink_config" => Shape::Json,
        _ => Shape::String,
    })
}

/// Options whose values are compared case-insensitively (`CaseInsensitiveOpts`).
const CASE_INSENSITIVE: &[&str] = &[
    "format",
    "envelope",
    "compression",
    "schema_change_events",
    "schema_change_policy",
    "on_error",
    "initial_scan",
];

/// Options of other sinks (`KafkaValidOptions`, `CloudStorageValidOptions`, `PubsubValidOptions`).
const OTHER_SINK_OPTIONS: &[&str] = &[
    "avro_schema_prefix",
    "confluent_schema_registry",
    "kafka_sink_config",
    "pubsub_sink_config",
];

/// The initial scan asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialScan {
    /// Scan, then stream.
    Yes,
    /// Stream only.
    No,
    /// Scan, then end (`succeeded`).
    Only,
}

/// `schema_change_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaChangePolicy {
    /// Re-emit every row after a column backfill.
    Backfill,
    /// Emit nothing about it.
    NoBackfill,
    /// Stop the feed.
    Stop,
    /// Ignore.
    Ignore,
}

/// The options a changefeed runs with.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// `updated`.
    pub updated: bool,
    /// `diff`.
    pub diff: bool,
    /// `mvcc_timestamp`.
    pub mvcc_timestamp: bool,
    /// `full_table_name`.
    pub full_table_name: bool,
    /// `key_in_value`.
    pub key_in_value: bool,
    /// `topic_in_value`.
    pub topic_in_value: bool,
    /// `resolved`: `None` without the option; `Some(ZERO)` for every advance.
    pub resolved: Option<Duration>,
    /// `min_checkpoint_frequency` (default 30 s, `DefaultMinCheckpointFrequency`, research §9).
    pub min_checkpoint_frequency: Duration,
    /// The initial scan.
    pub initial_scan: InitialScan,
    /// `cursor`, as written.
    pub cursor: Option<String>,
    /// `schema_change_policy`.
    pub schema_change_policy: SchemaChangePolicy,
    /// `virtual_columns = 'null'`.
    pub virtual_columns_null: bool,
    /// `encode_json_value_null_as_object`.
    pub json_null_as_object: bool,
    /// `webhook_auth_header`.
    pub webhook_auth_header: Option<String>,
    /// `webhook_client_timeout` (default 3 s, docs `create-changefeed.md`).
    pub webhook_client_timeout: Duration,
    /// `webhook_sink_config` JSON.
    pub webhook_sink_config: Option<String>,
}

/// What the sink is, for the sink-specific checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkClass {
    /// No `INTO`: sink-specific validation is skipped (research follow-up C).
    Sinkless,
    /// A webhook URI.
    Webhook,
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration \"{s}\"");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration \"{s}\""));
        }
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("time: unknown unit \"{unit}\" in duration \"{s}\"")),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    let n = total.round() as i128;
    Ok(if neg { -n } else { n })
}

/// `describeEnum`: "valid values are 'a', 'b',  and 'c'" (its loop writes ", " and then
/// " and " before the last value).
fn describe_enum(values: &[&str]) -> String {
    match values {
        [one] => format!("the only valid value is '{one}'"),
        [a, b] => format!("valid values are '{a}' and '{b}'"),
        _ => {
            let mut s = "valid values are ".to_string();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                if i == values.len() - 1 {
                    s.push_str(" and ");
                }
                s.push_str(&format!("'{v}'"));
            }
            s
        }
    }
}

fn invalid_value(m: impl Into<String>) -> SqlError {
    SqlError::new("22023", m)
}

/// Checks a changefeed's options as CockroachDB does and returns what the feed runs with.
pub fn validate(
    version: CockroachVersion,
    given: &[(String, Option<String>)],
    sink: SinkClass,
) -> Result<FeedOptions, SqlError> {
    // 1. Names and value presence, in statement order (exprutil.KVOptions).
    let mut map: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for (key, value) in given {
        let Some(shape) = shape(key, version) else {
            return Err(SqlError::uncategorized(format!("invalid option \"{key}\"")));
        };
        match (shape, value) {
            (Shape::Flag, Some(_)) => {
                return Err(SqlError::uncategorized(format!(
                    "option \"{key}\" does not take a value"
                )));
            }
            (Shape::Resolved | Shape::Enum(_, Some(_)) | Shape::Flag, _) => {}
            (_, None) => {
                return Err(SqlError::uncategorized(format!(
                    "option \"{key}\" requires a value"
                )));
            }
            _ => {}
        }
        let mut v = value.clone().unwrap_or_default();
        if CASE_INSENSITIVE.contains(&key.as_str()) {
            v = v.to_ascii_lowercase();
        }
        map.insert(key.clone(), v);
    }
    let set = |k: &str| map.contains_key(k);
    let new_wording = version >= CockroachVersion::V24_2;
    // 2. ValidateForCreateChangefeed, wrapped as 22023.
    let mut durations: std::collections::BTreeMap<String, Duration> = std::collections::BTreeMap::new();
    for (k, v) in &map {
        let sh = shape(k, version).expect("known");
        let zero_ok = match sh {
            Shape::Resolved if v.is_empty() => continue,
            Shape::Resolved => Some(true),
            Shape::Duration { zero_ok } => Some(zero_ok),
            _ => None,
        };
        if let Some(zero_ok) = zero_ok {
            let nanos = parse_go_duration(v)
                .map_err(|e| invalid_value(format!("problem parsing option {k}: {e}")))?;
            if nanos < 0 {
                return Err(invalid_value(format!(
                    "negative durations are not accepted: {k}='{v}'"
                )));
            }
            if nanos == 0 && !zero_ok {
                return Err(invalid_value(format!(
                    "option {k} must be a duration greater than 0"
                )));
            }
            durations.insert(k.clone(), Duration::from_nanos(nanos as u64));
        } else if let Shape::Enum(values, if_empty) = sh {
            let v = if v.is_empty() {
                if_empty.unwrap_or("")
            } else {
                v.as_str()
            };
            if !values.contains(&v) {
                return Err(invalid_value(format!(
                    "unknown {k}: {v}, {}",
                    describe_enum(values)
                )));
            }
        }
    }
    if set("initial_scan") && set("no_initial_scan") {
        return Err(invalid_value(
            "cannot specify both initial_scan and no_initial_scan",
        ));
    }
    if set("initial_scan") && set("initial_scan_only") {
        return Err(invalid_value(
            "cannot specify both initial_scan and initial_scan_only",
        ));
    }
    if set("no_initial_scan") && set("initial_scan_only") {
        return Err(invalid_value(
            "cannot specify both initial_scan='only' and no_initial_scan",
        ));
    }
    let initial_scan = match map.get("initial_scan").map(String::as_str) {
        Some("" | "yes") => InitialScan::Yes,
        Some("no") => InitialScan::No,
        Some(_) => InitialScan::Only,
        None if set("initial_scan_only") => InitialScan::Only,
        None if set("no_initial_scan") => InitialScan::No,
        None if set("cursor") => InitialScan::No,
        None => InitialScan::Yes,
    };
    if initial_scan == InitialScan::Only {
        // InitialScanOnlyUnsupportedOptions.
        for o in ["diff", "end_time", "mvcc_timestamp", "resolved", "updated"] {
            if set(o) {
                return Err(if new_wording {
                    invalid_value(format!("cannot specify both initial_scan='only' and {o}"))
                } else {
                    SqlError::uncategorized(format!("cannot specify both initial_scan_only and {o}"))
                });
            }
        }
    } else if map.get("format").map(String::as_str) == Some("csv") {
        return Err(invalid_value("format=csv is only usable with initial_scan_only"));
    }
    if set("unordered") && set("resolved") {
        return Err(invalid_value(
            "unordered is not usable with resolved because resolved timestamps cannot be guaranteed to be \
             correct in unordered mode",
        ));
    }
    if set("key_column") && !set("unordered") {
        return Err(invalid_value(
            "key_column requires the unordered option because using a value other than the primary key as \
             the message key means end-to-end ordering cannot be preserved",
        ));
    }
    // 3. Encoding options (EncodingOptions.Validate; no code).
    let format = map.get("format").map_or("json", String::as_str);
    let envelope = map.get("envelope").map_or("wrapped", String::as_str);
    if set("encode_json_value_null_as_object") && format != "json" {
        return Err(SqlError::uncategorized(
            "encode_json_value_null_as_object is only usable with format=json",
        ));
    }
    if envelope != "wrapped" && format != "json" && format != "parquet" {
        for o in [
            "key_in_value",
            "topic_in_value",
            "updated",
            "mvcc_timestamp",
            "diff",
        ] {
            if set(o) {
                return Err(SqlError::uncategorized(format!(
                    "{o} is only usable with envelope=wrapped"
                )));
            }
        }
    }
    // 4. Sink-specific options (changefeedbase.ValidateSinkOptions of the webhook sink).
    if sink == SinkClass::Webhook {
        for o in OTHER_SINK_OPTIONS {
            if set(o) {
                return Err(SqlError::uncategorized(format!(
                    "this sink is incompatible with option {o}"
                )));
            }
        }
    }
    // What the stand-in plays: JSON in the wrapped envelope.
    if format != "json" {
        return Err(SqlError::not_modelled(&format!("format={format}")));
    }
    if envelope != "wrapped" {
        return Err(SqlError::not_modelled(&format!("envelope={envelope}")));
    }
    for o in ["end_time", "key_column", "unordered", "compression"] {
        if set(o) {
            return Err(SqlError::not_modelled(&format!("the changefeed option {o}")));
        }
    }
    Ok(FeedOptions {
        updated: set("updated"),
        diff: set("diff"),
        mvcc_timestamp: set("mvcc_timestamp"),
        full_table_name: set("full_table_name"),
        key_in_value: set("key_in_value"),
        topic_in_value: set("topic_in_value"),
        resolved: if set("resolved") {
            Some(durations.get("resolved").copied().unwrap_or(Duration::ZERO))
        } else {
            None
        },
        min_checkpoint_frequency: durations
            .get("min_checkpoint_frequency")
            .copied()
            .unwrap_or(Duration::from_secs(30)),
        initial_scan,
        cursor: map.get("cursor").cloned(),
        schema_change_policy: match map.get("schema_change_policy").map(String::as_str) {
            Some("nobackfill") => SchemaChangePolicy::NoBackfill,
            Some("stop") => SchemaChangePolicy::Stop,
            Some("ignore") => SchemaChangePolicy::Ignore,
            _ => SchemaChangePolicy::Backfill,
        },
        virtual_columns_null: map.get("virtual_columns").map(String::as_str) == Some("null"),
        json_null_as_object: set("encode_json_value_null_as_object"),
        webhook_auth_header: map.get("webhook_auth_header").cloned(),
        webhook_client_timeout: durations
            .get("webhook_client_timeout")
            .copied()
            .unwrap_or(Duration::from_secs(3)),
        webhook_sink_config: map.get("webhook_sink_config").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    fn err(v: CockroachVersion, list: &[(&str, Option<&str>)]) -> SqlError {
        validate(v, &opts(list), SinkClass::Sinkless).unwrap_err()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1s"), Ok(1_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("-1s"), Ok(-1_000_000_000));
        assert_eq!(
            parse_go_duration("bar"),
            Err("time: invalid duration \"bar\"".into())
        );
        assert_eq!(
            parse_go_duration("1"),
            Err("time: missing unit in duration \"1\"".into())
        );
    }

    #[test]
    fn checks() {
        use CockroachVersion::*;
        let e = err(V24_2, &[("bogus", None)]);
        assert_eq!(
            (e.code, e.message.as_str()),
            ("XXUUU", "invalid option \"bogus\"")
        );
        let e = err(V23_2, &[("encode_json_value_null_as_object", None)]);
        assert_eq!(e.message, "invalid option \"encode_json_value_null_as_object\"");
        assert!(
            validate(
                V24_2,
                &opts(&[("encode_json_value_null_as_object", None)]),
                SinkClass::Sinkless
            )
            .is_ok()
        );
        assert_eq!(
            err(V24_2, &[("updated", Some("x"))]).message,
            "option \"updated\" does not take a value"
        );
        assert_eq!(
            err(V24_2, &[("cursor", None)]).message,
            "option \"cursor\" requires a value"
        );
        let e = err(V24_2, &[("resolved", Some("bar"))]);
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "22023",
                "problem parsing option resolved: time: invalid duration \"bar\""
            )
        );
        assert_eq!(
            err(V24_2, &[("resolved", Some("-1s"))]).message,
            "negative durations are not accepted: resolved='-1s'"
        );
        assert_eq!(
            err(V24_2, &[("webhook_client_timeout", Some("0s"))]).message,
            "option webhook_client_timeout must be a duration greater than 0"
        );
        assert_eq!(
            err(V24_2, &[("envelope", Some("nope"))]).message,
            "unknown envelope: nope, valid values are 'row', 'key_only', 'wrapped', 'deprecated_row',  and 'bare'"
        );
        assert_eq!(
            err(V24_2, &[("initial_scan", Some("only")), ("updated", None)]).message,
            "cannot specify both initial_scan='only' and updated"
        );
        let e = err(V23_1, &[("initial_scan", Some("only")), ("resolved", None)]);
        assert_eq!(
            (e.code, e.message.as_str()),
            ("XXUUU", "cannot specify both initial_scan_only and resolved")
        );
        assert_eq!(
            err(V24_2, &[("initial_scan", None), ("no_initial_scan", None)]).message,
            "cannot specify both initial_scan and no_initial_scan"
        );
        let ok = validate(
            V24_2,
            &opts(&[
                ("resolved", Some("1s")),
                ("min_checkpoint_frequency", Some("1s")),
                ("cursor", Some("1.0")),
                ("initial_scan", Some("YES")),
            ]),
            SinkClass::Sinkless,
        )
        .unwrap();
        assert_eq!(ok.resolved, Some(Duration::from_secs(1)));
        assert_eq!(ok.initial_scan, InitialScan::Yes);
        let ok = validate(V24_2, &opts(&[("cursor", Some("1.0"))]), SinkClass::Sinkless).unwrap();
        assert_eq!(ok.initial_scan, InitialScan::No);
        assert_eq!(ok.min_checkpoint_frequency, Duration::from_secs(30));
        assert_eq!(
            validate(
                V24_2,
                &opts(&[("kafka_sink_config", Some("{}"))]),
                SinkClass::Webhook
            )
            .unwrap_err()
            .message,
            "this sink is incompatible with option kafka_sink_config"
        );
    }
}
