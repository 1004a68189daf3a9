//! Table lineage kept in the lake itself: which tables a table's rows were computed from.
//!
//! A `CREATE TABLE ... AS SELECT` or `INSERT INTO ... SELECT` that reads lake tables records
//! them in the written table's property [`PROPERTY_UPSTREAM`] (a sorted, comma-separated list
//! of `namespace.table`, merged with what earlier statements recorded), in a property commit
//! after the data commit. Change data capture records its lineage its own way (the
//! `tarn.cdc.source-table` and `tarn.cdc.pipeline` properties). `tarn table lineage` and the
//! DataHub export read both.

use std::collections::BTreeSet;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::TableReference;
use iceberg::table::Table;

/// The table property listing a table's upstream lake tables.
pub const PROPERTY_UPSTREAM: &str = "tarn.lineage.upstream";

/// Every table `plan` scans (subqueries included), in plan order, each once.
pub fn scanned_tables(plan: &LogicalPlan) -> Vec<TableReference> {
    let mut out: Vec<TableReference> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && !out.contains(&scan.table_name)
        {
            out.push(scan.table_name.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The upstream tables `table` records, `namespace.table` each.
pub fn upstream_of(table: &Table) -> BTreeSet<String> {
    table
        .metadata()
        .properties()
        .get(PROPERTY_UPSTREAM)
        .map(|list| {
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The property value for `upstream`.
pub fn upstream_property(upstream: &BTreeSet<String>) -> String {
    upstream.iter().cloned().collect::<Vec<_>>().join(",")
}
