//! Table commits: `POST .../tables/{table}`, `POST /v1/transactions/commit`, and the creates
//! and registrations that insert a catalog row.
//!
//! Contract, as the specification defines it:
//!
//! - Each change's requirements (`assert-create`, `assert-table-uuid`,
//!   `assert-ref-snapshot-id`, `assert-last-assigned-field-id`, `assert-current-schema-id`,
//!   `assert-last-assigned-partition-id`, `assert-default-spec-id`,
//!   `assert-default-sort-order-id`) are checked against the table's metadata as the catalog
//!   holds it *now* (`iceberg`'s `TableRequirement::check`). One that fails is 409
//!   `CommitFailedException` and nothing is written.
//! - The updates are applied in order with `iceberg`'s `TableUpdate::apply` on a
//!   `TableMetadataBuilder`; one that does not apply (an unknown schema id, a snapshot with a
//!   sequence number older than the table's) is 400 and nothing is committed.
//! - The new metadata is written as `<table location>/metadata/<version>-<uuid>.metadata.json`,
//!   then the catalog rows of all tables of the request are swapped in one catalog-database
//!   transaction, each conditional on the metadata location the requirements were checked
//!   against ([`Lake::swap_metadata_locations`]). A concurrent commit makes the swap fail as a
//!   whole; the files of the attempt are deleted and the change is checked and applied again on
//!   the new metadata, up to `commit_retries` times, then 409. So a requirement is always
//!   checked against the very metadata the commit replaces: no lost update.
//! - A change whose table does not exist is a create (the commit of a `stage-create`) when it
//!   requires `assert-create`: the metadata is built from its updates and the catalog row is
//!   inserted in the same transaction. Otherwise 404 `NoSuchTableException`.
//!
//! Atomicity of a multi-table transaction is the catalog database's: all catalog rows change or
//! none. A change without updates writes nothing, and its requirements are checked when the
//! request is staged, not again inside the swap transaction.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use iceberg::spec::{FormatVersion, SortOrder, TableMetadata, TableMetadataBuilder};
use iceberg::{MetadataLocation, NamespaceIdent, TableIdent, TableRequirement, TableUpdate};
use tarn_core::ErrorKind;
use tarn_lake::{Lake, MetadataSwap};
use uuid::Uuid;

use crate::error::{RestError, display_table};

/// One table's part of a commit.
#[derive(Debug, Clone)]
pub(crate) struct TableChange {
    pub(crate) ident: TableIdent,
    pub(crate) requirements: Vec<TableRequirement>,
    pub(crate) updates: Vec<TableUpdate>,
}

/// A table as committed.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    pub(crate) metadata_location: String,
    pub(crate) metadata: TableMetadata,
}

/// A change ready to swap in: its new metadata is written.
struct Staged {
    ident: TableIdent,
    swap: Option<MetadataSwap>,
    committed: Committed,
}

/// Commits `changes` all or nothing; see the module doc.
pub(crate) async fn commit(
    lake: &Lake,
    changes: &[TableChange],
    retries: u32,
) -> Result<Vec<Committed>, RestError> {
    let mut seen = HashSet::new();
    for change in changes {
        if !seen.insert(&change.ident) {
            return Err(RestError::bad_request(format!(
                "table {} appears twice in one transaction",
                display_table(&change.ident)
            )));
        }
    }
    let mut attempt = 0u32;
    loop {
        let mut staged = Vec::with_capacity(changes.len());
        for change in changes {
            match stage(lake, change).await {
                Ok(s) => staged.push(s),
                Err(e) => {
                    discard(lake, &staged).await;
                    return Err(e);
                }
            }
        }
        let swaps: Vec<MetadataSwap> = staged.iter().filter_map(|s| s.swap.clone()).collect();
        let swapped = if swaps.is_empty() {
            true
        } else {
            lake.swap_metadata_locations(&swaps).await.map_err(|e| {
                RestError::commit_state_unknown(format!("the catalog database failed during the commit: {e}"))
            })?
        };
        if swapped {
            let mut out = Vec::with_capacity(staged.len());
            for s in staged {
                if s.swap.is_some() {
                    // Keep it as the table's latest, so tarn's next load skips reading it back.
                    let _ = lake.open_table(
                        &s.ident,
                        s.committed.metadata_location.clone(),
                        s.committed.metadata.clone(),
                    );
                }
                out.push(s.committed);
            }
            return Ok(out);
        }
        discard(lake, &staged).await;
        let names: Vec<String> = changes.iter().map(|c| display_table(&c.ident)).collect();
        metrics::counter!(crate::COMMIT_CONFLICTS_METRIC).increment(1);
        if attempt >= retries {
            return Err(RestError::commit_failed(format!(
                "other writers committed to {} first {} times in a row",
                names.join(", "),
                attempt + 1
            )));
        }
        attempt += 1;
        tracing::debug!(tables = %names.join(", "), attempt, "REST commit lost a race; re-checking requirements");
        tokio::time::sleep(tarn_lake::commit::retry_backoff(attempt - 1)).await;
    }
}

/// Deletes the metadata files of an attempt that did not commit.
async fn discard(lake: &Lake, staged: &[Staged]) {
    for s in staged.iter().filter(|s| s.swap.is_some()) {
        if let Err(e) = lake.file_io().delete(&s.committed.metadata_location).await {
            tracing::warn!(file = %s.committed.metadata_location, error = %e, "cannot delete the metadata file of a lost commit");
        }
    }
}

/// Checks `change` against the table as the catalog holds it now and writes its new metadata.
async fn stage(lake: &Lake, change: &TableChange) -> Result<Staged, RestError> {
    let ident = &change.ident;
    let current = match lake.load_table(ident).await {
        Ok(table) => Some(table),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            return Err(RestError::internal(format!(
                "cannot load table {}: {e}",
                display_table(ident)
            )));
        }
    };
    let Some(table) = current else {
        if !change.requirements.contains(&TableRequirement::NotExist) {
            return Err(RestError::no_such_table(ident));
        }
        for requirement in &change.requirements {
            requirement
                .check(None)
                .map_err(|e| RestError::from_iceberg(&format!("commit to {}", display_table(ident)), &e))?;
        }
        let location = default_table_location(lake, ident.namespace(), ident.name()).await?;
        let metadata = metadata_for_create(&change.updates, location).map_err(|e| {
            RestError::from_iceberg(&format!("cannot create table {}", display_table(ident)), &e)
        })?;
        return write_staged(lake, ident, None, metadata).await;
    };
    let location = table
        .metadata_location()
        .ok_or_else(|| {
            RestError::internal(format!("table {} has no metadata location", display_table(ident)))
        })?
        .to_string();
    let base = table.metadata();
    for requirement in &change.requirements {
        requirement
            .check(Some(base))
            .map_err(|e| RestError::from_iceberg(&format!("commit to {}", display_table(ident)), &e))?;
    }
    if change.updates.is_empty() {
        return Ok(Staged {
            ident: ident.clone(),
            swap: None,
            committed: Committed {
                metadata_location: location,
                metadata: base.clone(),
            },
        });
    }
    let mut builder = TableMetadataBuilder::new_from_metadata(base.clone(), Some(location.clone()));
    for update in change.updates.iter().cloned() {
        builder = update.apply(builder).map_err(|e| {
            RestError::from_iceberg(&format!("invalid update of {}", display_table(ident)), &e)
        })?;
    }
    let metadata = builder
        .build()
        .map_err(|e| RestError::from_iceberg(&format!("invalid update of {}", display_table(ident)), &e))?
        .metadata;
    write_staged(lake, ident, Some(location), metadata).await
}

/// Writes `metadata` as the table's next metadata file.
async fn write_staged(
    lake: &Lake,
    ident: &TableIdent,
    current: Option<String>,
    metadata: TableMetadata,
) -> Result<Staged, RestError> {
    let location = next_metadata_location(current.as_deref(), &metadata)
        .map_err(|e| RestError::from_iceberg(&format!("table {}", display_table(ident)), &e))?;
    let text = location.to_string();
    metadata
        .write_to(lake.file_io(), &location)
        .await
        .map_err(|e| RestError::internal(format!("cannot write metadata file {text}: {e}")))?;
    Ok(Staged {
        ident: ident.clone(),
        swap: Some(MetadataSwap {
            ident: ident.clone(),
            expected: current,
            new_location: text.clone(),
        }),
        committed: Committed {
            metadata_location: text,
            metadata,
        },
    })
}

/// `<location>/metadata/<version>-<uuid>.metadata.json` (with `.gz` when the table asks for
/// compressed metadata), one version past `current`'s. The location is the new metadata's, so a
/// `set-location` moves the metadata files with it.
pub(crate) fn next_metadata_location(
    current: Option<&str>,
    metadata: &TableMetadata,
) -> iceberg::Result<MetadataLocation> {
    let version = match current {
        None => 0,
        Some(current) => current
            .rsplit('/')
            .next()
            .and_then(|name| name.split('-').next())
            .and_then(|v| v.parse::<i32>().ok())
            // A metadata file named otherwise (Hadoop tables' `v3.metadata.json`).
            .unwrap_or(i32::try_from(metadata.metadata_log().len()).unwrap_or(0))
            .saturating_add(1),
    };
    let path = format!(
        "{}/metadata/{version:05}-{}.metadata.json",
        metadata.location().trim_end_matches('/'),
        Uuid::new_v4()
    );
    Ok(MetadataLocation::from_str(&path)?.with_new_metadata(metadata))
}

/// The metadata of a table created by a commit (`stage-create`, then a commit requiring
/// `assert-create`): its updates carry the schema, spec, sort order, location and properties.
/// The builder starts from the first of each (with fresh field ids, as every new table), then
/// every update is applied in order, so re-adding what it started with changes nothing.
fn metadata_for_create(updates: &[TableUpdate], default_location: String) -> iceberg::Result<TableMetadata> {
    let schema = updates
        .iter()
        .find_map(|u| match u {
            TableUpdate::AddSchema { schema } => Some(schema.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                "a commit that creates a table must add a schema (add-schema)",
            )
        })?;
    let spec = updates
        .iter()
        .find_map(|u| match u {
            TableUpdate::AddSpec { spec } => Some(spec.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let order = updates
        .iter()
        .find_map(|u| match u {
            TableUpdate::AddSortOrder { sort_order } => Some(sort_order.clone()),
            _ => None,
        })
        .unwrap_or_else(SortOrder::unsorted_order);
    let location = updates
        .iter()
        .rev()
        .find_map(|u| match u {
            TableUpdate::SetLocation { location } => Some(location.clone()),
            _ => None,
        })
        .unwrap_or(default_location);
    let format_version = updates
        .iter()
        .rev()
        .find_map(|u| match u {
            TableUpdate::UpgradeFormatVersion { format_version } => Some(*format_version),
            _ => None,
        })
        .unwrap_or(FormatVersion::V2);
    let mut builder =
        TableMetadataBuilder::new(schema, spec, order, location, format_version, HashMap::new())?;
    for update in updates.iter().cloned() {
        builder = update.apply(builder)?;
    }
    Ok(builder.build()?.metadata)
}

/// Where a new table lives: under its namespace's `location` property when set, else
/// `<warehouse>/<namespace levels>/<table>` — the SQL catalog's rule, so tables created through
/// REST and through tarn's SQL are laid out alike.
pub(crate) async fn default_table_location(
    lake: &Lake,
    ns: &NamespaceIdent,
    table: &str,
) -> Result<String, RestError> {
    let namespace = lake.catalog().get_namespace(ns).await.map_err(|e| {
        if e.kind() == iceberg::ErrorKind::NamespaceNotFound {
            RestError::no_such_namespace(ns)
        } else {
            RestError::from_iceberg(&format!("cannot load namespace {}", ns.join(".")), &e)
        }
    })?;
    let base = match namespace.properties().get("location") {
        Some(location) => location.trim_end_matches('/').to_string(),
        None => format!("{}/{}", lake.warehouse().trim_end_matches('/'), ns.join("/")),
    };
    Ok(format!("{base}/{table}"))
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{NestedField, PrimitiveType, Schema, Type, UnboundPartitionSpec};

    use super::*;

    fn metadata(location: &str) -> TableMetadata {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        TableMetadataBuilder::new(
            schema,
            UnboundPartitionSpec::default(),
            SortOrder::unsorted_order(),
            location.into(),
            FormatVersion::V2,
            HashMap::new(),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata
    }

    #[test]
    fn metadata_files_count_up_from_the_current_one() {
        let m = metadata("file:///w/ns/t");
        let first = next_metadata_location(None, &m).unwrap().to_string();
        assert!(first.starts_with("file:///w/ns/t/metadata/00000-"), "{first}");
        let next = next_metadata_location(Some(&first), &m).unwrap().to_string();
        assert!(next.starts_with("file:///w/ns/t/metadata/00001-"), "{next}");
        let hadoop = next_metadata_location(Some("file:///w/ns/t/metadata/v7.metadata.json"), &m)
            .unwrap()
            .to_string();
        assert!(hadoop.starts_with("file:///w/ns/t/metadata/00001-"), "{hadoop}");
    }

    #[test]
    fn create_from_updates_keeps_the_staged_metadata() {
        let staged = metadata("file:///w/ns/t");
        let updates = vec![
            TableUpdate::AssignUuid { uuid: staged.uuid() },
            TableUpdate::UpgradeFormatVersion {
                format_version: FormatVersion::V2,
            },
            TableUpdate::AddSchema {
                schema: staged.current_schema().as_ref().clone(),
            },
            TableUpdate::SetCurrentSchema { schema_id: -1 },
            TableUpdate::AddSpec {
                spec: staged.default_partition_spec().as_ref().clone().into_unbound(),
            },
            TableUpdate::SetDefaultSpec { spec_id: -1 },
            TableUpdate::AddSortOrder {
                sort_order: SortOrder::unsorted_order(),
            },
            TableUpdate::SetDefaultSortOrder { sort_order_id: -1 },
            TableUpdate::SetLocation {
                location: "file:///w/ns/t".into(),
            },
            TableUpdate::SetProperties {
                updates: HashMap::from([("owner".to_string(), "me".to_string())]),
            },
        ];
        let created = metadata_for_create(&updates, "file:///elsewhere".into()).unwrap();
        assert_eq!(created.uuid(), staged.uuid());
        assert_eq!(created.schemas_iter().count(), 1);
        assert_eq!(created.current_schema(), staged.current_schema());
        assert_eq!(created.location(), "file:///w/ns/t");
        assert_eq!(created.properties().get("owner").map(String::as_str), Some("me"));
        assert!(metadata_for_create(&[], "file:///x".into()).is_err());
    }
}
