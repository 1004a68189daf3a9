//! The schema-evolution planner: what a new source table spec (a `Relation` after `ALTER
//! TABLE`) asks of the lake table, and how the sink follows it.
//!
//! Columns are matched to Iceberg fields by source attribute number first ([`PROPERTY_ATTNUMS`]
//! records field id → attribute number), then by name, so a renamed column keeps its field and
//! its data. The planner ([`plan_schema_change`]) allows what Iceberg can follow without
//! rewriting data: added columns (optional, fresh field ids), dropped columns, renames, and
//! type promotions (`int` → `long`, `float` → `double`, a decimal's precision widened at the
//! same scale). Anything else — a different key, a type Iceberg cannot promote — stops the
//! table with the reason recorded in its properties ([`PROPERTY_STOPPED`]); the other tables
//! go on, and a re-snapshot of the table picks the new schema up.
//!
//! [`PROPERTY_ATTNUMS`]: super::PROPERTY_ATTNUMS
//! [`PROPERTY_STOPPED`]: super::PROPERTY_STOPPED

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use iceberg::spec::{NestedField, PrimitiveType, Schema as IcebergSchema, TableMetadata, Type};
use tarn_core::Result;

use super::LakeSink;
use super::buffer::write_pending;
use super::summary::{attnums_property, parse_attnums, stopped_property};
use crate::source::{ColumnSpec, TableSpec};

/// An evolution of a lake table's schema that a new source spec asks for.
#[derive(Debug)]
struct SchemaEvolution {
    /// The table's new schema.
    schema: IcebergSchema,
    /// `(field id, source attribute number)` of every column of the new spec.
    attnums: Vec<(i32, i16)>,
}

impl LakeSink {
    /// Follows a new spec of a source table: evolves the lake table's schema, or stops the
    /// table when the change is incompatible.
    pub(super) async fn relation(&mut self, spec: Arc<TableSpec>) -> Result<()> {
        let lake = self.lake.clone();
        let Some(state) = self.tables.get_mut(&spec.id) else {
            return Ok(());
        };
        if state.stopped.is_some() {
            return Ok(());
        }
        match plan_schema_change(state.table.metadata(), &state.spec, &spec) {
            Ok(None) => {
                state.spec = spec;
                Ok(())
            }
            Ok(Some(evolution)) => {
                // Rows buffered under the old schema go out first, their deletes planned
                // under the commit lock (see `maintenance`).
                self.hold_commits().await?;
                let state = self.tables.get_mut(&spec.id).expect("attached above");
                write_pending(&lake, state).await?;
                let props = attnums_property(evolution.attnums);
                state.table = lake.evolve_schema(&state.table, evolution.schema, props).await?;
                tracing::info!(table = %state.ident, source = %spec.qualified(), "schema evolved");
                // A dropped column moves the columns after it, the key's among them: rows of the
                // new spec have their key elsewhere. (The buffer was just written out, so no
                // buffered row has the old layout.)
                state.key_columns = spec.key_columns();
                state.spec = spec;
                Ok(())
            }
            Err(reason) => {
                tracing::error!(table = %state.ident, %reason, "stopping the table: incompatible schema change");
                metrics::counter!("tarn_cdc_tables_stopped_total").increment(1);
                state.buffer.clear();
                state.data_files.clear();
                state.deletes.clear();
                state.dirty = false;
                state.stopped = Some(reason.clone());
                state.table = lake
                    .set_properties(&state.ident, stopped_property(reason))
                    .await?;
                Ok(())
            }
        }
    }
}

fn iceberg_type_of(column: &ColumnSpec) -> Result<Type, String> {
    let arrow = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        &column.name,
        crate::value::arrow_type(&column.column_type),
        true,
    )]);
    let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow)
        .map_err(|e| format!("column {} cannot be mapped: {e}", column.name))?;
    Ok(schema.as_struct().fields()[0].field_type.as_ref().clone())
}

/// Whether two Iceberg types are the same, ignoring the ids of nested fields.
fn same_type(a: &Type, b: &Type) -> bool {
    match (a, b) {
        (Type::Primitive(x), Type::Primitive(y)) => x == y,
        (Type::List(x), Type::List(y)) => {
            x.element_field.required == y.element_field.required
                && same_type(&x.element_field.field_type, &y.element_field.field_type)
        }
        (Type::Struct(x), Type::Struct(y)) => {
            x.fields().len() == y.fields().len()
                && x.fields().iter().zip(y.fields()).all(|(f, g)| {
                    f.name == g.name && f.required == g.required && same_type(&f.field_type, &g.field_type)
                })
        }
        (Type::Map(x), Type::Map(y)) => {
            same_type(&x.key_field.field_type, &y.key_field.field_type)
                && same_type(&x.value_field.field_type, &y.value_field.field_type)
        }
        _ => false,
    }
}

/// Whether Iceberg can promote a column of type `from` to `to` without rewriting data.
fn promotable(from: &Type, to: &Type) -> bool {
    use PrimitiveType as P;
    match (from, to) {
        (a, b) if same_type(a, b) => true,
        (Type::Primitive(P::Int), Type::Primitive(P::Long)) => true,
        (Type::Primitive(P::Float), Type::Primitive(P::Double)) => true,
        (
            Type::Primitive(P::Decimal {
                precision: p1,
                scale: s1,
            }),
            Type::Primitive(P::Decimal {
                precision: p2,
                scale: s2,
            }),
        ) => s1 == s2 && p2 >= p1,
        _ => false,
    }
}

/// Gives fresh ids (from `next`) to the nested fields of a new column's type.
fn renumber(t: &Type, next: &mut i32) -> Type {
    match t {
        Type::Primitive(_) => t.clone(),
        Type::List(list) => {
            *next += 1;
            let id = *next;
            let element = renumber(&list.element_field.field_type, next);
            let mut field = NestedField::list_element(id, element, list.element_field.required);
            field.doc = list.element_field.doc.clone();
            Type::List(iceberg::spec::ListType {
                element_field: Arc::new(field),
            })
        }
        Type::Struct(s) => {
            let fields = s
                .fields()
                .iter()
                .map(|f| {
                    *next += 1;
                    let id = *next;
                    let ty = renumber(&f.field_type, next);
                    Arc::new(NestedField::new(id, f.name.clone(), ty, f.required))
                })
                .collect();
            Type::Struct(iceberg::spec::StructType::new(fields))
        }
        Type::Map(_) => t.clone(),
    }
}

/// The schema change a new source spec asks of the lake table (`metadata`, last written for
/// `old`): `Ok(None)` when nothing changes, `Ok(Some(_))` for an evolution, `Err(reason)` when
/// it is incompatible.
fn plan_schema_change(
    metadata: &TableMetadata,
    old: &TableSpec,
    new: &TableSpec,
) -> std::result::Result<Option<SchemaEvolution>, String> {
    let current = metadata.current_schema();
    let attnum_to_field = parse_attnums(metadata);
    let qualified = new.qualified();
    let old_keys: Vec<&str> = old
        .key_columns()
        .iter()
        .map(|&i| old.columns[i].name.as_str())
        .collect();
    let new_keys: Vec<&str> = new
        .key_columns()
        .iter()
        .map(|&i| new.columns[i].name.as_str())
        .collect();
    let mut fields: Vec<Arc<NestedField>> = Vec::new();
    let mut changed = false;
    let mut next_id = metadata.last_column_id();
    let mut used: HashSet<i32> = HashSet::new();
    let mut renames: HashMap<String, String> = HashMap::new();
    let mut attnums = Vec::new();
    for column in &new.columns {
        let existing = attnum_to_field
            .get(&column.attnum)
            .and_then(|id| current.field_by_id(*id))
            .or_else(|| current.field_by_name(&column.name));
        let new_type = iceberg_type_of(column)?;
        match existing {
            Some(field) if !used.contains(&field.id) => {
                used.insert(field.id);
                let mut f = field.as_ref().clone();
                if f.name != column.name {
                    renames.insert(f.name.clone(), column.name.clone());
                    f.name = column.name.clone();
                    changed = true;
                }
                if !same_type(&f.field_type, &new_type) {
                    if !promotable(&f.field_type, &new_type) {
                        return Err(format!(
                            "column {} of {qualified} changed type from {} to {} ({}), which Iceberg cannot promote; \
                             re-snapshot the table to pick up the new type",
                            column.name, f.field_type, new_type, column.type_name
                        ));
                    }
                    f.field_type = Box::new(new_type);
                    changed = true;
                }
                attnums.push((f.id, column.attnum));
                fields.push(Arc::new(f));
            }
            _ => {
                next_id += 1;
                let id = next_id;
                let ty = renumber(&new_type, &mut next_id);
                attnums.push((id, column.attnum));
                fields.push(Arc::new(NestedField::optional(id, column.name.clone(), ty)));
                changed = true;
            }
        }
    }
    if current.as_struct().fields().len() != used.len() {
        changed = true;
    }
    // The key must stay the same columns (renames allowed).
    let renamed_old_keys: Vec<String> = old_keys
        .iter()
        .map(|k| renames.get(*k).cloned().unwrap_or_else(|| (*k).to_string()))
        .collect();
    if old.key_kind != new.key_kind || renamed_old_keys != new_keys {
        if !changed && old_keys == new_keys {
            return Ok(None);
        }
        return Err(format!(
            "the key of {qualified} changed from ({}) to ({}); re-snapshot the table",
            old_keys.join(", "),
            new_keys.join(", ")
        ));
    }
    if !changed {
        return Ok(None);
    }
    let identifier_ids: Vec<i32> = current.identifier_field_ids().collect();
    let schema = IcebergSchema::builder()
        .with_schema_id(current.schema_id() + 1)
        .with_fields(fields)
        .with_identifier_field_ids(identifier_ids)
        .build()
        .map_err(|e| format!("cannot build the new schema of {qualified}: {e}"))?;
    Ok(Some(SchemaEvolution { schema, attnums }))
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{FormatVersion, PartitionSpec, SortOrder, TableMetadataBuilder};

    use super::*;
    use crate::source::KeyKind;
    use crate::value::ColumnType;

    fn column(name: &str, column_type: ColumnType, key: bool, attnum: i16) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            column_type,
            key,
            not_null: key,
            type_oid: 0,
            type_name: "t".into(),
            attnum,
        }
    }

    fn spec(columns: Vec<ColumnSpec>) -> TableSpec {
        TableSpec {
            id: 1,
            schema: "public".into(),
            name: "items".into(),
            columns,
            key_kind: KeyKind::PrimaryKey,
        }
    }

    /// `items (id bigint primary key, name text, qty int)`.
    fn items() -> TableSpec {
        spec(vec![
            column("id", ColumnType::Int64, true, 1),
            column("name", ColumnType::Text, false, 2),
            column("qty", ColumnType::Int32, false, 3),
        ])
    }

    /// The lake table the sink creates for `items()`: field ids 1, 2, 3, key `id`, attnums
    /// recorded.
    fn metadata() -> TableMetadata {
        let schema = IcebergSchema::builder()
            .with_fields(vec![
                Arc::new(NestedField::required(
                    1,
                    "id",
                    Type::Primitive(PrimitiveType::Long),
                )),
                Arc::new(NestedField::optional(
                    2,
                    "name",
                    Type::Primitive(PrimitiveType::String),
                )),
                Arc::new(NestedField::optional(
                    3,
                    "qty",
                    Type::Primitive(PrimitiveType::Int),
                )),
            ])
            .with_identifier_field_ids(vec![1])
            .build()
            .unwrap();
        TableMetadataBuilder::new(
            schema,
            PartitionSpec::unpartition_spec(),
            SortOrder::unsorted_order(),
            "memory://items".into(),
            FormatVersion::V2,
            attnums_property([(1, 1), (2, 2), (3, 3)]),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata
    }

    fn names_and_ids(evolution: &SchemaEvolution) -> Vec<(i32, String)> {
        evolution
            .schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.id, f.name.clone()))
            .collect()
    }

    #[test]
    fn the_same_spec_changes_nothing() {
        assert!(
            plan_schema_change(&metadata(), &items(), &items())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_renamed_column_keeps_its_field() {
        let mut new = items();
        new.columns[1].name = "title".into();
        let evolution = plan_schema_change(&metadata(), &items(), &new).unwrap().unwrap();
        assert_eq!(
            names_and_ids(&evolution),
            [(1, "id".into()), (2, "title".into()), (3, "qty".into())]
        );
        assert_eq!(evolution.attnums, [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(evolution.schema.identifier_field_ids().collect::<Vec<_>>(), [1]);
        // Renaming the key column keeps the key.
        let mut new = items();
        new.columns[0].name = "item_id".into();
        let evolution = plan_schema_change(&metadata(), &items(), &new).unwrap().unwrap();
        assert_eq!(names_and_ids(&evolution)[0], (1, "item_id".into()));
    }

    #[test]
    fn added_and_dropped_columns() {
        let mut new = items();
        new.columns.remove(1);
        new.columns.push(column(
            "tags",
            ColumnType::List(Box::new(ColumnType::Text)),
            false,
            4,
        ));
        let evolution = plan_schema_change(&metadata(), &items(), &new).unwrap().unwrap();
        assert_eq!(
            names_and_ids(&evolution),
            [(1, "id".into()), (3, "qty".into()), (4, "tags".into())]
        );
        // The new list's element gets a fresh id after the column's.
        let tags = evolution.schema.field_by_name("tags").unwrap();
        assert!(!tags.required);
        let Type::List(list) = tags.field_type.as_ref() else {
            panic!("tags is {}", tags.field_type);
        };
        assert_eq!(list.element_field.id, 5);
        assert_eq!(evolution.attnums, [(1, 1), (3, 3), (4, 4)]);
    }

    #[test]
    fn promotions_follow_and_other_type_changes_stop_the_table() {
        let mut new = items();
        new.columns[2].column_type = ColumnType::Int64;
        let evolution = plan_schema_change(&metadata(), &items(), &new).unwrap().unwrap();
        assert_eq!(
            evolution.schema.field_by_id(3).unwrap().field_type.as_ref(),
            &Type::Primitive(PrimitiveType::Long)
        );
        let mut new = items();
        new.columns[2].column_type = ColumnType::Text;
        let reason = plan_schema_change(&metadata(), &items(), &new).unwrap_err();
        assert!(
            reason.starts_with("column qty of public.items changed type from int to string"),
            "{reason}"
        );
        assert!(reason.contains("re-snapshot the table"), "{reason}");
    }

    #[test]
    fn a_new_key_stops_the_table() {
        let mut new = items();
        new.columns[1].key = true;
        let reason = plan_schema_change(&metadata(), &items(), &new).unwrap_err();
        assert_eq!(
            reason,
            "the key of public.items changed from (id) to (id, name); re-snapshot the table"
        );
    }

    #[test]
    fn promotion_rules() {
        use PrimitiveType as P;
        let p = Type::Primitive;
        let decimal = |precision, scale| p(P::Decimal { precision, scale });
        assert!(promotable(&p(P::Int), &p(P::Long)));
        assert!(promotable(&p(P::Float), &p(P::Double)));
        assert!(promotable(&decimal(10, 2), &decimal(12, 2)));
        assert!(promotable(&p(P::String), &p(P::String)));
        assert!(!promotable(&p(P::Long), &p(P::Int)));
        assert!(!promotable(&decimal(12, 2), &decimal(10, 2)));
        assert!(!promotable(&decimal(10, 2), &decimal(12, 3)));
        assert!(!promotable(&p(P::Int), &p(P::String)));
    }

    #[test]
    fn nested_types_compare_without_field_ids() {
        let list = |id, element| {
            Type::List(iceberg::spec::ListType {
                element_field: Arc::new(NestedField::list_element(id, element, false)),
            })
        };
        let text = Type::Primitive(PrimitiveType::String);
        assert!(same_type(&list(7, text.clone()), &list(9, text.clone())));
        assert!(!same_type(
            &list(7, text.clone()),
            &list(7, Type::Primitive(PrimitiveType::Int))
        ));
        let mut next = 10;
        let renumbered = renumber(&list(7, list(8, text)), &mut next);
        assert_eq!(next, 12);
        let Type::List(outer) = &renumbered else {
            unreachable!()
        };
        assert_eq!(outer.element_field.id, 11);
        let Type::List(inner) = outer.element_field.field_type.as_ref() else {
            unreachable!()
        };
        assert_eq!(inner.element_field.id, 12);
    }
}
