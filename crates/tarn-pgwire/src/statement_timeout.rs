//! `SET statement_timeout`, `RESET statement_timeout` and `SET statement_timeout TO DEFAULT`,
//! as PostgreSQL reads them: a number is milliseconds, a string may carry a unit (`us`, `ms`,
//! `s`, `min`, `h`, `d`; `'1.5s'` too), and `0` means no timeout at all — also when a role or
//! the server configures one. `RESET` and `DEFAULT` go back to the role's or the server's
//! default. `SHOW statement_timeout` is answered by `ShowSettingsHook` with the value in force.

use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Reset, Set, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use pgwire::api::ClientInfo;
use pgwire::api::results::{Response, Tag};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

/// The client metadata key `datafusion-postgres` keeps a session's timeout under (positive
/// milliseconds; it also bounds planning with it).
pub(crate) const UPSTREAM_KEY: &str = "statement_timeout_ms";
/// tarn's own key: the milliseconds a session `SET`, `0` for "no timeout".
const KEY: &str = "tarn.statement_timeout_ms";

/// What a statement does to `statement_timeout`.
#[derive(Debug, PartialEq)]
enum Change {
    /// `SET statement_timeout = value`: `None` is `0`, no timeout.
    Set(Option<Duration>),
    /// `RESET statement_timeout`, `RESET ALL`, `SET statement_timeout TO DEFAULT`.
    Reset,
}

/// The change `statement` makes, if it is about `statement_timeout`; a value PostgreSQL would
/// refuse is the client's error (22023).
fn change(statement: &Statement) -> Option<PgWireResult<Change>> {
    match statement {
        Statement::Set(Set::SingleAssignment { variable, values, .. })
            if variable.to_string().eq_ignore_ascii_case("statement_timeout") =>
        {
            Some(match values.as_slice() {
                [Expr::Identifier(i)]
                    if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") =>
                {
                    Ok(Change::Reset)
                }
                [value] => {
                    let text = match value {
                        Expr::Value(v) => v.clone().into_string().unwrap_or_else(|| v.to_string()),
                        Expr::Identifier(i) => i.value.clone(),
                        other => other.to_string(),
                    };
                    parse(&text).map(Change::Set).map_err(invalid)
                }
                _ => Err(invalid(
                    "statement_timeout takes one value, e.g. SET statement_timeout = '30s'".into(),
                )),
            })
        }
        Statement::Reset(r) => match &r.reset {
            Reset::ALL => Some(Ok(Change::Reset)),
            Reset::ConfigurationParameter(name)
                if name.to_string().eq_ignore_ascii_case("statement_timeout") =>
            {
                Some(Ok(Change::Reset))
            }
            Reset::ConfigurationParameter(_) => None,
        },
        _ => None,
    }
}

/// A `statement_timeout` value: a number of milliseconds, or a number with a unit (`us`, `ms`,
/// `s`, `min`, `h`, `d`); `0` is `None`, no timeout.
pub(crate) fn parse(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(text.len());
    let (number, unit) = (text[..split].trim(), text[split..].trim());
    let bad = || {
        format!(
            "invalid value for parameter \"statement_timeout\": \"{text}\" (expected milliseconds, or a number with a unit: us, ms, s, min, h, d; 0 for none)"
        )
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let ms_per = match unit.to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(bad()),
    };
    let ms = (value * ms_per).round();
    if !ms.is_finite() || !(0.0..=f64::from(i32::MAX)).contains(&ms) {
        return Err(format!(
            "{} is outside the valid range for parameter \"statement_timeout\" (0 .. {} ms)",
            text,
            i32::MAX
        ));
    }
    Ok((ms > 0.0).then(|| Duration::from_millis(ms as u64)))
}

/// PostgreSQL's way of showing a timeout: the largest unit that divides it, `0` for none.
pub(crate) fn show(timeout: Option<Duration>) -> String {
    let Some(d) = timeout else {
        return "0".into();
    };
    let ms = d.as_millis();
    for (unit, per) in [("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)] {
        if ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// The timeout the session `SET`: `Some(None)` for `0` (no timeout), `None` when it set none
/// (the role's or the server's default applies).
pub(crate) fn session_setting<C: ClientInfo + ?Sized>(client: &C) -> Option<Option<Duration>> {
    let metadata = client.metadata();
    if let Some(ms) = metadata.get(KEY).and_then(|v| v.parse::<u64>().ok()) {
        return Some((ms > 0).then(|| Duration::from_millis(ms)));
    }
    metadata
        .get(UPSTREAM_KEY)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Some(Duration::from_millis(ms)))
}

fn apply(client: &mut dyn HookClient, change: Change) {
    let metadata = client.metadata_mut();
    match change {
        Change::Set(timeout) => {
            let ms = timeout.map_or(0, |d| d.as_millis());
            metadata.insert(KEY.into(), ms.to_string());
            match timeout {
                Some(_) => metadata.insert(UPSTREAM_KEY.into(), ms.to_string()),
                None => metadata.remove(UPSTREAM_KEY),
            };
        }
        Change::Reset => {
            metadata.remove(KEY);
            metadata.remove(UPSTREAM_KEY);
        }
    }
}

fn invalid(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22023".into(), message)))
}

/// Handles `SET`/`RESET statement_timeout` in both protocols (before `datafusion-postgres`'s
/// own `SET` hook, which would take `0` as "the default").
pub(crate) struct StatementTimeoutHook;

#[async_trait]
impl QueryHook for StatementTimeoutHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let change = match change(statement)? {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let tag = if change == Change::Reset && matches!(statement, Statement::Reset(_)) {
            "RESET"
        } else {
            "SET"
        };
        apply(client, change);
        Some(Ok(Response::Execution(Tag::new(tag))))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        Some(change(statement)?.map(|_| crate::no_rows_plan()))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let _ = plan;
        self.handle_simple_query(statement, ctx, client).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_postgresql_reads_them() {
        let ms = |n| Ok(Some(Duration::from_millis(n)));
        assert_eq!(parse("500"), ms(500));
        assert_eq!(parse("500ms"), ms(500));
        assert_eq!(parse("2s"), ms(2_000));
        assert_eq!(parse("1.5s"), ms(1_500));
        assert_eq!(parse("1min"), ms(60_000));
        assert_eq!(parse("2 h"), ms(7_200_000));
        assert_eq!(parse("1d"), ms(86_400_000));
        assert_eq!(parse("0"), Ok(None));
        assert_eq!(parse("0s"), Ok(None));
        assert!(parse("soon").unwrap_err().contains("\"soon\""));
        assert!(parse("5 fortnights").is_err());
        assert!(parse("-1").unwrap_err().contains("outside the valid range"));
    }

    #[test]
    fn shown_in_the_largest_unit() {
        let show_ms = |n| show(Some(Duration::from_millis(n)));
        assert_eq!(show(None), "0");
        assert_eq!(show_ms(500), "500ms");
        assert_eq!(show_ms(2_000), "2s");
        assert_eq!(show_ms(90_000), "90s");
        assert_eq!(show_ms(60_000), "1min");
        assert_eq!(show_ms(3_600_000), "1h");
    }
}
