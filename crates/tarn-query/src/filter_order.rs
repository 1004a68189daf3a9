//! Filters evaluate their cheapest conditions first.
//!
//! DataFusion evaluates `a AND b AND c` left to right, and once the conditions evaluated so far
//! keep at most a fifth of a batch it evaluates the rest on those rows only (pre-selection).
//! Queries write their conditions in any order: TPC-H's q12 tests a string column against two
//! values before the date range that keeps one row in seven, so the string comparisons ran on
//! every row. Like most engines, tarn orders a filter's conjuncts by what they cost per row:
//! comparisons of fixed-width columns with constants first, then comparisons between such
//! columns, then anything reading strings, then `LIKE`, casts and functions — keeping the
//! written order among equals.
//!
//! Only conditions that cannot fail move ahead of others: column comparisons never raise an
//! error, and a costlier condition (a cast, a division, a function) is never moved before a
//! cheaper one, so a guard such as `x <> 0 AND y / x > 1` keeps protecting what follows it.
//! The rule runs after DataFusion's own physical optimizer rules and changes nothing but the
//! order of a `FilterExec`'s conjuncts.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::Result as DFResult;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, LikeExpr, Literal, NotExpr,
};
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct OrderFilterConjuncts;

impl PhysicalOptimizerRule for OrderFilterConjuncts {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.as_any().downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(ordered) = ordered_predicate(filter.predicate(), &filter.input().schema()) else {
                return Ok(Transformed::no(node));
            };
            let rebuilt = FilterExecBuilder::from(filter).with_predicate(ordered).build()?;
            Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tarn_order_filter_conjuncts"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `predicate` with its conjuncts cheapest first, or `None` when the order stays.
fn ordered_predicate(predicate: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Arc<dyn PhysicalExpr>> {
    let conjuncts = split_conjunction(predicate);
    if conjuncts.len() < 2 {
        return None;
    }
    let costs: Vec<u32> = conjuncts.iter().map(|c| cost(c.as_ref(), schema)).collect();
    if costs.is_sorted() {
        return None;
    }
    let mut order: Vec<usize> = (0..conjuncts.len()).collect();
    order.sort_by_key(|&i| costs[i]);
    Some(conjunction(order.into_iter().map(|i| Arc::clone(conjuncts[i]))))
}

/// What evaluating `expr` costs per row, in rough units: a comparison of a fixed-width column
/// with a constant is 2.
fn cost(expr: &dyn PhysicalExpr, schema: &Schema) -> u32 {
    let any = expr.as_any();
    let children =
        |e: &dyn PhysicalExpr| -> u32 { e.children().iter().map(|c| cost(c.as_ref(), schema)).sum() };
    if let Some(column) = any.downcast_ref::<Column>() {
        return match schema.fields().get(column.index()).map(|f| f.data_type()) {
            Some(t) if t.is_primitive() || matches!(t, DataType::Boolean) => 1,
            _ => 4,
        };
    }
    if any.is::<Literal>() {
        return 0;
    }
    if let Some(binary) = any.downcast_ref::<BinaryExpr>() {
        let operands = cost(binary.left().as_ref(), schema) + cost(binary.right().as_ref(), schema);
        return match binary.op() {
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom
            | Operator::And
            | Operator::Or => 1 + operands,
            Operator::Plus | Operator::Minus | Operator::Multiply => 3 + operands,
            // Division and the rest can fail or are slow (regex, string concatenation).
            _ => 12 + operands,
        };
    }
    if any.is::<IsNullExpr>() || any.is::<IsNotNullExpr>() || any.is::<NotExpr>() {
        return 1 + children(expr);
    }
    if let Some(list) = any.downcast_ref::<InListExpr>() {
        return 3 + cost(list.expr().as_ref(), schema);
    }
    if any.is::<LikeExpr>() {
        return 10 + children(expr);
    }
    // Casts, CASE, functions, subquery results: costly, and possibly failing.
    20 + children(expr)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Field;
    use datafusion::common::ScalarValue;
    use datafusion::physical_expr::expressions::{col, lit};

    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("mode", DataType::Utf8View, false),
            Field::new("received", DataType::Date32, false),
            Field::new("committed", DataType::Date32, false),
            Field::new("x", DataType::Int64, false),
        ])
    }

    fn binary(l: Arc<dyn PhysicalExpr>, op: Operator, r: Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    #[test]
    fn cheap_comparisons_move_ahead_of_strings() {
        let s = schema();
        let mode = binary(
            binary(col("mode", &s).unwrap(), Operator::Eq, lit("MAIL")),
            Operator::Or,
            binary(col("mode", &s).unwrap(), Operator::Eq, lit("SHIP")),
        );
        let columns = binary(
            col("received", &s).unwrap(),
            Operator::Gt,
            col("committed", &s).unwrap(),
        );
        let range = binary(
            col("received", &s).unwrap(),
            Operator::GtEq,
            lit(ScalarValue::Date32(Some(8766))),
        );
        let predicate = conjunction([mode, columns, range]);
        let ordered = ordered_predicate(&predicate, &s).expect("reordered");
        let parts: Vec<String> = split_conjunction(&ordered)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            parts,
            [
                "received@1 >= 1994-01-01",
                "received@1 > committed@2",
                "mode@0 = MAIL OR mode@0 = SHIP"
            ]
        );
    }

    #[test]
    fn a_guard_stays_before_a_division() {
        let s = schema();
        let guard = binary(col("x", &s).unwrap(), Operator::NotEq, lit(0i64));
        let division = binary(
            binary(lit(10i64), Operator::Divide, col("x", &s).unwrap()),
            Operator::Gt,
            lit(1i64),
        );
        assert!(ordered_predicate(&conjunction([guard.clone(), division.clone()]), &s).is_none());
        let swapped = ordered_predicate(&conjunction([division, guard]), &s).expect("reordered");
        assert_eq!(split_conjunction(&swapped)[0].to_string(), "x@3 != 0");
    }
}
