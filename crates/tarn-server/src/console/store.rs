//! Saved charts (a query, a chart kind and its columns), each owned by the user who saved
//! it, in a table of the catalog database beside the jobs' run history
//! (`tarn_console_charts`, created with `IF NOT EXISTS` so replicas starting together are
//! safe). A chart marked for the dashboard is drawn there; the others are saved queries the
//! editor lists.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row};

/// A saved chart or query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedChart {
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) name: String,
    pub(crate) sql: String,
    /// `bar`, `line`, `area`, `scatter`, `pie`, or `table` (a saved query).
    pub(crate) kind: String,
    pub(crate) x: String,
    pub(crate) y: String,
    pub(crate) on_dashboard: bool,
    pub(crate) created_at: i64,
}

/// The saved charts' table.
pub(crate) struct ChartStore {
    pool: AnyPool,
    store: crate::jobs::store::Store,
}

impl ChartStore {
    /// Creates the table in `jobs`' catalog database when it is not there.
    pub(crate) async fn open(jobs: &crate::jobs::store::Store) -> Result<Self> {
        let pool = jobs.pool().clone();
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS tarn_console_charts (
                id VARCHAR(64) NOT NULL PRIMARY KEY,
                owner VARCHAR(255) NOT NULL,
                name VARCHAR(255) NOT NULL,
                query TEXT NOT NULL,
                kind VARCHAR(16) NOT NULL,
                x_column VARCHAR(255) NOT NULL,
                y_column VARCHAR(255) NOT NULL,
                on_dashboard BIGINT NOT NULL,
                created_at BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .context("cannot create the console's table tarn_console_charts in the catalog database")?;
        Ok(Self {
            pool,
            store: jobs.clone(),
        })
    }

    /// Saves `chart`.
    pub(crate) async fn save(&self, chart: &SavedChart) -> Result<()> {
        sqlx::query(&self.store.sql(
            "INSERT INTO tarn_console_charts (id, owner, name, query, kind, x_column, y_column, on_dashboard, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&chart.id)
        .bind(&chart.owner)
        .bind(&chart.name)
        .bind(&chart.sql)
        .bind(&chart.kind)
        .bind(&chart.x)
        .bind(&chart.y)
        .bind(i64::from(chart.on_dashboard))
        .bind(chart.created_at)
        .execute(&self.pool)
        .await
        .context("cannot save the chart in tarn_console_charts")?;
        Ok(())
    }

    fn from_row(row: &sqlx::any::AnyRow) -> Result<SavedChart> {
        Ok(SavedChart {
            id: row.try_get("id")?,
            owner: row.try_get("owner")?,
            name: row.try_get("name")?,
            sql: row.try_get("query")?,
            kind: row.try_get("kind")?,
            x: row.try_get("x_column")?,
            y: row.try_get("y_column")?,
            on_dashboard: row.try_get::<i64, _>("on_dashboard")? != 0,
            created_at: row.try_get("created_at")?,
        })
    }

    /// `owner`'s saved charts and queries, newest first.
    pub(crate) async fn list(&self, owner: &str) -> Result<Vec<SavedChart>> {
        sqlx::query(&self.store.sql(
            "SELECT id, owner, name, query, kind, x_column, y_column, on_dashboard, created_at \
             FROM tarn_console_charts WHERE owner = ? ORDER BY created_at DESC, id",
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .context("cannot read tarn_console_charts")?
        .iter()
        .map(Self::from_row)
        .collect()
    }

    /// Chart `id` of `owner`.
    pub(crate) async fn get(&self, owner: &str, id: &str) -> Result<Option<SavedChart>> {
        let row = sqlx::query(&self.store.sql(
            "SELECT id, owner, name, query, kind, x_column, y_column, on_dashboard, created_at \
             FROM tarn_console_charts WHERE owner = ? AND id = ?",
        ))
        .bind(owner)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("cannot read tarn_console_charts")?;
        row.as_ref().map(Self::from_row).transpose()
    }

    /// Deletes chart `id` of `owner`; whether it was there.
    pub(crate) async fn delete(&self, owner: &str, id: &str) -> Result<bool> {
        let done = sqlx::query(
            &self
                .store
                .sql("DELETE FROM tarn_console_charts WHERE owner = ? AND id = ?"),
        )
        .bind(owner)
        .bind(id)
        .execute(&self.pool)
        .await
        .context("cannot delete from tarn_console_charts")?;
        Ok(done.rows_affected() > 0)
    }
}
