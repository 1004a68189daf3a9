//! The schemas PostgreSQL clients see: one database (the lake's catalog) whose schemas are the
//! lake's namespaces and, for each external catalog ([`tarn_query::federation`]), its schemas
//! as `catalog.schema` (`shop.public`).
//!
//! A PostgreSQL client knows databases and schemas, not catalogs: it lists `pg_namespace` and
//! `pg_class` and then names a table `schema.table`. The emulated `pg_catalog` listed every
//! catalog's schemas by their own names, so a foreign `shop.public.customers` was shown as
//! `public.customers` — merged into the lake's `public`, and resolved there (to nothing, or to
//! a lake table of the same name) when a BI tool queried it by the name it had listed. Here the
//! emulated `pg_catalog` reads the catalogs through [`PgView`], which names the foreign
//! schemas `shop.public`, and [`qualify_foreign_names`] turns the names clients then write,
//! `"shop.public".customers` (and columns qualified by them), into `shop.public.customers`
//! before planning, so the statement reads the foreign table through the one path every
//! statement takes (governance included). A lake namespace of the same name wins.
//! `information_schema` keeps DataFusion's view (`table_catalog` `shop`, `table_schema`
//! `public`).

use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::CatalogProviderList;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::ast::{Expr, Ident, ObjectName, ObjectNamePart, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;

/// Schemas of an external catalog that are not shown: its own catalog relations.
const HIDDEN_SCHEMAS: [&str; 2] = ["information_schema", "pg_catalog"];

/// The name a foreign schema is shown by.
pub(crate) fn foreign_namespace(catalog: &str, schema: &str) -> String {
    format!("{catalog}.{schema}")
}

/// The catalogs as PostgreSQL clients see them (module doc).
#[derive(Debug, Clone)]
pub(crate) struct PgView {
    catalogs: Arc<dyn CatalogProviderList>,
    lake: String,
}

impl PgView {
    pub(crate) fn new(catalogs: Arc<dyn CatalogProviderList>, lake: &str) -> Self {
        Self {
            catalogs,
            lake: lake.to_string(),
        }
    }

    /// The external catalog and schema that the lake catalog's schema `name` shows, when it
    /// is a foreign one (`shop.public`) and no lake namespace has that name.
    pub(crate) fn foreign(&self, name: &str) -> Option<(String, String)> {
        let (catalog, schema) = name.split_once('.')?;
        if catalog == self.lake || HIDDEN_SCHEMAS.contains(&schema) {
            return None;
        }
        let lake = self.catalogs.catalog(&self.lake)?;
        if lake.schema_names().iter().any(|s| s == name) {
            return None;
        }
        let external = self.catalogs.catalog(catalog)?;
        external
            .schema_names()
            .iter()
            .any(|s| s == schema)
            .then(|| (catalog.to_string(), schema.to_string()))
    }

    /// The real (catalog, schema) of schema `schema` of catalog `catalog` as shown.
    fn resolve(&self, catalog: &str, schema: &str) -> Option<(String, String)> {
        if catalog != self.lake {
            return None;
        }
        Some(
            self.foreign(schema)
                .unwrap_or_else(|| (catalog.to_string(), schema.to_string())),
        )
    }

    /// Whether table `table` exists in schema `schema` as shown (a lake namespace or a foreign
    /// schema).
    pub(crate) fn table_exists(&self, schema: &str, table: &str) -> bool {
        let (catalog, schema) = self
            .foreign(schema)
            .unwrap_or_else(|| (self.lake.clone(), schema.to_string()));
        self.catalogs
            .catalog(&catalog)
            .and_then(|c| c.schema(&schema))
            .is_some_and(|s| s.table_exist(table))
    }

    /// Whether `sql` may name a foreign schema as shown (a quoted `"catalog.` of an external
    /// catalog): a cheap test before parsing.
    fn may_name_foreign(&self, sql: &str) -> bool {
        sql.contains('"')
            && CatalogProviderList::catalog_names(self.catalogs.as_ref())
                .iter()
                .any(|c| *c != self.lake && sql.contains(&format!("\"{c}.")))
    }
}

#[async_trait]
impl CatalogInfo for PgView {
    async fn catalog_names(&self) -> Result<Vec<String>, DataFusionError> {
        Ok(vec![self.lake.clone()])
    }

    async fn schema_names(&self, catalog_name: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        if catalog_name != self.lake {
            return Ok(None);
        }
        let Some(lake) = self.catalogs.catalog(&self.lake) else {
            return Ok(None);
        };
        let mut names = lake.schema_names();
        for catalog in CatalogProviderList::catalog_names(self.catalogs.as_ref()) {
            if catalog == self.lake {
                continue;
            }
            let Some(external) = self.catalogs.catalog(&catalog) else {
                continue;
            };
            for schema in external.schema_names() {
                let shown = foreign_namespace(&catalog, &schema);
                if !HIDDEN_SCHEMAS.contains(&schema.as_str()) && !names.contains(&shown) {
                    names.push(shown);
                }
            }
        }
        Ok(Some(names))
    }

    async fn table_names(
        &self,
        catalog_name: &str,
        schema_name: &str,
    ) -> Result<Option<Vec<String>>, DataFusionError> {
        let Some((catalog, schema)) = self.resolve(catalog_name, schema_name) else {
            return Ok(None);
        };
        self.catalogs.table_names(&catalog, &schema).await
    }

    async fn table_schema(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> Result<Option<SchemaRef>, DataFusionError> {
        let Some((catalog, schema)) = self.resolve(catalog_name, schema_name) else {
            return Ok(None);
        };
        self.catalogs.table_schema(&catalog, &schema, table_name).await
    }

    async fn table_type(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> Result<Option<TableType>, DataFusionError> {
        let Some((catalog, schema)) = self.resolve(catalog_name, schema_name) else {
            return Ok(None);
        };
        self.catalogs.table_type(&catalog, &schema, table_name).await
    }
}

/// `sql` with every name that starts with a foreign schema as shown (`"shop.public".customers`,
/// `"shop.public".customers.id`) written with the catalog and schema apart
/// (`shop.public.customers`); `None` when nothing changes or it does not parse.
pub(crate) fn qualify_foreign_names(sql: &str, view: &PgView) -> Option<String> {
    if !view.may_name_foreign(sql) {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut rewriter = ForeignNames { view, changed: false };
    for statement in &mut statements {
        let _ = statement.visit(&mut rewriter);
    }
    rewriter.changed.then(|| crate::pg_rewrite::sql_of(&statements))
}

struct ForeignNames<'a> {
    view: &'a PgView,
    changed: bool,
}

impl ForeignNames<'_> {
    /// `parts` (a name of `len` parts after an optional leading database name) with a leading
    /// foreign schema as shown split into its catalog and schema, the database name dropped.
    fn split(&mut self, parts: &[Ident], len: usize) -> Option<Vec<Ident>> {
        let rest = match parts {
            [database, rest @ ..] if rest.len() == len && database.value == self.view.lake => rest,
            _ if parts.len() == len => parts,
            _ => return None,
        };
        let first = &rest[0];
        first.quote_style?;
        let (catalog, schema) = self.view.foreign(&first.value)?;
        self.changed = true;
        let quoted = |value: String| Ident::with_quote('"', value);
        let mut split = vec![quoted(catalog), quoted(schema)];
        split.extend(rest[1..].iter().cloned());
        Some(split)
    }
}

impl VisitorMut for ForeignNames<'_> {
    type Break = ();

    fn post_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<Self::Break> {
        let idents: Option<Vec<Ident>> = relation
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(ident) => Some(ident.clone()),
                _ => None,
            })
            .collect();
        // `schema.table`.
        if let Some(split) = idents.and_then(|idents| self.split(&idents, 2)) {
            *relation = ObjectName(split.into_iter().map(ObjectNamePart::Identifier).collect());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Self::Break> {
        // `schema.table.column` (two parts are `table.column`).
        if let Expr::CompoundIdentifier(idents) = expr
            && let Some(split) = self.split(idents, 3)
        {
            *idents = split;
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::catalog::{
        CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
    };

    use super::*;

    /// The lake `tarn` (namespaces `public` and `shop.local`) and an external catalog `shop`
    /// (schemas `public`, `local` and `information_schema`).
    fn view() -> PgView {
        let catalog = |schemas: &[&str]| {
            let c = MemoryCatalogProvider::new();
            for s in schemas {
                c.register_schema(s, Arc::new(MemorySchemaProvider::new()))
                    .unwrap();
            }
            Arc::new(c)
        };
        let list = MemoryCatalogProviderList::new();
        list.register_catalog("tarn".into(), catalog(&["public", "shop.local"]));
        list.register_catalog("shop".into(), catalog(&["public", "local", "information_schema"]));
        PgView::new(Arc::new(list), "tarn")
    }

    #[tokio::test]
    async fn foreign_schemas_are_shown_beside_the_lakes_and_resolve() {
        let v = view();
        let mut schemas = v.schema_names("tarn").await.unwrap().unwrap();
        schemas.sort();
        assert_eq!(
            schemas,
            ["public", "shop.local", "shop.public"],
            "a lake namespace wins"
        );
        assert_eq!(v.catalog_names().await.unwrap(), ["tarn"]);
        assert_eq!(v.schema_names("shop").await.unwrap(), None);
        assert_eq!(v.foreign("shop.public"), Some(("shop".into(), "public".into())));
        assert_eq!(v.foreign("shop.local"), None);
        assert_eq!(v.foreign("shop.information_schema"), None);
        assert_eq!(v.foreign("nowhere.public"), None);
    }

    #[test]
    fn names_with_a_foreign_schema_are_split() {
        let v = view();
        let q = |sql: &str| qualify_foreign_names(sql, &v);
        let out =
            q(r#"SELECT "shop.public"."customers"."id", c.name FROM "shop.public"."customers" c"#).unwrap();
        assert!(
            out.contains(r#""shop"."public"."customers"."id""#)
                && out.contains(r#"FROM "shop"."public"."customers""#),
            "{out}"
        );
        let out = q(r#"SELECT * FROM "tarn"."shop.public".orders JOIN public.t ON true"#).unwrap();
        assert!(out.contains(r#"FROM "shop"."public".orders"#), "{out}");
        // A lake namespace of that name, an unquoted name, `table.column`: unchanged.
        assert_eq!(q(r#"SELECT * FROM "shop.local".t"#), None);
        assert_eq!(q("SELECT * FROM shop.public.customers"), None);
        assert_eq!(
            q(r#"SELECT "shop.public".x FROM "shop.local".t AS "shop.public""#),
            None
        );
    }
}
