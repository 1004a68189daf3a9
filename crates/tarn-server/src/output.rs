//! Printing query results as a table, CSV or JSON lines.

use std::io::Write;

use anyhow::Result;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use clap::ValueEnum;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

/// How `tarn sql` prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned text table (rows are collected first to size the columns).
    Table,
    /// CSV with a header line, streamed.
    Csv,
    /// One JSON object per row, streamed.
    Json,
}

/// Prints every batch of `stream` to `out` in `format`; returns the row count.
pub async fn print_stream(
    mut stream: SendableRecordBatchStream,
    format: Format,
    out: &mut dyn Write,
) -> Result<usize> {
    let schema = stream.schema();
    let mut rows = 0;
    match format {
        Format::Table => {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(tarn_query::from_df_error)?;
                rows += batch.num_rows();
                batches.push(batch);
            }
            print_table(&schema, &batches, out)?;
            writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" })?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote_any = false;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(tarn_query::from_df_error)?;
                rows += batch.num_rows();
                writer.write(&batch)?;
                wrote_any = true;
            }
            if !wrote_any {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                drop(writer);
                writeln!(out, "{}", names.join(","))?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(tarn_query::from_df_error)?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(rows)
}

fn print_table(schema: &SchemaRef, batches: &[RecordBatch], out: &mut dyn Write) -> Result<()> {
    if batches.is_empty() {
        let empty = RecordBatch::new_empty(schema.clone());
        writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(&[empty])?)?;
    } else {
        writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(batches)?)?;
    }
    Ok(())
}
