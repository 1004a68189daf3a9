//! A scripted, in-memory [`ChangeSource`]: a fixed list of transactions replayed from the
//! position its [`ScriptedSlot`] was last acknowledged at, as a replication slot does, with a
//! crash injected at a chosen step.
//!
//! It exists to test what the lake sink promises whatever the source: after a crash at any
//! step — while a transaction is being delivered, after the writer spilled data files, after a
//! lake commit whose acknowledgement never reached the source — a restart replays to the same
//! tables, nothing lost and nothing doubled. The tests below crash at every step of a script
//! and compare the table with the script's final state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tarn_core::{Error, ErrorKind, Result};

use crate::pipeline::SourceContext;
use crate::position::Lsn;
use crate::sink::ChangeSink;
use crate::source::{ChangeSource, FlushRule, Next, Position, SourceEvent, TableSpec};

/// One transaction of a script: its changes (inserts, updates, deletes, truncates) and where
/// it commits.
#[derive(Debug, Clone)]
pub struct ScriptedTransaction {
    /// The commit position ([`SourceEvent::Begin`]).
    pub commit: Lsn,
    /// The end position ([`SourceEvent::Commit`]); what acknowledging it means.
    pub end: Lsn,
    /// The changes, in order.
    pub changes: Vec<SourceEvent>,
}

/// What survives a crash of the pipeline: the acknowledged position (a slot's
/// `confirmed_flush_lsn`).
#[derive(Debug, Default)]
pub struct ScriptedSlot {
    acknowledged: Mutex<Lsn>,
}

impl ScriptedSlot {
    /// The position last acknowledged.
    pub fn acknowledged(&self) -> Lsn {
        *self.acknowledged.lock().expect("slot poisoned")
    }
}

/// Where a run of a [`ScriptedSource`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Before delivering the `n`-th event of the run (0-based).
    BeforeEvent(usize),
    /// At the `n`-th acknowledgement of the run (0-based), after the lake committed and before
    /// the slot records it.
    AtAcknowledge(usize),
}

/// The scripted source; see the module doc.
pub struct ScriptedSource {
    tables: Vec<Arc<TableSpec>>,
    events: Vec<SourceEvent>,
    next: usize,
    batch: usize,
    slot: Arc<ScriptedSlot>,
    crash: Option<Crash>,
    acknowledgements: usize,
    received: Option<Position>,
}

impl ScriptedSource {
    /// A source over `tables` that delivers the transactions of `script` ending after the
    /// slot's acknowledged position, `batch` events per [`ChangeSource::next`] (so batches
    /// split transactions), failing at `crash`.
    pub fn new(
        tables: Vec<Arc<TableSpec>>,
        script: &[ScriptedTransaction],
        slot: Arc<ScriptedSlot>,
        batch: usize,
        crash: Option<Crash>,
    ) -> Self {
        let from = slot.acknowledged();
        let mut events: Vec<SourceEvent> = tables.iter().cloned().map(SourceEvent::Relation).collect();
        for txn in script.iter().filter(|t| t.end > from) {
            events.push(SourceEvent::Begin {
                commit_position: txn.commit.into(),
                transaction_id: None,
            });
            events.extend(txn.changes.iter().cloned());
            events.push(SourceEvent::Commit {
                position: txn.end.into(),
                commit_time_micros: 1_700_000_000_000_000,
            });
        }
        Self {
            tables,
            events,
            next: 0,
            batch: batch.max(1),
            slot,
            crash,
            acknowledgements: 0,
            received: None,
        }
    }

    fn crashed(&self, what: &str) -> Error {
        Error::new(ErrorKind::Source, format!("scripted crash {what}"))
    }
}

impl ChangeSource for ScriptedSource {
    async fn start<K: ChangeSink>(
        &mut self,
        sink: &mut K,
        _ctx: &SourceContext<'_>,
    ) -> Result<Option<Position>> {
        for spec in &self.tables {
            sink.attach(spec.clone()).await?;
        }
        Ok(Some(self.slot.acknowledged().into()))
    }

    async fn next(&mut self, _ctx: &SourceContext<'_>, _deadline: Instant) -> Result<Next> {
        if self.next == self.events.len() {
            return Ok(Next::Stopped);
        }
        let end = (self.next + self.batch).min(self.events.len());
        if let Some(Crash::BeforeEvent(n)) = self.crash
            && (self.next..end).contains(&n)
        {
            return Err(self.crashed(&format!("before event {n}")));
        }
        let events = self.events[self.next..end].to_vec();
        for e in &events {
            if let SourceEvent::Commit { position, .. } = e {
                self.received = Some(position.clone());
            }
        }
        self.next = end;
        Ok(Next::Events(events))
    }

    async fn acknowledge<K: ChangeSink>(&mut self, position: &Position, _sink: &mut K) -> Result<()> {
        let n = self.acknowledgements;
        self.acknowledgements += 1;
        if self.crash == Some(Crash::AtAcknowledge(n)) {
            return Err(self.crashed(&format!("at acknowledgement {n}")));
        }
        let lsn = position
            .lsn()
            .ok_or_else(|| Error::new(ErrorKind::Internal, format!("{position} is not an LSN")))?;
        let mut acked = self.slot.acknowledged.lock().expect("slot poisoned");
        *acked = (*acked).max(lsn);
        Ok(())
    }

    async fn adopt<K: ChangeSink>(
        &mut self,
        spec: Arc<TableSpec>,
        sink: &mut K,
        _ctx: &SourceContext<'_>,
    ) -> Result<()> {
        sink.attach(spec).await.map(|_| ())
    }

    async fn tick<K: ChangeSink>(&mut self, _sink: &mut K, _ctx: &SourceContext<'_>) -> Result<()> {
        Ok(())
    }

    async fn stop<K: ChangeSink>(&mut self, _sink: &mut K, _durable: Option<&Position>) -> Result<()> {
        Ok(())
    }

    fn received(&self) -> Option<Position> {
        self.received.clone()
    }

    fn flush_rule(&self) -> FlushRule {
        FlushRule::OldestChange
    }
}

/// The rows each table holds after `script`, by table id and key (the first column).
pub fn expected_rows(script: &[ScriptedTransaction]) -> BTreeMap<u32, BTreeMap<String, Vec<Option<String>>>> {
    let text = |v: &crate::source::Value| v.as_text().map(|b| String::from_utf8_lossy(b).into_owned());
    let mut tables: BTreeMap<u32, BTreeMap<String, Vec<Option<String>>>> = BTreeMap::new();
    for txn in script {
        for change in &txn.changes {
            match change {
                SourceEvent::Insert { table, new } => {
                    let row: Vec<Option<String>> = new.iter().map(text).collect();
                    let key = row[0].clone().unwrap_or_default();
                    tables.entry(*table).or_default().insert(key, row);
                }
                SourceEvent::Update { table, old, new } => {
                    let row: Vec<Option<String>> = new.iter().map(text).collect();
                    let rows = tables.entry(*table).or_default();
                    if let Some(old) = old {
                        rows.remove(&text(&old[0]).unwrap_or_default());
                    }
                    rows.insert(row[0].clone().unwrap_or_default(), row);
                }
                SourceEvent::Delete { table, old } => {
                    tables
                        .entry(*table)
                        .or_default()
                        .remove(&text(&old[0]).unwrap_or_default());
                }
                SourceEvent::Truncate { tables: ids } => {
                    for id in ids {
                        tables.entry(*id).or_default().clear();
                    }
                }
                _ => {}
            }
        }
    }
    tables
}

/// Test helpers shared by the sink's tests: a two-column table, its rows, reading it back.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::Array;
    use arrow::util::display::array_value_to_string;
    use bytes::Bytes;
    use futures::TryStreamExt;
    use tarn_core::Config;
    use tarn_lake::Lake;

    use crate::sink::LakeSink;
    use crate::source::{ColumnSpec, KeyKind, TableSpec, Value};
    use crate::value::ColumnType;

    /// Table `public.<name>` (`id int8` primary key, `v text`).
    pub(crate) fn table(id: u32, name: &str) -> Arc<TableSpec> {
        Arc::new(TableSpec {
            id,
            schema: "public".into(),
            name: name.into(),
            columns: vec![
                ColumnSpec::new("id", ColumnType::Int64, true, 1),
                ColumnSpec::new("v", ColumnType::Text, false, 2),
            ],
            key_kind: KeyKind::PrimaryKey,
        })
    }

    pub(crate) fn row(id: i64, v: Option<&str>) -> Vec<Value> {
        vec![
            Value::Text(Bytes::from(id.to_string())),
            v.map_or(Value::Null, |v| Value::Text(Bytes::from(v.to_string()))),
        ]
    }

    /// Every row of the lake table of `spec`, keyed by its first column.
    pub(crate) async fn lake_rows(
        config: &Config,
        spec: &TableSpec,
    ) -> BTreeMap<String, Vec<Option<String>>> {
        let lake = Lake::open(config).await.unwrap();
        let sink = LakeSink::new(
            lake.clone(),
            crate::sink::SinkOptions {
                pipeline: config.cdc.pipeline.clone(),
                namespace: config.cdc.namespace.clone(),
                table_name: config.cdc.table_name.clone(),
                spill_bytes: 1 << 20,
            },
        );
        let table = lake.load_table(&sink.lake_ident(spec)).await.unwrap();
        let batches: Vec<arrow::record_batch::RecordBatch> = table
            .scan()
            .select(["id", "v"])
            .build()
            .unwrap()
            .to_arrow()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut rows = BTreeMap::new();
        for b in &batches {
            for r in 0..b.num_rows() {
                let cells: Vec<Option<String>> = (0..2)
                    .map(|c| {
                        let col = b.column(c);
                        (!col.is_null(r)).then(|| array_value_to_string(col, r).unwrap())
                    })
                    .collect();
                let key = cells[0].clone().unwrap();
                assert!(
                    rows.insert(key.clone(), cells).is_none(),
                    "row {key} twice in {}",
                    spec.qualified()
                );
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tarn_core::Config;
    use tarn_lake::Lake;
    use tokio_util::sync::CancellationToken;

    use super::testing::{lake_rows, row, table};
    use super::*;
    use crate::pipeline::{PipelineStatus, RunOptions, drive};

    /// Two tables; inserts, updates (one changing the key), deletes, a truncate, a
    /// transaction over both tables, a long value (to make the writer spill).
    fn script() -> Vec<ScriptedTransaction> {
        let long = "x".repeat(700);
        let txns: Vec<Vec<SourceEvent>> = vec![
            (1..=4)
                .map(|i| SourceEvent::Insert {
                    table: 1,
                    new: row(i, Some("a")),
                })
                .collect(),
            vec![
                SourceEvent::Update {
                    table: 1,
                    old: None,
                    new: row(2, Some("b")),
                },
                SourceEvent::Insert {
                    table: 2,
                    new: row(100, Some(&long)),
                },
            ],
            vec![SourceEvent::Delete {
                table: 1,
                old: row(3, None),
            }],
            vec![
                SourceEvent::Update {
                    table: 1,
                    old: Some(row(4, None)),
                    new: row(40, Some("moved")),
                },
                SourceEvent::Insert {
                    table: 2,
                    new: row(101, Some(&long)),
                },
                SourceEvent::Insert {
                    table: 1,
                    new: row(5, None),
                },
            ],
            vec![SourceEvent::Truncate { tables: vec![2] }],
            vec![
                SourceEvent::Insert {
                    table: 2,
                    new: row(102, Some("after truncate")),
                },
                SourceEvent::Update {
                    table: 1,
                    old: None,
                    new: row(1, Some("last")),
                },
            ],
        ];
        txns.into_iter()
            .enumerate()
            .map(|(i, changes)| {
                let base = 0x1000 * (i as u64 + 1);
                ScriptedTransaction {
                    commit: Lsn(base + 0x10),
                    end: Lsn(base + 0x20),
                    changes,
                }
            })
            .collect()
    }

    fn config(dir: &std::path::Path) -> Config {
        let mut config = Config::defaults(dir);
        config.cdc.pipeline = "scripted".into();
        // Commit every few changes, spill data files within a transaction.
        config.cdc.flush.max_rows = 3;
        config.cdc.flush.max_bytes = 1200;
        config.cdc.flush.interval = "1h".into();
        config.maintenance.auto = false;
        config
    }

    async fn run(
        config: &Config,
        script: &[ScriptedTransaction],
        slot: &Arc<ScriptedSlot>,
        crash: Option<Crash>,
    ) -> Result<()> {
        let lake = Lake::open(config).await?;
        let source = ScriptedSource::new(
            vec![table(1, "items"), table(2, "other")],
            script,
            slot.clone(),
            2,
            crash,
        );
        let (options, status, stop) = (
            RunOptions::default(),
            PipelineStatus::default(),
            CancellationToken::new(),
        );
        let ctx = SourceContext {
            config,
            options: &options,
            status: &status,
            stop: &stop,
        };
        drive(source, crate::pipeline::lake_sink(config, lake), &ctx).await
    }

    async fn assert_lake_equals_script(config: &Config, script: &[ScriptedTransaction], what: &str) {
        let expected = expected_rows(script);
        for spec in [table(1, "items"), table(2, "other")] {
            let want = expected.get(&spec.id).cloned().unwrap_or_default();
            let got = lake_rows(config, &spec).await;
            assert_eq!(got, want, "{} after {what}", spec.qualified());
        }
    }

    #[tokio::test]
    async fn without_a_crash_the_lake_equals_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let script = script();
        let slot = Arc::new(ScriptedSlot::default());
        run(&config, &script, &slot, None).await.unwrap();
        assert_eq!(slot.acknowledged(), script.last().unwrap().end);
        assert_lake_equals_script(&config, &script, "one run").await;
        // A second run replays nothing and changes nothing.
        run(&config, &script, &slot, None).await.unwrap();
        assert_lake_equals_script(&config, &script, "a second run").await;
    }

    /// Crashes at every event and every acknowledgement of a first run, then restarts: the
    /// lake always ends equal to the script.
    #[tokio::test]
    async fn a_crash_at_any_step_then_a_restart_ends_equal() {
        let script = script();
        let events = ScriptedSource::new(
            vec![table(1, "items"), table(2, "other")],
            &script,
            Arc::new(ScriptedSlot::default()),
            1,
            None,
        )
        .events
        .len();
        let mut crashes: Vec<Crash> = (0..events).map(Crash::BeforeEvent).collect();
        crashes.extend((0..8).map(Crash::AtAcknowledge));
        let mut fired = 0;
        for crash in crashes {
            let dir = tempfile::tempdir().unwrap();
            let config = config(dir.path());
            let slot = Arc::new(ScriptedSlot::default());
            match run(&config, &script, &slot, Some(crash)).await {
                Err(e) if e.to_string().contains("scripted crash") => fired += 1,
                Err(e) => panic!("{crash:?}: unexpected error {e}"),
                Ok(()) => {}
            }
            run(&config, &script, &slot, None).await.unwrap();
            assert_eq!(slot.acknowledged(), script.last().unwrap().end, "{crash:?}");
            assert_lake_equals_script(&config, &script, &format!("{crash:?} and a restart")).await;
        }
        // Every event crash fires, and at least a few acknowledgement crashes.
        assert!(fired >= events + 3, "only {fired} crashes fired");
    }

    /// Two crashes in a row at acknowledgements: the replay of an already committed range
    /// is skipped each time.
    #[tokio::test]
    async fn repeated_crashes_after_commits_double_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let script = script();
        let slot = Arc::new(ScriptedSlot::default());
        for n in [1, 0, 2] {
            let result = run(&config, &script, &slot, Some(Crash::AtAcknowledge(n))).await;
            assert!(result.is_err(), "crash at acknowledgement {n} did not fire");
        }
        run(&config, &script, &slot, None).await.unwrap();
        assert_lake_equals_script(&config, &script, "three crashes").await;
    }
}
