//! Rows that a join's build side already rules out are dropped as they leave the scan.
//!
//! DataFusion turns a hash join's finished build side (its key range and key set) and a top-k
//! sort's current threshold into *dynamic filters* and pushes them into the Parquet scans
//! below. With Parquet filter pushdown off (tarn's default: decoding row by row through a
//! filter is slower on most scans, see BENCHMARKS.md), a scan uses them only to skip files and
//! row groups, so every row of a row group that might match still travels through
//! repartitioning, aggregation and the join's probe. TPC-H q17 aggregated all six million
//! `lineitem` rows to find the 200 parts the outer query keeps.
//!
//! This rule, run after DataFusion's own, puts a [`RuntimeFilterExec`] with a scan's dynamic
//! filters right above it, so the rows are dropped where the scan produces them. A dynamic
//! filter passes every row until its producer has finished, and never drops a row its producer
//! would keep: the query's result is unchanged. The node gives up on what does not pay:
//! filters routed by hash partition (those of partitioned joins, which hash every row to pick
//! its partition's key set; on TPC-H they cost more than they saved) are skipped, and once a
//! partition has seen [`PROBE_ROWS`] rows of which the filters kept more than [`KEEP_LIMIT`],
//! it passes the rest through untouched.
//! Nothing is added when the session already pushes filters into the Parquet decoder
//! (`datafusion.execution.parquet.pushdown_filters`).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::compute::{and, filter_record_batch};
use arrow::record_batch::RecordBatch;
use datafusion::common::Result as DFResult;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CaseExpr, DynamicFilterPhysicalExpr, Literal};
use datafusion::physical_expr::utils::{reassign_expr_columns, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// Rows a partition filters before judging whether filtering pays.
pub const PROBE_ROWS: usize = 200_000;

/// The share of rows kept above which filtering stops paying.
pub const KEEP_LIMIT: f64 = 0.8;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ApplyDynamicFilters;

impl PhysicalOptimizerRule for ApplyDynamicFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if config.execution.parquet.pushdown_filters {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(filter) = dynamic_filters_of(node.as_ref()) else {
                return Ok(Transformed::no(node));
            };
            let wrapped = RuntimeFilterExec::new(node, filter);
            Ok(Transformed::yes(Arc::new(wrapped) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tarn_apply_dynamic_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The dynamic filters pushed into `plan` when it is a file scan, over its output columns.
fn dynamic_filters_of(plan: &dyn ExecutionPlan) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
    let scan = plan.as_any().downcast_ref::<DataSourceExec>()?;
    let config = scan.data_source().as_any().downcast_ref::<FileScanConfig>()?;
    let predicate = config.file_source().filter()?;
    let schema = plan.schema();
    let dynamic: Vec<Arc<dyn PhysicalExpr>> = split_conjunction(&predicate)
        .into_iter()
        .filter(|e| e.as_any().is::<DynamicFilterPhysicalExpr>())
        // The scan's filter names columns of the whole table; a filter on a column the scan
        // does not output cannot be applied above it.
        .filter_map(|e| reassign_expr_columns(Arc::clone(e), &schema).ok())
        .collect();
    (!dynamic.is_empty()).then_some(dynamic)
}

/// Drops the rows a scan's dynamic filters rule out; see the module documentation.
#[derive(Debug)]
pub struct RuntimeFilterExec {
    input: Arc<dyn ExecutionPlan>,
    /// Each a [`DynamicFilterPhysicalExpr`] over `input`'s columns.
    filters: Vec<Arc<dyn PhysicalExpr>>,
    metrics: ExecutionPlanMetricsSet,
}

impl RuntimeFilterExec {
    fn new(input: Arc<dyn ExecutionPlan>, filters: Vec<Arc<dyn PhysicalExpr>>) -> Self {
        Self {
            input,
            filters,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for RuntimeFilterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let filters: Vec<String> = self.filters.iter().map(|e| e.to_string()).collect();
        write!(f, "RuntimeFilterExec: {}", filters.join(" AND "))
    }
}

impl ExecutionPlan for RuntimeFilterExec {
    fn name(&self) -> &str {
        "RuntimeFilterExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let child = crate::provider::only_child("RuntimeFilterExec", children)?;
        Ok(Arc::new(Self::new(child, self.filters.clone())))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let mut state = FilterState {
            filters: self
                .filters
                .iter()
                .map(|f| Resolved::new(Arc::clone(f)))
                .collect(),
            baseline: BaselineMetrics::new(&self.metrics, partition),
            dropped: MetricBuilder::new(&self.metrics).counter("rows_dropped", partition),
            seen: 0,
            kept: 0,
            given_up: false,
        };
        let stream = input.map(move |batch| batch.and_then(|b| state.apply(b)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// A dynamic filter and what it currently is: DataFusion rebuilds the expression on every
/// read of it, so it is read again only when its producer has updated it.
struct Resolved {
    filter: Arc<dyn PhysicalExpr>,
    generation: Option<u64>,
    /// `None` while the filter passes everything or is routed by hash partition.
    current: Option<Arc<dyn PhysicalExpr>>,
}

impl Resolved {
    fn new(filter: Arc<dyn PhysicalExpr>) -> Self {
        Self {
            filter,
            generation: None,
            current: None,
        }
    }

    fn current(&mut self) -> DFResult<Option<&Arc<dyn PhysicalExpr>>> {
        let generation = self.filter.snapshot_generation();
        if self.generation != Some(generation) {
            self.generation = Some(generation);
            self.current = match self.filter.as_any().downcast_ref::<DynamicFilterPhysicalExpr>() {
                Some(dynamic) => {
                    let current = dynamic.current()?;
                    let skip = is_true(&current) || current.exists(|e| Ok(e.as_any().is::<CaseExpr>()))?;
                    (!skip).then_some(current)
                }
                None => None,
            };
        }
        Ok(self.current.as_ref())
    }
}

/// One partition's filtering.
struct FilterState {
    filters: Vec<Resolved>,
    baseline: BaselineMetrics,
    dropped: Count,
    seen: usize,
    kept: usize,
    given_up: bool,
}

impl FilterState {
    fn apply(&mut self, batch: RecordBatch) -> DFResult<RecordBatch> {
        if self.given_up || batch.num_rows() == 0 {
            return Ok(batch.record_output(&self.baseline));
        }
        let timer = self.baseline.elapsed_compute().timer();
        let mut mask: Option<BooleanArray> = None;
        for filter in &mut self.filters {
            let Some(current) = filter.current()? else {
                continue;
            };
            let values = match current.evaluate(&batch)? {
                ColumnarValue::Array(a) => a,
                ColumnarValue::Scalar(s) => s.to_array_of_size(batch.num_rows())?,
            };
            let Some(values) = values.as_any().downcast_ref::<BooleanArray>() else {
                return Err(DataFusionError::Internal(format!(
                    "dynamic filter {current} gave {} values, not booleans",
                    values.data_type()
                )));
            };
            mask = Some(match mask {
                Some(m) => and(&m, values)?,
                None => values.clone(),
            });
        }
        let out = match mask {
            None => batch,
            Some(mask) => {
                let rows = batch.num_rows();
                // NULL drops a row, as in a WHERE clause.
                let kept = mask.values().count_set_bits()
                    - mask.nulls().map_or(0, |n| {
                        (0..rows)
                            .filter(|&i| n.is_null(i) && mask.values().value(i))
                            .count()
                    });
                self.seen += rows;
                self.kept += kept;
                self.dropped.add(rows - kept);
                if self.seen >= PROBE_ROWS && self.kept as f64 > KEEP_LIMIT * self.seen as f64 {
                    self.given_up = true;
                }
                if kept == rows {
                    batch
                } else {
                    filter_record_batch(&batch, &mask)?
                }
            }
        };
        drop(timer);
        Ok(out.record_output(&self.baseline))
    }
}

fn is_true(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.as_any()
        .downcast_ref::<Literal>()
        .is_some_and(|l| matches!(l.value(), ScalarValue::Boolean(Some(true))))
}
