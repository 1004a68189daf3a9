//! sqllogictest: every `tests/slt/*.slt` file runs against a fresh lake.

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use tarn_query::{Output, TarnSession};

use crate::TestLake;

struct Lake {
    session: TarnSession,
}

#[async_trait]
impl sqllogictest::AsyncDB for Lake {
    type Error = tarn_core::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, tarn_core::Error> {
        match self.session.run_sql(sql).await? {
            Output::Rows(stream) => {
                let schema = stream.schema();
                let batches = datafusion::physical_plan::common::collect(stream)
                    .await
                    .map_err(tarn_query::from_df_error)?;
                let rows = crate::render(&batches)
                    .into_iter()
                    .map(|line| {
                        if schema.fields().len() == 1 {
                            vec![line]
                        } else {
                            line.split('|').map(str::to_string).collect()
                        }
                    })
                    .map(|cells: Vec<String>| {
                        cells
                            .into_iter()
                            .map(|c| if c.is_empty() { "(empty)".into() } else { c })
                            .collect()
                    })
                    .collect();
                Ok(DBOutput::Rows {
                    types: vec![DefaultColumnType::Any; schema.fields().len()],
                    rows,
                })
            }
            Output::Command { rows, .. } => Ok(DBOutput::StatementComplete(rows.unwrap_or(0))),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tarn"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let dir = tarn_test_utils::workspace_root().join("tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for file in files {
        let t = TestLake::new().await;
        let session = t.session.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let session = session.clone();
            async move { Ok(Lake { session }) }
        });
        runner
            .run_file_async(&file)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        drop(t);
    }
}
