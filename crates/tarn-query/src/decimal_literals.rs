//! Decimal literals cast to floating point get the nearest float, as in PostgreSQL.
//!
//! tarn's SQL reads `1.5` and `1e15` as exact decimals (`parse_float_as_decimal`, so DECIMAL
//! columns get exact values, as in PostgreSQL). Where such a literal becomes a `double
//! precision` or `real` — `CAST(1e15 AS DOUBLE PRECISION)`, or a `VALUES` list or `INSERT`
//! whose column is a float — Arrow's cast divides the unscaled integer by a power of ten in
//! floating point. For a literal written with an exponent the scale is negative and that power
//! (`1e-15`) is inexact in binary, so `1e15` came out as `999999999999999.9`; an unscaled value
//! above 2^53 rounds twice. PostgreSQL converts the decimal's text, which gives the nearest
//! float. This analyzer rule does the same for casts of decimal literals (the only decimals
//! with a negative scale come from such literals), before DataFusion folds the cast; the
//! expression keeps its name, so result columns are named as before.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Cast, Expr, LogicalPlan, TryCast};
use datafusion::optimizer::analyzer::AnalyzerRule;

/// The analyzer rule; registered on every tarn session after DataFusion's own rules.
#[derive(Debug, Default)]
pub(crate) struct ExactDecimalLiterals;

impl ExactDecimalLiterals {
    pub(crate) fn rule() -> Arc<dyn AnalyzerRule + Send + Sync> {
        Arc::new(Self)
    }
}

impl AnalyzerRule for ExactDecimalLiterals {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let names = NamePreserver::new(&plan);
            plan.map_expressions(|expr| {
                let name = names.save(&expr);
                let rewritten = expr.transform_up(exact_cast)?;
                Ok(if rewritten.transformed {
                    rewritten.update_data(|e| name.restore(e))
                } else {
                    rewritten
                })
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tarn_exact_decimal_literals"
    }
}

fn exact_cast(expr: Expr) -> Result<Transformed<Expr>> {
    let (inner, to) = match &expr {
        Expr::Cast(Cast { expr, data_type }) | Expr::TryCast(TryCast { expr, data_type }) => {
            (expr.as_ref(), data_type)
        }
        _ => return Ok(Transformed::no(expr)),
    };
    let Expr::Literal(ScalarValue::Decimal128(value, _, scale), metadata) = inner else {
        return Ok(Transformed::no(expr));
    };
    let literal = match (to, value) {
        (DataType::Float64, Some(v)) => ScalarValue::Float64(decimal_text(*v, *scale).parse().ok()),
        (DataType::Float32, Some(v)) => ScalarValue::Float32(decimal_text(*v, *scale).parse().ok()),
        (DataType::Float64, None) => ScalarValue::Float64(None),
        (DataType::Float32, None) => ScalarValue::Float32(None),
        _ => return Ok(Transformed::no(expr)),
    };
    Ok(Transformed::yes(Expr::Literal(literal, metadata.clone())))
}

/// `value × 10^-scale` written out in decimal (`1e15` for (1, -15), `0.25` for (25, 2)), which
/// Rust's float parser rounds to the nearest float.
fn decimal_text(value: i128, scale: i8) -> String {
    format!("{value}e{}", -i32::from(scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// A session reading `1.5` as a decimal, as tarn's does, with the rule.
    fn context() -> SessionContext {
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_analyzer_rule(ExactDecimalLiterals::rule())
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .sql_parser
            .parse_float_as_decimal = true;
        ctx
    }

    async fn one_float(sql: &str) -> f64 {
        let batches = context().sql(sql).await.unwrap().collect().await.unwrap();
        datafusion::arrow::util::display::array_value_to_string(batches[0].column(0), 0)
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn exponent_literals_become_the_nearest_float() {
        // Arrow's cast gave 999999999999999.9 for each of these.
        assert_eq!(one_float("SELECT CAST(1e15 AS DOUBLE)").await, 1e15);
        assert_eq!(one_float("SELECT CAST(2.5e-3 AS DOUBLE)").await, 0.0025);
        assert_eq!(one_float("SELECT CAST(1e15 AS REAL)").await, 1e15);
        assert_eq!(
            one_float("SELECT x FROM (VALUES (1e15), (CAST(1 AS DOUBLE))) v(x) ORDER BY x DESC").await,
            1e15
        );
        // Nested, and the result column keeps its name.
        let df = context().sql("SELECT CAST(1e15 AS DOUBLE) + 1").await.unwrap();
        let name = df.schema().field(0).name().clone();
        let batches = df.collect().await.unwrap();
        assert_eq!(batches[0].schema().field(0).name(), &name);
        assert_eq!(
            datafusion::arrow::util::display::array_value_to_string(batches[0].column(0), 0)
                .unwrap()
                .parse::<f64>()
                .unwrap(),
            1_000_000_000_000_001.0
        );
    }

    #[test]
    fn decimal_text_is_exact() {
        assert_eq!(decimal_text(1, -15), "1e15");
        assert_eq!(decimal_text(25, 2), "25e-2");
        assert_eq!(decimal_text(-7, 0), "-7e0");
        assert_eq!(decimal_text(25, 2).parse::<f64>().unwrap(), 0.25);
    }
}
