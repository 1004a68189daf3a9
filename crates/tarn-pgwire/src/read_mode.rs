//! `SET tarn.read_mode = 'latest' | 'committed'`, `RESET tarn.read_mode` and
//! `SET tarn.read_mode TO DEFAULT`: whether a session's queries over a pipeline's tables
//! include the changes the pipeline has not committed yet ([`tarn_query::bridge`]).
//! `SHOW tarn.read_mode` is answered by `ShowSettingsHook` with the mode in force (the
//! session's, else `query.read_mode`). The mode applies when a statement is planned.
//!
//! `SHOW tarn.read_position` shows the source position the session's last statement that
//! read a pipeline's tables was consistent to ([`tarn_query::bridge::ReadPositions`]; empty
//! before any such read): every source transaction ending at or before it is in the answer,
//! none after. Statements that read no pipeline table leave it as it was.

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
use tarn_query::bridge::ReadMode;

/// The setting's name, and the client metadata key the session's choice is kept under.
pub(crate) const NAME: &str = "tarn.read_mode";

/// The read position's name, and the client metadata key it is kept under.
pub(crate) const POSITION: &str = "tarn.read_position";

/// Keeps the position a statement's reads were at (`positions`, recorded while it ran) for
/// `SHOW tarn.read_position`, when it read a pipeline's table.
pub(crate) fn keep_position<C: ClientInfo + ?Sized>(
    client: &mut C,
    positions: &tarn_query::bridge::ReadPositions,
) {
    if let Some(shown) = positions.shown() {
        client.metadata_mut().insert(POSITION.into(), shown);
    }
}

/// What `SHOW tarn.read_position` shows.
pub(crate) fn shown_position<C: ClientInfo + ?Sized>(client: &C) -> String {
    client.metadata().get(POSITION).cloned().unwrap_or_default()
}

/// What a statement does to `tarn.read_mode`: `Some(mode)` sets it, `None` resets it.
fn change(statement: &Statement) -> Option<PgWireResult<Option<ReadMode>>> {
    match statement {
        Statement::Set(Set::SingleAssignment { variable, values, .. })
            if variable.to_string().eq_ignore_ascii_case(NAME) =>
        {
            Some(match values.as_slice() {
                [Expr::Identifier(i)]
                    if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") =>
                {
                    Ok(None)
                }
                [value] => {
                    let text = match value {
                        Expr::Value(v) => v.clone().into_string().unwrap_or_else(|| v.to_string()),
                        Expr::Identifier(i) => i.value.clone(),
                        other => other.to_string(),
                    };
                    text.parse::<ReadMode>().map(Some).map_err(invalid)
                }
                _ => Err(invalid(format!(
                    "{NAME} takes one value, e.g. SET {NAME} = 'committed'"
                ))),
            })
        }
        Statement::Reset(r) => match &r.reset {
            Reset::ALL => Some(Ok(None)),
            Reset::ConfigurationParameter(name) if name.to_string().eq_ignore_ascii_case(NAME) => {
                Some(Ok(None))
            }
            Reset::ConfigurationParameter(_) => None,
        },
        _ => None,
    }
}

fn invalid(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22023".into(), message)))
}

/// The mode the session set, if it set one.
pub(crate) fn session_mode<C: ClientInfo + ?Sized>(client: &C) -> Option<ReadMode> {
    client.metadata().get(NAME).and_then(|v| v.parse().ok())
}

/// Handles `SET`/`RESET tarn.read_mode` in both protocols.
pub(crate) struct ReadModeHook;

#[async_trait]
impl QueryHook for ReadModeHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let mode = match change(statement)? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let metadata = client.metadata_mut();
        match mode {
            Some(m) => {
                metadata.insert(NAME.into(), m.as_str().into());
            }
            None => {
                metadata.remove(NAME);
            }
        }
        // `RESET ALL` goes on to the other settings' hooks.
        if matches!(statement, Statement::Reset(r) if matches!(r.reset, Reset::ALL)) {
            return None;
        }
        let tag = if matches!(statement, Statement::Reset(_)) {
            "RESET"
        } else {
            "SET"
        };
        Some(Ok(Response::Execution(Tag::new(tag))))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if matches!(statement, Statement::Reset(r) if matches!(r.reset, Reset::ALL)) {
            return None;
        }
        Some(change(statement)?.map(|_| crate::no_rows_plan()))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.handle_simple_query(statement, ctx, client).await
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn parsed(sql: &str) -> Option<PgWireResult<Option<ReadMode>>> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        change(&statements[0])
    }

    #[test]
    fn set_and_reset_are_read() {
        assert_eq!(
            parsed("SET tarn.read_mode = 'committed'").unwrap().unwrap(),
            Some(ReadMode::Committed)
        );
        assert_eq!(
            parsed("set tarn.read_mode to latest").unwrap().unwrap(),
            Some(ReadMode::Latest)
        );
        assert_eq!(parsed("SET tarn.read_mode TO DEFAULT").unwrap().unwrap(), None);
        assert_eq!(parsed("RESET tarn.read_mode").unwrap().unwrap(), None);
        assert!(parsed("SET search_path = public").is_none());
        assert!(parsed("RESET statement_timeout").is_none());
        let Some(Err(PgWireError::UserError(info))) = parsed("SET tarn.read_mode = 'soon'") else {
            panic!("a bad value is refused");
        };
        assert_eq!(info.code, "22023");
        assert!(
            info.message.contains("'latest' or 'committed'"),
            "{}",
            info.message
        );
    }
}
