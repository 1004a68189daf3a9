//! DataHub metadata: the lake's tables, their schemas and lineage, and the CDC pipelines, as
//! DataHub metadata change proposals (MCPs).
//!
//! What tarn describes (`[datahub]` in the config names the environment and platform
//! instance of every URN):
//!
//! - each lake table, a dataset on platform `iceberg` named `namespace.table`:
//!   `datasetProperties` (name, qualified name, location, format version, current snapshot,
//!   the CDC pipeline and source table when CDC writes it), `schemaMetadata` (every column,
//!   nested ones as `parent.child` paths, with Iceberg's type name, DataHub's type class,
//!   nullability and the identifier fields as the key; the Iceberg schema JSON as the raw
//!   schema) and `upstreamLineage` (the tables SQL computed it from, `TRANSFORMED`, from
//!   [`tarn_query::lineage`]; the source table CDC copies, `COPY`);
//! - each CDC pipeline writing tables (`tarn.cdc.pipeline`), a data flow on orchestrator
//!   `tarn` (`dataFlowInfo`) with one job `cdc` (`dataJobInfo`, `dataJobInputOutput`: the
//!   source tables in, the lake tables out).
//!
//! A CDC table's source is named from this process's `cdc` config when the table belongs to
//! its pipeline: PostgreSQL and CockroachDB tables as `database.schema.table` on platform
//! `postgres` / `cockroachdb`, a Kafka pipeline's tables as the topic among `cdc.kafka.topics`
//! named `<prefix>.<schema>.<table>` (Debezium's naming). Tables of other pipelines get the
//! source table's `schema.table` on the platform of this process's source kind.
//!
//! Where it goes: a file in DataHub's MCP file format (`tarn catalog export datahub FILE`:
//! a JSON array of `{entityType, entityUrn, changeType, aspectName, aspect: {json}}`, what
//! `datahub ingest` reads with its file source), or a GMS (`tarn catalog push datahub`, and
//! `tarn serve` with `datahub.gms_url` set, every `datahub.interval`, only the aspects that
//! changed since its last push): `POST /aspects?action=ingestProposal` with Rest.li 2.0 and
//! the token as a bearer token.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use iceberg::spec::{NestedFieldRef, Type};
use iceberg::table::Table;
use serde_json::{Value, json};
use tarn_core::Config;
use tarn_lake::Lake;
use tokio_util::sync::CancellationToken;

/// One metadata change proposal (always an `UPSERT` of one aspect).
#[derive(Debug, Clone, PartialEq)]
pub struct Mcp {
    /// `dataset`, `dataFlow` or `dataJob`.
    pub entity_type: &'static str,
    /// The entity's URN.
    pub entity_urn: String,
    /// The aspect's name, e.g. `schemaMetadata`.
    pub aspect_name: &'static str,
    /// The aspect.
    pub aspect: Value,
}

impl Mcp {
    /// As DataHub's MCP file format writes it.
    pub fn file_json(&self) -> Value {
        json!({
            "entityType": self.entity_type,
            "entityUrn": self.entity_urn,
            "changeType": "UPSERT",
            "aspectName": self.aspect_name,
            "aspect": {"json": self.aspect},
        })
    }

    /// As GMS's `ingestProposal` action takes it.
    pub fn proposal_json(&self) -> Value {
        json!({
            "proposal": {
                "entityType": self.entity_type,
                "entityUrn": self.entity_urn,
                "changeType": "UPSERT",
                "aspectName": self.aspect_name,
                "aspect": {"value": self.aspect.to_string(), "contentType": "application/json"},
            },
            "async": "false",
        })
    }
}

/// How URNs are made, from `[datahub]`.
struct Names<'a> {
    env: &'a str,
    instance: Option<&'a str>,
}

impl Names<'_> {
    fn dataset(&self, platform: &str, name: &str) -> String {
        format!(
            "urn:li:dataset:(urn:li:dataPlatform:{platform},{name},{})",
            self.env
        )
    }

    fn lake_table(&self, qualified: &str) -> String {
        match self.instance {
            Some(i) => self.dataset("iceberg", &format!("{i}.{qualified}")),
            None => self.dataset("iceberg", qualified),
        }
    }

    fn flow(&self, pipeline: &str) -> String {
        format!("urn:li:dataFlow:(tarn,{pipeline},{})", self.env)
    }

    fn job(&self, pipeline: &str) -> String {
        format!("urn:li:dataJob:({},cdc)", self.flow(pipeline))
    }
}

/// DataHub's type class of an Iceberg type.
fn type_class(t: &Type) -> &'static str {
    use iceberg::spec::PrimitiveType as P;
    match t {
        Type::Primitive(p) => match p {
            P::Boolean => "com.linkedin.schema.BooleanType",
            P::Int | P::Long | P::Float | P::Double | P::Decimal { .. } => "com.linkedin.schema.NumberType",
            P::Date => "com.linkedin.schema.DateType",
            P::Time => "com.linkedin.schema.TimeType",
            P::Timestamp | P::Timestamptz | P::TimestampNs | P::TimestamptzNs => {
                "com.linkedin.schema.TimeType"
            }
            P::String | P::Uuid => "com.linkedin.schema.StringType",
            P::Fixed(_) | P::Binary => "com.linkedin.schema.BytesType",
        },
        Type::Struct(_) => "com.linkedin.schema.RecordType",
        Type::List(_) => "com.linkedin.schema.ArrayType",
        Type::Map(_) => "com.linkedin.schema.MapType",
    }
}

/// The schema fields of `field` and its nested fields, paths joined by `.`.
fn schema_fields(field: &NestedFieldRef, parent: &str, keys: &BTreeSet<i32>, out: &mut Vec<Value>) {
    let path = if parent.is_empty() {
        field.name.clone()
    } else {
        format!("{parent}.{}", field.name)
    };
    let mut entry = json!({
        "fieldPath": path,
        "nullable": !field.required,
        "nativeDataType": field.field_type.to_string(),
        "type": {"type": {type_class(&field.field_type): {}}},
        "isPartOfKey": keys.contains(&field.id),
    });
    if let Some(doc) = &field.doc {
        entry["description"] = json!(doc);
    }
    out.push(entry);
    if let Type::Struct(s) = field.field_type.as_ref() {
        for child in s.fields() {
            schema_fields(child, &path, keys, out);
        }
    }
}

/// Where a CDC table's rows come from: its dataset URN, or `None` when not known.
fn cdc_source(config: &Config, names: &Names<'_>, pipeline: &str, source_table: &str) -> Option<String> {
    let cdc = &config.cdc;
    let ours = cdc.pipeline == pipeline;
    match cdc.source_kind.as_str() {
        "kafka" if ours => {
            let suffix = format!(".{source_table}");
            cdc.kafka
                .topics
                .iter()
                .find(|t| !t.starts_with('^') && (t.ends_with(&suffix) || *t == source_table))
                .map(|t| names.dataset("kafka", t))
        }
        "kafka" => None,
        kind => {
            let platform = if kind == "cockroachdb" {
                "cockroachdb"
            } else {
                "postgres"
            };
            let database = cdc
                .source
                .as_deref()
                .filter(|_| ours)
                .and_then(|s| url::Url::parse(s).ok())
                .map(|u| u.path().trim_start_matches('/').to_string())
                .filter(|d| !d.is_empty());
            Some(match database {
                Some(db) => names.dataset(platform, &format!("{db}.{source_table}")),
                None => names.dataset(platform, source_table),
            })
        }
    }
}

/// Every aspect tarn describes; see the module doc.
pub async fn collect(lake: &Lake, config: &Config) -> Result<Vec<Mcp>> {
    let names = Names {
        env: &config.datahub.env,
        instance: config.datahub.platform_instance.as_deref(),
    };
    let mut out = Vec::new();
    // Pipeline → (inputs, outputs).
    let mut pipelines: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut namespaces = lake.list_namespaces().await?;
    namespaces.sort_by_key(|n| n.join("."));
    for ns in namespaces {
        let mut tables = lake.list_tables(&ns).await?;
        tables.sort_by(|a, b| a.name().cmp(b.name()));
        for ident in tables {
            let table = lake
                .load_table(&ident)
                .await
                .with_context(|| format!("cannot load table {ident}"))?;
            let qualified = format!("{}.{}", ns.join("."), ident.name());
            let urn = names.lake_table(&qualified);
            out.extend(table_aspects(&table, &qualified, &urn));
            let properties = table.metadata().properties();
            let mut upstreams = Vec::new();
            for upstream in tarn_query::lineage::upstream_of(&table) {
                upstreams.push((names.lake_table(&upstream), "TRANSFORMED"));
            }
            if let (Some(pipeline), Some(source)) = (
                properties.get(tarn_cdc::sink::SUMMARY_PIPELINE),
                tarn_cdc::sink::source_table(&table),
            ) {
                let entry = pipelines.entry(pipeline.clone()).or_default();
                entry.1.insert(urn.clone());
                if let Some(source_urn) = cdc_source(config, &names, pipeline, source) {
                    entry.0.insert(source_urn.clone());
                    upstreams.push((source_urn, "COPY"));
                }
            }
            if !upstreams.is_empty() {
                let time = table
                    .metadata()
                    .current_snapshot()
                    .map_or(table.metadata().last_updated_ms(), |s| s.timestamp_ms());
                out.push(Mcp {
                    entity_type: "dataset",
                    entity_urn: urn,
                    aspect_name: "upstreamLineage",
                    aspect: json!({
                        "upstreams": upstreams.iter().map(|(dataset, kind)| json!({
                            "auditStamp": {"time": time, "actor": "urn:li:corpuser:tarn"},
                            "dataset": dataset,
                            "type": kind,
                        })).collect::<Vec<_>>(),
                    }),
                });
            }
        }
    }
    for (pipeline, (inputs, outputs)) in pipelines {
        out.push(Mcp {
            entity_type: "dataFlow",
            entity_urn: names.flow(&pipeline),
            aspect_name: "dataFlowInfo",
            aspect: json!({
                "name": pipeline,
                "description": "tarn change data capture pipeline",
                "customProperties": {},
            }),
        });
        let job = names.job(&pipeline);
        out.push(Mcp {
            entity_type: "dataJob",
            entity_urn: job.clone(),
            aspect_name: "dataJobInfo",
            aspect: json!({
                "name": "cdc",
                "type": {"string": "CDC"},
                "description": "every committed change of the source tables into the lake tables, exactly once",
                "customProperties": {},
            }),
        });
        out.push(Mcp {
            entity_type: "dataJob",
            entity_urn: job,
            aspect_name: "dataJobInputOutput",
            aspect: json!({
                "inputDatasets": inputs,
                "outputDatasets": outputs,
            }),
        });
    }
    Ok(out)
}

/// `datasetProperties` and `schemaMetadata` of one lake table.
fn table_aspects(table: &Table, qualified: &str, urn: &str) -> [Mcp; 2] {
    let metadata = table.metadata();
    let schema = metadata.current_schema();
    let mut custom = BTreeMap::new();
    custom.insert("location".to_string(), metadata.location().to_string());
    custom.insert(
        "format-version".to_string(),
        (metadata.format_version() as u8).to_string(),
    );
    if let Some(id) = metadata.current_snapshot_id() {
        custom.insert("current-snapshot-id".to_string(), id.to_string());
    }
    for key in [
        tarn_cdc::sink::SUMMARY_PIPELINE,
        tarn_cdc::sink::PROPERTY_SOURCE_TABLE,
        tarn_query::lineage::PROPERTY_UPSTREAM,
    ] {
        if let Some(v) = metadata.properties().get(key) {
            custom.insert(key.to_string(), v.clone());
        }
    }
    let name = qualified.rsplit('.').next().unwrap_or(qualified);
    let mut properties = json!({
        "name": name,
        "qualifiedName": qualified,
        "customProperties": custom,
    });
    if let Some(comment) = metadata.properties().get("comment") {
        properties["description"] = json!(comment);
    }
    let keys: BTreeSet<i32> = schema.identifier_field_ids().collect();
    let mut fields = Vec::new();
    for field in schema.as_struct().fields() {
        schema_fields(field, "", &keys, &mut fields);
    }
    let raw = serde_json::to_string(schema.as_ref()).unwrap_or_default();
    [
        Mcp {
            entity_type: "dataset",
            entity_urn: urn.to_string(),
            aspect_name: "datasetProperties",
            aspect: properties,
        },
        Mcp {
            entity_type: "dataset",
            entity_urn: urn.to_string(),
            aspect_name: "schemaMetadata",
            aspect: json!({
                "schemaName": qualified,
                "platform": "urn:li:dataPlatform:iceberg",
                "version": schema.schema_id(),
                "hash": "",
                "platformSchema": {"com.linkedin.schema.OtherSchema": {"rawSchema": raw}},
                "fields": fields,
            }),
        },
    ]
}

/// Writes `mcps` to `path` in DataHub's MCP file format.
pub fn write_file(path: &std::path::Path, mcps: &[Mcp]) -> Result<()> {
    let all: Vec<Value> = mcps.iter().map(Mcp::file_json).collect();
    let text = serde_json::to_string_pretty(&all)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A DataHub GMS that takes proposals.
pub struct Gms {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Gms {
    /// The GMS `config.datahub` names; `None` when it names none.
    pub fn from_config(config: &Config) -> Result<Option<Self>> {
        let Some(url) = &config.datahub.gms_url else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot make an HTTP client for DataHub")?;
        Ok(Some(Self {
            client,
            url: url.trim_end_matches('/').to_string(),
            token: config.datahub.token.clone(),
        }))
    }

    /// Sends one proposal; an error names the GMS, the aspect and what it answered.
    pub async fn emit(&self, mcp: &Mcp) -> Result<()> {
        let mut request = self
            .client
            .post(format!("{}/aspects?action=ingestProposal", self.url))
            .header("Content-Type", "application/json")
            .header("X-RestLi-Protocol-Version", "2.0.0")
            .body(mcp.proposal_json().to_string());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let what = || {
            format!(
                "{} of {} to DataHub at {}",
                mcp.aspect_name, mcp.entity_urn, self.url
            )
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot send {}", what()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
                " (check datahub.token)"
            } else {
                ""
            };
            bail!(
                "DataHub refused {}: HTTP {status}{hint}: {}",
                what(),
                body.chars().take(300).collect::<String>()
            );
        }
        Ok(())
    }

    /// Sends every proposal; the count sent.
    pub async fn emit_all(&self, mcps: &[Mcp]) -> Result<usize> {
        for mcp in mcps {
            self.emit(mcp).await?;
        }
        metrics::counter!("tarn_datahub_aspects_sent_total").increment(mcps.len() as u64);
        Ok(mcps.len())
    }
}

/// Pushes the aspects that changed to `gms` every `datahub.interval` until `stop`; what was
/// pushed is remembered per (entity, aspect) so an unchanged lake sends nothing.
pub async fn sync(lake: Lake, config: Config, gms: Gms, stop: CancellationToken) {
    let every = tarn_core::config::parse_duration("datahub.interval", &config.datahub.interval)
        .unwrap_or(Duration::from_secs(30));
    let mut sent: HashMap<(String, &'static str), Value> = HashMap::new();
    loop {
        let round = async {
            let mcps = collect(&lake, &config).await?;
            let changed: Vec<Mcp> = mcps
                .into_iter()
                .filter(|m| sent.get(&(m.entity_urn.clone(), m.aspect_name)) != Some(&m.aspect))
                .collect();
            for mcp in &changed {
                gms.emit(mcp).await?;
                sent.insert((mcp.entity_urn.clone(), mcp.aspect_name), mcp.aspect.clone());
            }
            metrics::counter!("tarn_datahub_aspects_sent_total").increment(changed.len() as u64);
            anyhow::Ok(changed.len())
        }
        .await;
        match round {
            Ok(0) => {}
            Ok(n) => tracing::info!(aspects = n, gms = %gms.url, "pushed metadata changes to DataHub"),
            Err(e) => {
                metrics::counter!("tarn_datahub_errors_total").increment(1);
                tracing::warn!(error = %format!("{e:#}"), "cannot push metadata to DataHub; retrying next round");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// `tarn table lineage`: the table's upstream and downstream tables, one per line.
pub async fn lineage_lines(lake: &Lake, config: &Config, qualified: &str) -> Result<Vec<String>> {
    let names = Names {
        env: &config.datahub.env,
        instance: None,
    };
    let mut lines = Vec::new();
    let mut downstream = Vec::new();
    let mut found = false;
    for ns in lake.list_namespaces().await? {
        for ident in lake.list_tables(&ns).await? {
            let name = format!("{}.{}", ns.join("."), ident.name());
            let table = lake.load_table(&ident).await?;
            let upstream = tarn_query::lineage::upstream_of(&table);
            if name == qualified {
                found = true;
                for u in &upstream {
                    lines.push(format!("upstream    {u}    (SQL)"));
                }
                let properties = table.metadata().properties();
                if let (Some(pipeline), Some(source)) = (
                    properties.get(tarn_cdc::sink::SUMMARY_PIPELINE),
                    tarn_cdc::sink::source_table(&table),
                ) {
                    let origin = cdc_source(config, &names, pipeline, source)
                        .map(|urn| urn_name(&urn))
                        .unwrap_or_else(|| source.to_string());
                    lines.push(format!("upstream    {origin}    (CDC pipeline {pipeline})"));
                }
            } else if upstream.contains(qualified) {
                downstream.push(format!("downstream  {name}    (SQL)"));
            }
        }
    }
    if !found {
        bail!("table {qualified} does not exist");
    }
    lines.extend(downstream);
    Ok(lines)
}

/// `platform:name` of a dataset URN, for people.
fn urn_name(urn: &str) -> String {
    let inner = urn
        .trim_start_matches("urn:li:dataset:(urn:li:dataPlatform:")
        .trim_end_matches(')');
    let mut parts = inner.splitn(2, ',');
    let platform = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    let name = rest.rsplit_once(',').map_or(rest, |(n, _)| n);
    format!("{platform}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urns_follow_datahub_conventions() {
        let names = Names {
            env: "PROD",
            instance: Some("lake1"),
        };
        assert_eq!(
            names.lake_table("cdc.orders"),
            "urn:li:dataset:(urn:li:dataPlatform:iceberg,lake1.cdc.orders,PROD)"
        );
        assert_eq!(
            names.job("shop"),
            "urn:li:dataJob:(urn:li:dataFlow:(tarn,shop,PROD),cdc)"
        );
        assert_eq!(
            urn_name(&names.dataset("postgres", "app.public.orders")),
            "postgres:app.public.orders"
        );
    }

    #[test]
    fn cdc_sources_are_named_from_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(dir.path());
        config.cdc.pipeline = "shop".into();
        config.cdc.source = Some("postgres://u:p@db:5432/app".into());
        let names = Names {
            env: "PROD",
            instance: None,
        };
        assert_eq!(
            cdc_source(&config, &names, "shop", "public.orders").unwrap(),
            "urn:li:dataset:(urn:li:dataPlatform:postgres,app.public.orders,PROD)"
        );
        // Another pipeline's database is not this config's.
        assert_eq!(
            cdc_source(&config, &names, "other", "public.orders").unwrap(),
            "urn:li:dataset:(urn:li:dataPlatform:postgres,public.orders,PROD)"
        );
        config.cdc.source_kind = "kafka".into();
        config.cdc.kafka.topics = vec!["dbserver1.public.orders".into()];
        assert_eq!(
            cdc_source(&config, &names, "shop", "public.orders").unwrap(),
            "urn:li:dataset:(urn:li:dataPlatform:kafka,dbserver1.public.orders,PROD)"
        );
        assert_eq!(cdc_source(&config, &names, "shop", "public.items"), None);
    }
}
