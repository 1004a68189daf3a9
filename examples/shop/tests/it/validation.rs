//! Bad input answers 4xx with a JSON body naming the field at fault.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::TestShop;

#[tokio::test]
async fn field_errors() -> anyhow::Result<()> {
    let shop = TestShop::start().await?;
    let customer = shop.customer("v@example.com").await?;
    let product = shop.product("SKU-1", "1.00", 5).await?;
    let (_, order) = shop
        .post(
            "/orders",
            json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]}),
        )
        .await?;
    let order = order["id"].as_str().unwrap().to_string();
    let missing = uuid::Uuid::new_v4();

    // (method, path, body, status, field)
    let cases: Vec<(Method, String, Value, u16, Option<&str>)> = vec![
        (
            Method::POST,
            "/customers".into(),
            json!({"email": "not-an-address", "name": "X"}),
            422,
            Some("email"),
        ),
        (
            Method::POST,
            "/customers".into(),
            json!({"email": "x@example.com"}),
            422,
            Some("name"),
        ),
        (
            Method::POST,
            "/customers".into(),
            json!({"email": "x@example.com", "name": "  "}),
            422,
            Some("name"),
        ),
        (
            Method::POST,
            "/customers".into(),
            json!({"email": 42, "name": "X"}),
            422,
            Some("email"),
        ),
        (
            Method::POST,
            "/customers".into(),
            json!({"email": "x@example.com", "name": "X", "age": 3}),
            422,
            Some("age"),
        ),
        (
            Method::PATCH,
            format!("/customers/{customer}"),
            json!({}),
            400,
            None,
        ),
        (
            Method::POST,
            "/products".into(),
            json!({"sku": "A", "name": "A", "price": -1}),
            422,
            Some("price"),
        ),
        (
            Method::POST,
            "/products".into(),
            json!({"sku": "A", "name": "A", "price": "1.234"}),
            422,
            Some("price"),
        ),
        (
            Method::POST,
            "/products".into(),
            json!({"sku": "A", "name": "A", "price": "cheap"}),
            422,
            Some("price"),
        ),
        (
            Method::POST,
            "/products".into(),
            json!({"sku": "A", "name": "A", "price": {"eur": 1}}),
            422,
            Some("price"),
        ),
        (
            Method::POST,
            "/products".into(),
            json!({"sku": "A B", "name": "A", "price": 1}),
            422,
            Some("sku"),
        ),
        (
            Method::POST,
            "/products".into(),
            json!({"sku": "A", "name": "A", "price": 1, "stock": -5}),
            422,
            Some("stock"),
        ),
        (
            Method::POST,
            "/products".into(),
            json!({"sku": "A", "name": "A", "price": 1, "stock": 1.5}),
            422,
            Some("stock"),
        ),
        (
            Method::POST,
            format!("/products/{product}/restock"),
            json!({"quantity": 0}),
            422,
            Some("quantity"),
        ),
        (
            Method::POST,
            "/orders".into(),
            json!({"items": []}),
            422,
            Some("customer_id"),
        ),
        (
            Method::POST,
            "/orders".into(),
            json!({"customer_id": customer, "items": []}),
            422,
            Some("items"),
        ),
        (
            Method::POST,
            "/orders".into(),
            json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 0}]}),
            422,
            Some("items[0].quantity"),
        ),
        (
            Method::POST,
            "/orders".into(),
            json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}, {"product_id": "nope", "quantity": 1}]}),
            422,
            Some("items[1].product_id"),
        ),
        (
            Method::POST,
            "/orders".into(),
            json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}, {"product_id": product, "quantity": 2}]}),
            422,
            Some("items[1].product_id"),
        ),
        (
            Method::POST,
            "/orders".into(),
            json!({"customer_id": missing, "items": [{"product_id": product, "quantity": 1}]}),
            409,
            Some("customer_id"),
        ),
        (
            Method::POST,
            "/orders".into(),
            json!({"customer_id": customer, "items": [{"product_id": missing, "quantity": 1}]}),
            409,
            Some("items[0].product_id"),
        ),
        (
            Method::PATCH,
            format!("/orders/{order}"),
            json!({"status": "lost"}),
            422,
            Some("status"),
        ),
        (
            Method::PATCH,
            format!("/orders/{order}"),
            json!({"status": "paid"}),
            409,
            Some("status"),
        ),
        (
            Method::PATCH,
            format!("/orders/{order}"),
            json!({}),
            422,
            Some("status"),
        ),
        (
            Method::POST,
            "/payments".into(),
            json!({"order_id": order, "amount": 0, "method": "card"}),
            422,
            Some("amount"),
        ),
        (
            Method::POST,
            "/payments".into(),
            json!({"order_id": order, "amount": 1, "method": "cash"}),
            422,
            Some("method"),
        ),
        (
            Method::POST,
            "/payments".into(),
            json!({"order_id": missing, "amount": 1, "method": "card"}),
            409,
            Some("order_id"),
        ),
        (
            Method::GET,
            "/customers?limit=0".into(),
            Value::Null,
            422,
            Some("limit"),
        ),
        (
            Method::GET,
            "/customers?limit=ten".into(),
            Value::Null,
            422,
            Some("limit"),
        ),
        (
            Method::GET,
            "/customers?after=5".into(),
            Value::Null,
            422,
            Some("after"),
        ),
        (
            Method::GET,
            "/customers?colour=red".into(),
            Value::Null,
            422,
            Some("colour"),
        ),
        (
            Method::GET,
            "/orders?status=lost".into(),
            Value::Null,
            422,
            Some("status"),
        ),
        (
            Method::GET,
            "/customers/not-a-uuid".into(),
            Value::Null,
            400,
            None,
        ),
        (
            Method::GET,
            format!("/customers/{missing}"),
            Value::Null,
            404,
            None,
        ),
        (Method::GET, format!("/orders/{missing}"), Value::Null, 404, None),
        (
            Method::DELETE,
            format!("/payments/{missing}"),
            Value::Null,
            404,
            None,
        ),
    ];
    for (method, path, body, status, field) in cases {
        let body = if body.is_null() { None } else { Some(body) };
        let (got, answer) = shop.send(method.clone(), &path, body.clone()).await?;
        let what = format!("{method} {path} {body:?}");
        assert_eq!(got, status, "{what}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: no error message: {answer}"
        );
        assert_eq!(answer["field"].as_str(), field, "{what}: {answer}");
    }

    // Malformed bodies are 400.
    for body in ["{\"email\": ", "[1, 2]", "{} {}", ""] {
        let (status, answer) = shop.send_raw(Method::POST, "/customers", body).await?;
        assert_eq!(status, 400, "{body:?}: {answer}");
        assert!(answer["error"].is_string());
    }
    assert_eq!(shop.stock(&product).await?, 4, "no failed request changed stock");
    Ok(())
}
