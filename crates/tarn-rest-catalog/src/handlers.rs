//! The route handlers: parse the path (namespace levels separated by `0x1F`, `%1F` in the URL),
//! the query and the JSON body into the specification's types, call the lake, answer with the
//! specification's body or error.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use iceberg::spec::{FormatVersion, TableMetadata, TableMetadataBuilder, TableProperties};
use iceberg::{NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::{
    CommitTableRequest, CommitTableResponse, CreateNamespaceRequest, CreateTableRequest,
    ListNamespaceResponse, ListTablesResponse, LoadTableResult, NamespaceResponse, RegisterTableRequest,
    RenameTableRequest, UpdateNamespacePropertiesRequest, UpdateNamespacePropertiesResponse,
};
use serde::de::DeserializeOwned;
use tarn_core::ErrorKind;
use tarn_lake::MetadataSwap;

use crate::RestState;
use crate::commit::{self, TableChange};
use crate::envelope::{CatalogConfig, CommitTransactionRequest, ENDPOINTS, LoadCredentialsResponse};
use crate::error::{RestError, display_namespace, display_table};

type Params = Result<Path<HashMap<String, String>>, PathRejection>;
type QueryParams = Query<HashMap<String, String>>;
type Handled = Result<Response, RestError>;

/// The separator of namespace levels in paths and in `parent`.
const LEVEL_SEPARATOR: char = '\u{1f}';
/// The property the JDBC catalog layout keeps on every namespace; not the user's.
const EXISTS_MARKER: &str = "exists";
/// The prefix of the namespace properties tarn keeps for itself (e.g.
/// `tarn.external-catalog.<name>`, an external catalog's connection URL with its password):
/// never shown to REST clients, and changed only through tarn's SQL, under its authorization.
const INTERNAL_PREFIX: &str = "tarn.";

/// Whether namespace property `key` is the catalog's own, not a client's.
fn reserved(key: &str) -> bool {
    key == EXISTS_MARKER || key.starts_with(INTERNAL_PREFIX)
}

/// 400 when a client sets or removes one of the catalog's own properties (`keys`).
fn refuse_reserved<'a>(mut keys: impl Iterator<Item = &'a String>) -> Result<(), RestError> {
    match keys.find(|k| reserved(k)) {
        Some(key) if key == EXISTS_MARKER => Err(RestError::bad_request(format!(
            "property {EXISTS_MARKER:?} is reserved by the catalog's storage layout"
        ))),
        Some(key) => Err(RestError::bad_request(format!(
            "property {key:?} is reserved: namespace properties starting with {INTERNAL_PREFIX:?} are tarn's own and change only through its SQL"
        ))),
        None => Ok(()),
    }
}

/// The path parameters, with the `{prefix}` checked against the catalog's.
fn params(state: &RestState, params: Params) -> Result<HashMap<String, String>, RestError> {
    let Path(params) = params.map_err(|e| RestError::bad_request(format!("invalid path: {e}")))?;
    if let Some(prefix) = params.get("prefix")
        && *prefix != state.options.prefix
    {
        return Err(RestError::new(
            StatusCode::NOT_FOUND,
            "NoSuchWarehouseException",
            format!(
                "unknown catalog prefix {prefix:?}: this server serves catalog {:?} (GET /v1/config)",
                state.options.prefix
            ),
        ));
    }
    Ok(params)
}

/// A namespace from its levels, each non-empty and without dots (the SQL catalog stores a
/// namespace as its levels joined by dots).
fn namespace_from_levels(levels: Vec<String>) -> Result<NamespaceIdent, RestError> {
    if levels.is_empty() || levels.iter().any(|l| l.is_empty() || l.contains('.')) {
        return Err(RestError::bad_request(format!(
            "invalid namespace {levels:?}: expected one or more non-empty levels without dots"
        )));
    }
    NamespaceIdent::from_vec(levels).map_err(|e| RestError::bad_request(format!("invalid namespace: {e}")))
}

/// `a%1Fb` (decoded: `a\x1Fb`) as a namespace.
fn parse_namespace(text: &str) -> Result<NamespaceIdent, RestError> {
    namespace_from_levels(text.split(LEVEL_SEPARATOR).map(str::to_string).collect())
}

fn namespace_param(params: &HashMap<String, String>) -> Result<NamespaceIdent, RestError> {
    parse_namespace(params.get("namespace").map_or("", String::as_str))
}

fn table_param(params: &HashMap<String, String>) -> Result<TableIdent, RestError> {
    let ns = namespace_param(params)?;
    let name = params.get("table").map_or("", String::as_str);
    table_ident(ns, name)
}

fn table_ident(ns: NamespaceIdent, name: &str) -> Result<TableIdent, RestError> {
    if name.is_empty() {
        return Err(RestError::bad_request("invalid table name: it is empty"));
    }
    Ok(TableIdent::new(ns, name.to_string()))
}

/// Checks a namespace from a request body the way path namespaces are checked.
fn checked_namespace(ns: &NamespaceIdent) -> Result<NamespaceIdent, RestError> {
    namespace_from_levels(ns.as_ref().clone())
}

/// The JSON body as `T`; a malformed body or a missing field is 400 naming what was wrong.
fn body<T: DeserializeOwned>(bytes: &Bytes, what: &str) -> Result<T, RestError> {
    serde_json::from_slice(bytes).map_err(|e| RestError::bad_request(format!("malformed {what}: {e}")))
}

fn json(value: &impl serde::Serialize) -> Response {
    Json(value).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn require_namespace(state: &RestState, ns: &NamespaceIdent) -> Result<(), RestError> {
    match state.lake.namespace_exists(ns).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(RestError::no_such_namespace(ns)),
        Err(e) => Err(RestError::from_lake(&e)),
    }
}

/// Lists with the specification's pagination: without `pageToken` everything at once; with it
/// (empty for the first page) at most `pageSize` items after the token, and `next-page-token`
/// while more remain. `items` are sorted by their key; the token is the last key returned.
fn paginate<T>(
    mut items: Vec<(String, T)>,
    query: &HashMap<String, String>,
) -> Result<(Vec<T>, Option<String>), RestError> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let Some(token) = query.get("pageToken") else {
        return Ok((items.into_iter().map(|(_, t)| t).collect(), None));
    };
    let size = match query.get("pageSize") {
        None => usize::MAX,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(RestError::bad_request(format!(
                    "invalid pageSize {s:?}: expected a positive integer"
                )));
            }
        },
    };
    let mut rest: Vec<(String, T)> = items
        .into_iter()
        .filter(|(key, _)| token.is_empty() || key.as_str() > token.as_str())
        .collect();
    let next = if rest.len() > size {
        rest.truncate(size);
        rest.last().map(|(key, _)| key.clone())
    } else {
        None
    };
    Ok((rest.into_iter().map(|(_, t)| t).collect(), next))
}

/// `GET /v1/config`: the prefix, the routes served, and as defaults the object-store settings
/// clients need for the tables' files (never credentials: those are per table, when vended).
/// The `warehouse` parameter is accepted and ignored: a tarn server serves one catalog.
pub(crate) async fn get_config(State(state): State<RestState>) -> Handled {
    Ok(json(&CatalogConfig {
        defaults: state.options.storage.settings().clone(),
        overrides: HashMap::from([("prefix".to_string(), state.options.prefix.clone())]),
        endpoints: ENDPOINTS.iter().map(|e| (*e).to_string()).collect(),
    }))
}

/// `GET /v1/{prefix}/namespaces?parent=a%1Fb`: the direct children of `parent` (top-level
/// namespaces without it).
pub(crate) async fn list_namespaces(
    State(state): State<RestState>,
    extensions: axum::http::Extensions,
    p: Params,
    Query(q): QueryParams,
) -> Handled {
    params(&state, p)?;
    let parent = match q.get("parent").filter(|p| !p.is_empty()) {
        Some(p) => Some(parse_namespace(p)?),
        None => None,
    };
    let children = child_namespaces(&state, parent.as_ref()).await?;
    let children = state
        .options
        .authorizer
        .visible_namespaces(&extensions, children)
        .await?;
    let keyed = children
        .into_iter()
        .map(|ns| (ns.as_ref().join("\u{1f}"), ns))
        .collect();
    let (namespaces, next_page_token) = paginate(keyed, &q)?;
    Ok(json(&ListNamespaceResponse {
        namespaces,
        next_page_token,
    }))
}

/// The direct children of `parent`, or the top-level namespaces.
async fn child_namespaces(
    state: &RestState,
    parent: Option<&NamespaceIdent>,
) -> Result<Vec<NamespaceIdent>, RestError> {
    if let Some(parent) = parent {
        require_namespace(state, parent).await?;
    }
    let all = state
        .lake
        .catalog()
        .list_namespaces(parent)
        .await
        .map_err(|e| RestError::from_iceberg("cannot list namespaces", &e))?;
    let Some(parent) = parent else {
        return Ok(all);
    };
    let depth = parent.len();
    let mut children: Vec<NamespaceIdent> = all
        .into_iter()
        .filter(|ns| ns.len() > depth && ns[..depth] == parent[..])
        .filter_map(|ns| NamespaceIdent::from_vec(ns[..=depth].to_vec()).ok())
        .collect();
    children.sort_by_key(|ns| ns.join("\u{1f}"));
    children.dedup();
    Ok(children)
}

/// `POST /v1/{prefix}/namespaces`.
pub(crate) async fn create_namespace(State(state): State<RestState>, p: Params, bytes: Bytes) -> Handled {
    params(&state, p)?;
    let request: CreateNamespaceRequest = body(&bytes, "CreateNamespaceRequest")?;
    let ns = checked_namespace(&request.namespace)?;
    refuse_reserved(request.properties.keys())?;
    if state
        .lake
        .namespace_exists(&ns)
        .await
        .map_err(|e| RestError::from_lake(&e))?
    {
        return Err(RestError::already_exists(format!(
            "namespace {} already exists",
            display_namespace(&ns)
        )));
    }
    let created = state
        .lake
        .catalog()
        .create_namespace(&ns, request.properties)
        .await
        .map_err(|e| {
            RestError::from_iceberg(&format!("cannot create namespace {}", display_namespace(&ns)), &e)
        })?;
    Ok(json(&NamespaceResponse {
        namespace: ns,
        properties: visible(created.properties()),
    }))
}

/// Namespace properties without the storage layout's marker and tarn's own (`tarn.`) keys.
fn visible(properties: &HashMap<String, String>) -> HashMap<String, String> {
    properties
        .iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `GET /v1/{prefix}/namespaces/{namespace}`.
pub(crate) async fn load_namespace(State(state): State<RestState>, p: Params) -> Handled {
    let ns = namespace_param(&params(&state, p)?)?;
    require_namespace(&state, &ns).await?;
    let namespace = state.lake.catalog().get_namespace(&ns).await.map_err(|e| {
        RestError::from_iceberg(&format!("cannot load namespace {}", display_namespace(&ns)), &e)
    })?;
    Ok(json(&NamespaceResponse {
        namespace: ns,
        properties: visible(namespace.properties()),
    }))
}

/// `HEAD /v1/{prefix}/namespaces/{namespace}`: 204 or 404.
pub(crate) async fn namespace_exists(State(state): State<RestState>, p: Params) -> Handled {
    let ns = namespace_param(&params(&state, p)?)?;
    require_namespace(&state, &ns).await?;
    Ok(no_content())
}

/// `DELETE /v1/{prefix}/namespaces/{namespace}`: only an empty one (no tables, no child
/// namespaces); else 409 `NamespaceNotEmptyException`.
pub(crate) async fn drop_namespace(State(state): State<RestState>, p: Params) -> Handled {
    let ns = namespace_param(&params(&state, p)?)?;
    require_namespace(&state, &ns).await?;
    let tables = state
        .lake
        .list_tables(&ns)
        .await
        .map_err(|e| RestError::from_lake(&e))?;
    let children = child_namespaces(&state, Some(&ns)).await?;
    if !tables.is_empty() || !children.is_empty() {
        return Err(RestError::new(
            StatusCode::CONFLICT,
            "NamespaceNotEmptyException",
            format!(
                "namespace {} is not empty: it has {} table(s) and {} namespace(s)",
                display_namespace(&ns),
                tables.len(),
                children.len()
            ),
        ));
    }
    state.lake.catalog().drop_namespace(&ns).await.map_err(|e| {
        RestError::from_iceberg(&format!("cannot drop namespace {}", display_namespace(&ns)), &e)
    })?;
    Ok(no_content())
}

/// `POST /v1/{prefix}/namespaces/{namespace}/properties`.
pub(crate) async fn update_namespace_properties(
    State(state): State<RestState>,
    p: Params,
    bytes: Bytes,
) -> Handled {
    let ns = namespace_param(&params(&state, p)?)?;
    let request: UpdateNamespacePropertiesRequest = body(&bytes, "UpdateNamespacePropertiesRequest")?;
    let removals = request.removals.unwrap_or_default();
    if let Some(key) = removals.iter().find(|k| request.updates.contains_key(*k)) {
        return Err(RestError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "UnprocessableEntityException",
            format!("property {key:?} is both updated and removed"),
        ));
    }
    refuse_reserved(request.updates.keys().chain(removals.iter()))?;
    require_namespace(&state, &ns).await?;
    if !request.updates.is_empty() {
        state
            .lake
            .catalog()
            .update_namespace(&ns, request.updates.clone())
            .await
            .map_err(|e| {
                RestError::from_iceberg(&format!("cannot update namespace {}", display_namespace(&ns)), &e)
            })?;
    }
    let removed = state
        .lake
        .remove_namespace_properties(&ns, &removals)
        .await
        .map_err(|e| RestError::from_lake(&e))?;
    let missing: Vec<String> = removals.into_iter().filter(|k| !removed.contains(k)).collect();
    let mut updated: Vec<String> = request.updates.into_keys().collect();
    updated.sort();
    Ok(json(&UpdateNamespacePropertiesResponse {
        updated,
        removed,
        missing: (!missing.is_empty()).then_some(missing),
    }))
}

/// `GET /v1/{prefix}/namespaces/{namespace}/tables`.
pub(crate) async fn list_tables(
    State(state): State<RestState>,
    extensions: axum::http::Extensions,
    p: Params,
    Query(q): QueryParams,
) -> Handled {
    let ns = namespace_param(&params(&state, p)?)?;
    require_namespace(&state, &ns).await?;
    let tables = state
        .lake
        .list_tables(&ns)
        .await
        .map_err(|e| RestError::from_lake(&e))?;
    let tables = state
        .options
        .authorizer
        .visible_tables(&extensions, tables)
        .await?;
    let keyed = tables.into_iter().map(|t| (t.name().to_string(), t)).collect();
    let (identifiers, next_page_token) = paginate(keyed, &q)?;
    Ok(json(&ListTablesResponse {
        identifiers,
        next_page_token,
    }))
}

/// A table as `loadTable` (and create, register) answers it: with the storage settings for its
/// files, and vended credentials when switched on and asked for ([`crate::storage`]).
fn load_result(
    state: &RestState,
    headers: &HeaderMap,
    metadata_location: Option<String>,
    metadata: TableMetadata,
) -> LoadTableResult {
    let storage = &state.options.storage;
    LoadTableResult {
        config: storage.table_config(metadata.location(), headers),
        storage_credentials: storage.storage_credentials(metadata.location(), headers),
        metadata_location,
        metadata,
    }
}

/// `POST /v1/{prefix}/namespaces/{namespace}/tables`: creates the table, or with
/// `stage-create` only returns the metadata it would have (the commit creates it).
pub(crate) async fn create_table(
    State(state): State<RestState>,
    p: Params,
    headers: HeaderMap,
    bytes: Bytes,
) -> Handled {
    let ns = namespace_param(&params(&state, p)?)?;
    let request: CreateTableRequest = body(&bytes, "CreateTableRequest")?;
    let ident = table_ident(ns.clone(), &request.name)?;
    require_namespace(&state, &ns).await?;
    if state
        .lake
        .table_exists(&ident)
        .await
        .map_err(|e| RestError::from_lake(&e))?
    {
        return Err(RestError::already_exists(format!(
            "table {} already exists",
            display_table(&ident)
        )));
    }
    let location = match request.location {
        Some(l) => l.trim_end_matches('/').to_string(),
        None => commit::default_table_location(&state.lake, &ns, &request.name).await?,
    };
    let mut properties = request.properties;
    let format_version = match properties.remove("format-version") {
        None => FormatVersion::V2,
        Some(v) => match v.trim() {
            "1" => FormatVersion::V1,
            "2" => FormatVersion::V2,
            "3" => FormatVersion::V3,
            other => {
                return Err(RestError::bad_request(format!(
                    "invalid format-version {other:?}: expected 1, 2 or 3"
                )));
            }
        },
    };
    // Reserved properties describe the metadata itself; clients may echo them back.
    properties.retain(|k, _| !TableProperties::RESERVED_PROPERTIES.contains(&k.as_str()));
    let creation = TableCreation::builder()
        .name(request.name.clone())
        .location(location)
        .schema(request.schema)
        .partition_spec_opt(request.partition_spec)
        .sort_order_opt(request.write_order)
        .properties(properties)
        .format_version(format_version)
        .build();
    let what = format!("cannot create table {}", display_table(&ident));
    let metadata = TableMetadataBuilder::from_table_creation(creation)
        .and_then(TableMetadataBuilder::build)
        .map_err(|e| RestError::from_iceberg(&what, &e))?
        .metadata;
    if request.stage_create == Some(true) {
        return Ok(json(&load_result(&state, &headers, None, metadata)));
    }
    let location =
        commit::next_metadata_location(None, &metadata).map_err(|e| RestError::from_iceberg(&what, &e))?;
    let text = location.to_string();
    metadata
        .write_to(state.lake.file_io(), &location)
        .await
        .map_err(|e| RestError::internal(format!("{what}: cannot write {text}: {e}")))?;
    insert_row(&state, &ident, None, &text).await?;
    let _ = state.lake.open_table(&ident, text.clone(), metadata.clone());
    Ok(json(&load_result(&state, &headers, Some(text), metadata)))
}

/// Points `ident` at `location` in the catalog: a new row when `expected` is `None`.
async fn insert_row(
    state: &RestState,
    ident: &TableIdent,
    expected: Option<String>,
    location: &str,
) -> Result<(), RestError> {
    let creating = expected.is_none();
    let swap = MetadataSwap {
        ident: ident.clone(),
        expected,
        new_location: location.to_string(),
    };
    match state.lake.swap_metadata_locations(&[swap]).await {
        Ok(true) => Ok(()),
        Ok(false) if creating => {
            let _ = state.lake.file_io().delete(location).await;
            Err(RestError::already_exists(format!(
                "table {} already exists",
                display_table(ident)
            )))
        }
        Ok(false) => Err(RestError::commit_failed(format!(
            "table {} changed while it was registered; retry",
            display_table(ident)
        ))),
        Err(e) => Err(RestError::commit_state_unknown(format!(
            "the catalog database failed: {e}"
        ))),
    }
}

/// `POST /v1/{prefix}/namespaces/{namespace}/register`: adds a table whose metadata file
/// exists already; with `overwrite`, repoints an existing one.
pub(crate) async fn register_table(
    State(state): State<RestState>,
    p: Params,
    headers: HeaderMap,
    bytes: Bytes,
) -> Handled {
    let ns = namespace_param(&params(&state, p)?)?;
    let request: RegisterTableRequest = body(&bytes, "RegisterTableRequest")?;
    let ident = table_ident(ns.clone(), &request.name)?;
    require_namespace(&state, &ns).await?;
    let metadata = TableMetadata::read_from(state.lake.file_io(), &request.metadata_location)
        .await
        .map_err(|e| {
            RestError::bad_request(format!(
                "cannot read metadata file {}: {e}",
                request.metadata_location
            ))
        })?;
    let current = match state.lake.current_metadata_location(&ident).await {
        Ok(location) => Some(location),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(RestError::from_lake(&e)),
    };
    if current.is_some() && request.overwrite != Some(true) {
        return Err(RestError::already_exists(format!(
            "table {} already exists",
            display_table(&ident)
        )));
    }
    insert_row(&state, &ident, current, &request.metadata_location).await?;
    Ok(json(&load_result(
        &state,
        &headers,
        Some(request.metadata_location),
        metadata,
    )))
}

/// `GET /v1/{prefix}/namespaces/{namespace}/tables/{table}`: the current metadata, where it
/// is, and how to reach its files. `snapshots=refs` leaves out the snapshots no branch or tag
/// points at (clients load them with `snapshots=all` when they need history); `all`, the
/// default, returns every snapshot. (`If-None-Match` is not answered with 304: the full body
/// always comes back, which the specification allows.)
pub(crate) async fn load_table(
    State(state): State<RestState>,
    p: Params,
    Query(q): QueryParams,
    headers: HeaderMap,
) -> Handled {
    let ident = table_param(&params(&state, p)?)?;
    let only_refs = match q.get("snapshots").map(String::as_str) {
        None | Some("all") => false,
        Some("refs") => true,
        Some(other) => {
            return Err(RestError::bad_request(format!(
                "invalid snapshots {other:?}: expected all or refs"
            )));
        }
    };
    let table = state.lake.load_table(&ident).await.map_err(|e| match e.kind() {
        ErrorKind::NotFound => RestError::no_such_table(&ident),
        _ => RestError::from_lake(&e),
    })?;
    let result = load_result(
        &state,
        &headers,
        table.metadata_location().map(str::to_string),
        table.metadata().clone(),
    );
    if !only_refs {
        return Ok(json(&result));
    }
    let mut value = serde_json::to_value(&result)
        .map_err(|e| RestError::internal(format!("cannot encode table {}: {e}", display_table(&ident))))?;
    referenced_snapshots_only(&mut value["metadata"]);
    Ok(json(&value))
}

/// Drops from a table metadata document the snapshots that no ref (branch or tag) points at.
/// The snapshot log keeps its entries, as Iceberg's own `snapshots=refs` does.
fn referenced_snapshots_only(metadata: &mut serde_json::Value) {
    let referenced: Vec<serde_json::Value> = metadata["refs"]
        .as_object()
        .map(|refs| refs.values().map(|r| r["snapshot-id"].clone()).collect())
        .unwrap_or_default();
    if let Some(snapshots) = metadata
        .get_mut("snapshots")
        .and_then(serde_json::Value::as_array_mut)
    {
        snapshots.retain(|s| referenced.contains(&s["snapshot-id"]));
    }
}

/// `GET /v1/{prefix}/namespaces/{namespace}/tables/{table}/credentials`: the credentials for the
/// table's files, when vending is on and the request asks for it (empty otherwise).
pub(crate) async fn load_credentials(
    State(state): State<RestState>,
    p: Params,
    headers: HeaderMap,
) -> Handled {
    let ident = table_param(&params(&state, p)?)?;
    let table = state.lake.load_table(&ident).await.map_err(|e| match e.kind() {
        ErrorKind::NotFound => RestError::no_such_table(&ident),
        _ => RestError::from_lake(&e),
    })?;
    let location = table.metadata().location();
    Ok(json(&LoadCredentialsResponse {
        storage_credentials: state
            .options
            .storage
            .storage_credentials(location, &headers)
            .unwrap_or_default(),
    }))
}

/// `HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}`: 204 or 404.
pub(crate) async fn table_exists(State(state): State<RestState>, p: Params) -> Handled {
    let ident = table_param(&params(&state, p)?)?;
    match state.lake.table_exists(&ident).await {
        Ok(true) => Ok(no_content()),
        Ok(false) => Err(RestError::no_such_table(&ident)),
        Err(e) => Err(RestError::from_lake(&e)),
    }
}

/// `POST /v1/{prefix}/namespaces/{namespace}/tables/{table}`: one table's commit.
pub(crate) async fn commit_table(
    State(state): State<RestState>,
    extensions: axum::http::Extensions,
    p: Params,
    bytes: Bytes,
) -> Handled {
    let ident = table_param(&params(&state, p)?)?;
    let request: CommitTableRequest = body(&bytes, "CommitTableRequest")?;
    if let Some(named) = &request.identifier
        && *named != ident
    {
        return Err(RestError::bad_request(format!(
            "the body names table {} but the path names {}",
            display_table(named),
            display_table(&ident)
        )));
    }
    let change = TableChange {
        ident,
        requirements: request.requirements,
        updates: request.updates,
    };
    authorize_commits(&state, &extensions, std::slice::from_ref(&change)).await?;
    let mut committed = commit::commit(&state.lake, &[change], state.options.commit_retries).await?;
    let committed = committed.pop().expect("one change, one result");
    Ok(json(&CommitTableResponse {
        metadata_location: committed.metadata_location,
        metadata: committed.metadata,
    }))
}

/// `POST /v1/{prefix}/transactions/commit`: several tables, all or nothing.
pub(crate) async fn commit_transaction(
    State(state): State<RestState>,
    extensions: axum::http::Extensions,
    p: Params,
    bytes: Bytes,
) -> Handled {
    params(&state, p)?;
    let request: CommitTransactionRequest = body(&bytes, "CommitTransactionRequest")?;
    let mut changes = Vec::with_capacity(request.table_changes.len());
    for (i, change) in request.table_changes.into_iter().enumerate() {
        let ident = change
            .identifier
            .ok_or_else(|| RestError::bad_request(format!("table-changes[{i}] has no identifier")))?;
        let ident = table_ident(checked_namespace(ident.namespace())?, ident.name())?;
        changes.push(TableChange {
            ident,
            requirements: change.requirements,
            updates: change.updates,
        });
    }
    if changes.is_empty() {
        return Err(RestError::bad_request("table-changes is empty"));
    }
    authorize_commits(&state, &extensions, &changes).await?;
    commit::commit(&state.lake, &changes, state.options.commit_retries).await?;
    Ok(no_content())
}

/// Asks the authorizer about each change of a commit, before anything is written.
async fn authorize_commits(
    state: &RestState,
    extensions: &axum::http::Extensions,
    changes: &[TableChange],
) -> Result<(), RestError> {
    for change in changes {
        state
            .options
            .authorizer
            .authorize_commit(extensions, &change.ident, &change.updates)
            .await?;
    }
    Ok(())
}

/// `DELETE /v1/{prefix}/namespaces/{namespace}/tables/{table}?purgeRequested=true`: drops the
/// table; with purge, its files too.
pub(crate) async fn drop_table(State(state): State<RestState>, p: Params, Query(q): QueryParams) -> Handled {
    let ident = table_param(&params(&state, p)?)?;
    // pyiceberg sends Python's `True`.
    let purge = match q.get("purgeRequested").map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            let other = &q["purgeRequested"];
            return Err(RestError::bad_request(format!(
                "invalid purgeRequested {other:?}: expected true or false"
            )));
        }
    };
    state
        .lake
        .drop_table(&ident, purge)
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => RestError::no_such_table(&ident),
            _ => RestError::from_lake(&e),
        })?;
    Ok(no_content())
}

/// `POST /v1/{prefix}/tables/rename`.
pub(crate) async fn rename_table(State(state): State<RestState>, p: Params, bytes: Bytes) -> Handled {
    params(&state, p)?;
    let request: RenameTableRequest = body(&bytes, "RenameTableRequest")?;
    let source = table_ident(
        checked_namespace(request.source.namespace())?,
        request.source.name(),
    )?;
    let destination = table_ident(
        checked_namespace(request.destination.namespace())?,
        request.destination.name(),
    )?;
    if !state
        .lake
        .table_exists(&source)
        .await
        .map_err(|e| RestError::from_lake(&e))?
    {
        return Err(RestError::no_such_table(&source));
    }
    require_namespace(&state, destination.namespace()).await?;
    if source != destination
        && state
            .lake
            .table_exists(&destination)
            .await
            .map_err(|e| RestError::from_lake(&e))?
    {
        return Err(RestError::already_exists(format!(
            "table {} already exists",
            display_table(&destination)
        )));
    }
    state
        .lake
        .catalog()
        .rename_table(&source, &destination)
        .await
        .map_err(|e| {
            RestError::from_iceberg(
                &format!(
                    "cannot rename {} to {}",
                    display_table(&source),
                    display_table(&destination)
                ),
                &e,
            )
        })?;
    Ok(no_content())
}

/// `POST /v1/{prefix}/namespaces/{namespace}/tables/{table}/metrics`: scan and commit reports
/// are accepted (and dropped) once they parse as JSON.
pub(crate) async fn report_metrics(State(state): State<RestState>, p: Params, bytes: Bytes) -> Handled {
    let ident = table_param(&params(&state, p)?)?;
    let _: serde_json::Value = body(&bytes, "ReportMetricsRequest")?;
    if !state
        .lake
        .table_exists(&ident)
        .await
        .map_err(|e| RestError::from_lake(&e))?
    {
        return Err(RestError::no_such_table(&ident));
    }
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_split_on_the_unit_separator() {
        let ns = parse_namespace("a\u{1f}b").unwrap();
        assert_eq!(ns.as_ref(), &vec!["a".to_string(), "b".to_string()]);
        assert!(parse_namespace("").is_err());
        assert!(parse_namespace("a\u{1f}").is_err());
        assert!(parse_namespace("a.b").is_err());
    }

    #[test]
    fn refs_mode_keeps_referenced_snapshots() {
        let mut metadata = serde_json::json!({
            "refs": {"main": {"snapshot-id": 3, "type": "branch"}, "audit": {"snapshot-id": 2, "type": "branch"}},
            "snapshots": [{"snapshot-id": 1}, {"snapshot-id": 2}, {"snapshot-id": 3}],
            "snapshot-log": [{"snapshot-id": 1}, {"snapshot-id": 3}]
        });
        referenced_snapshots_only(&mut metadata);
        assert_eq!(
            metadata["snapshots"],
            serde_json::json!([{"snapshot-id": 2}, {"snapshot-id": 3}])
        );
        assert_eq!(metadata["snapshot-log"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn pagination_follows_the_token() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("t{i}"), i)).collect();
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            paginate(items.clone(), &q(&[])).unwrap(),
            (vec![0, 1, 2, 3, 4], None)
        );
        let (page, next) = paginate(items.clone(), &q(&[("pageToken", ""), ("pageSize", "2")])).unwrap();
        assert_eq!((page, next.as_deref()), (vec![0, 1], Some("t1")));
        let (page, next) = paginate(items.clone(), &q(&[("pageToken", "t1"), ("pageSize", "2")])).unwrap();
        assert_eq!((page, next.as_deref()), (vec![2, 3], Some("t3")));
        let (page, next) = paginate(items.clone(), &q(&[("pageToken", "t3"), ("pageSize", "2")])).unwrap();
        assert_eq!((page, next), (vec![4], None));
        assert!(paginate(items, &q(&[("pageToken", ""), ("pageSize", "0")])).is_err());
    }
}
