//! The handlers: parse and validate the request, run the store operation (writes through
//! [`crate::db::Db::write`]), answer with JSON. No SQL and no business rules here.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;

use super::App;
use super::error::ApiError;
use super::extract::{ApiJson, QueryParams, parse_id};
use crate::db::Isolation::{DatabaseDefault, ReadOnlySnapshot, Serializable};
use crate::model::{Customer, Order, OrderDetail, OrderStatus, Page, Payment, Product};
use crate::store::check;
use crate::store::customers::{self, CustomerInput};
use crate::store::orders::{self, ItemPatch, NewOrderInput, OrderFilter, OrderPatch};
use crate::store::payments::{self, NewPaymentInput, PaymentPatch};
use crate::store::products::{self, ProductInput, RestockInput};

type Reply<T> = Result<Json<T>, ApiError>;
type Created<T> = Result<(StatusCode, Json<T>), ApiError>;
type NoContent = Result<StatusCode, ApiError>;

// ---- customers

pub async fn create_customer(
    State(app): State<App>,
    ApiJson(input): ApiJson<CustomerInput>,
) -> Created<Customer> {
    let new = input.validate_new()?;
    let customer = app
        .db
        .write("create customer", DatabaseDefault, move |conn| {
            let new = new.clone();
            Box::pin(async move { customers::create(conn, &new).await })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

pub async fn list_customers(State(app): State<App>, RawQuery(query): RawQuery) -> Reply<Page<Customer>> {
    let mut params = QueryParams::parse(query.as_deref());
    let page = params.page()?;
    params.finish("limit, after")?;
    Ok(Json(customers::list(app.db.pool(), page).await?))
}

pub async fn get_customer(State(app): State<App>, Path(id): Path<String>) -> Reply<Customer> {
    let id = parse_id(&id, "id")?;
    Ok(Json(customers::get(app.db.pool(), id).await?))
}

pub async fn update_customer(
    State(app): State<App>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<CustomerInput>,
) -> Reply<Customer> {
    let id = parse_id(&id, "id")?;
    let change = input.validate_change()?;
    let customer = app
        .db
        .write("update customer", DatabaseDefault, move |conn| {
            let change = change.clone();
            Box::pin(async move { customers::update(conn, id, &change).await })
        })
        .await?;
    Ok(Json(customer))
}

pub async fn delete_customer(State(app): State<App>, Path(id): Path<String>) -> NoContent {
    let id = parse_id(&id, "id")?;
    app.db
        .write("delete customer", DatabaseDefault, move |conn| {
            Box::pin(customers::delete(conn, id))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- products

pub async fn create_product(
    State(app): State<App>,
    ApiJson(input): ApiJson<ProductInput>,
) -> Created<Product> {
    let new = input.validate_new()?;
    let product = app
        .db
        .write("create product", DatabaseDefault, move |conn| {
            let new = new.clone();
            Box::pin(async move { products::create(conn, &new).await })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(product)))
}

pub async fn list_products(State(app): State<App>, RawQuery(query): RawQuery) -> Reply<Page<Product>> {
    let mut params = QueryParams::parse(query.as_deref());
    let page = params.page()?;
    params.finish("limit, after")?;
    Ok(Json(products::list(app.db.pool(), page).await?))
}

pub async fn get_product(State(app): State<App>, Path(id): Path<String>) -> Reply<Product> {
    let id = parse_id(&id, "id")?;
    Ok(Json(products::get(app.db.pool(), id).await?))
}

pub async fn update_product(
    State(app): State<App>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ProductInput>,
) -> Reply<Product> {
    let id = parse_id(&id, "id")?;
    let change = input.validate_change()?;
    let product = app
        .db
        .write("update product", DatabaseDefault, move |conn| {
            let change = change.clone();
            Box::pin(async move { products::update(conn, id, &change).await })
        })
        .await?;
    Ok(Json(product))
}

pub async fn restock_product(
    State(app): State<App>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RestockInput>,
) -> Reply<Product> {
    let id = parse_id(&id, "id")?;
    let quantity = input.validate()?;
    let product = app
        .db
        .write("restock product", DatabaseDefault, move |conn| {
            Box::pin(products::restock(conn, id, quantity))
        })
        .await?;
    Ok(Json(product))
}

pub async fn delete_product(State(app): State<App>, Path(id): Path<String>) -> NoContent {
    let id = parse_id(&id, "id")?;
    app.db
        .write("delete product", DatabaseDefault, move |conn| {
            Box::pin(products::delete(conn, id))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- orders

pub async fn create_order(
    State(app): State<App>,
    ApiJson(input): ApiJson<NewOrderInput>,
) -> Created<OrderDetail> {
    let new = input.validate()?;
    let order = app
        .db
        .write("create order", Serializable, move |conn| {
            let new = new.clone();
            Box::pin(async move { orders::create(conn, &new).await })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(order)))
}

pub async fn list_orders(State(app): State<App>, RawQuery(query): RawQuery) -> Reply<Page<Order>> {
    let mut params = QueryParams::parse(query.as_deref());
    let page = params.page()?;
    let filter = OrderFilter {
        customer_id: params.take("customer_id", "a UUID")?,
        status: params.take::<OrderStatus>("status", "an order status")?,
    };
    params.finish("limit, after, customer_id, status")?;
    Ok(Json(orders::list(app.db.pool(), page, filter).await?))
}

pub async fn get_order(State(app): State<App>, Path(id): Path<String>) -> Reply<OrderDetail> {
    let id = parse_id(&id, "id")?;
    let order = app
        .db
        .write("read order", ReadOnlySnapshot, move |conn| {
            Box::pin(async move { orders::get(conn, id).await })
        })
        .await?;
    Ok(Json(order))
}

pub async fn update_order(
    State(app): State<App>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<OrderPatch>,
) -> Reply<OrderDetail> {
    let id = parse_id(&id, "id")?;
    let OrderPatch { status } = input;
    let status = check::required(status, "status")?;
    let order = app
        .db
        .write("update order", Serializable, move |conn| {
            Box::pin(async move { orders::set_status(conn, id, status).await })
        })
        .await?;
    Ok(Json(order))
}

pub async fn delete_order(State(app): State<App>, Path(id): Path<String>) -> NoContent {
    let id = parse_id(&id, "id")?;
    app.db
        .write("delete order", Serializable, move |conn| {
            Box::pin(orders::delete(conn, id))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn update_order_item(
    State(app): State<App>,
    Path((id, product_id)): Path<(String, String)>,
    ApiJson(input): ApiJson<ItemPatch>,
) -> Reply<OrderDetail> {
    let id = parse_id(&id, "id")?;
    let product_id = parse_id(&product_id, "product_id")?;
    let quantity = input.validate()?;
    let order = app
        .db
        .write("update order item", Serializable, move |conn| {
            Box::pin(async move { orders::set_item_quantity(conn, id, product_id, quantity).await })
        })
        .await?;
    Ok(Json(order))
}

pub async fn delete_order_item(
    State(app): State<App>,
    Path((id, product_id)): Path<(String, String)>,
) -> Reply<OrderDetail> {
    let id = parse_id(&id, "id")?;
    let product_id = parse_id(&product_id, "product_id")?;
    let order = app
        .db
        .write("remove order item", Serializable, move |conn| {
            Box::pin(async move { orders::remove_item(conn, id, product_id).await })
        })
        .await?;
    Ok(Json(order))
}

// ---- payments

pub async fn create_payment(
    State(app): State<App>,
    ApiJson(input): ApiJson<NewPaymentInput>,
) -> Created<Payment> {
    let new = input.validate()?;
    let payment = app
        .db
        .write("create payment", Serializable, move |conn| {
            let new = new.clone();
            Box::pin(async move { payments::create(conn, &new).await })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(payment)))
}

pub async fn list_payments(State(app): State<App>, RawQuery(query): RawQuery) -> Reply<Page<Payment>> {
    let mut params = QueryParams::parse(query.as_deref());
    let page = params.page()?;
    let order_id = params.take("order_id", "a UUID")?;
    params.finish("limit, after, order_id")?;
    Ok(Json(payments::list(app.db.pool(), page, order_id).await?))
}

pub async fn get_payment(State(app): State<App>, Path(id): Path<String>) -> Reply<Payment> {
    let id = parse_id(&id, "id")?;
    Ok(Json(payments::get(app.db.pool(), id).await?))
}

pub async fn update_payment(
    State(app): State<App>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<PaymentPatch>,
) -> Reply<Payment> {
    let id = parse_id(&id, "id")?;
    let status = check::required(input.status, "status")?;
    let payment = app
        .db
        .write("update payment", Serializable, move |conn| {
            Box::pin(async move { payments::set_status(conn, id, status).await })
        })
        .await?;
    Ok(Json(payment))
}

pub async fn delete_payment(State(app): State<App>, Path(id): Path<String>) -> NoContent {
    let id = parse_id(&id, "id")?;
    app.db
        .write("delete payment", Serializable, move |conn| {
            Box::pin(payments::delete(conn, id))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
