//! Every CRUD path of the HTTP API, over real HTTP against a real PostgreSQL.

use serde_json::json;

use crate::common::{TestShop, s};

#[tokio::test]
async fn customers() -> anyhow::Result<()> {
    let shop = TestShop::start().await?;
    let (status, ada) = shop
        .post(
            "/customers",
            json!({"email": " Ada@Example.com ", "name": "Ada Lovelace"}),
        )
        .await?;
    assert_eq!(status, 201, "{ada}");
    assert_eq!(ada["email"], "ada@example.com", "trimmed and lower-cased");
    let id = s(&ada, "id");
    assert_eq!(uuid::Uuid::parse_str(&id)?.get_version_num(), 4);
    assert!(ada["created_at"].is_string() && ada["updated_at"].is_string());

    let (status, got) = shop.get(&format!("/customers/{id}")).await?;
    assert_eq!((status, &got), (200, &ada));

    // Duplicate e-mail: 409 naming the field.
    let (status, err) = shop
        .post("/customers", json!({"email": "ada@example.com", "name": "Other"}))
        .await?;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["field"], "email");

    // Update.
    let (status, changed) = shop
        .patch(&format!("/customers/{id}"), json!({"name": "Countess Lovelace"}))
        .await?;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["name"], "Countess Lovelace");
    assert_eq!(changed["email"], "ada@example.com", "untouched");
    let grace = shop.customer("grace@example.com").await?;
    let (status, err) = shop
        .patch(
            &format!("/customers/{grace}"),
            json!({"email": "ada@example.com"}),
        )
        .await?;
    assert_eq!((status, err["field"].as_str()), (409, Some("email")), "{err}");

    // Pagination over 7 customers, 3 at a time.
    for i in 0..5 {
        shop.customer(&format!("c{i}@example.com")).await?;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/customers?limit=3&after={a}"),
            None => "/customers?limit=3".to_string(),
        };
        let (status, page) = shop.get(&path).await?;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|c| s(c, "id")));
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "id order");

    // Delete; then it is gone.
    let (status, _) = shop.delete(&format!("/customers/{grace}")).await?;
    assert_eq!(status, 204);
    let (status, err) = shop.get(&format!("/customers/{grace}")).await?;
    assert_eq!(status, 404, "{err}");
    assert!(err["error"].as_str().unwrap().contains(&grace));
    assert_eq!(shop.delete(&format!("/customers/{grace}")).await?.0, 404);
    assert_eq!(
        shop.patch(&format!("/customers/{grace}"), json!({"name": "x"}))
            .await?
            .0,
        404
    );
    Ok(())
}

#[tokio::test]
async fn products() -> anyhow::Result<()> {
    let shop = TestShop::start().await?;
    let (status, tea) = shop
        .post(
            "/products",
            json!({"sku": "tea-green-100g", "name": "Green Tea", "price": 4.5, "stock": 10}),
        )
        .await?;
    assert_eq!(status, 201, "{tea}");
    assert_eq!(tea["sku"], "TEA-GREEN-100G");
    assert_eq!(tea["price"], "4.50", "money is a decimal string with two places");
    let id = s(&tea, "id");
    let (status, coffee) = shop
        .post(
            "/products",
            json!({"sku": "COF-1", "name": "Coffee", "price": "12"}),
        )
        .await?;
    assert_eq!(status, 201);
    assert_eq!(coffee["stock"], 0, "stock defaults to 0");

    let (status, err) = shop
        .post(
            "/products",
            json!({"sku": "TEA-GREEN-100G", "name": "Again", "price": 1}),
        )
        .await?;
    assert_eq!((status, err["field"].as_str()), (409, Some("sku")), "{err}");

    let (status, changed) = shop
        .patch(&format!("/products/{id}"), json!({"price": "5.25", "stock": 7}))
        .await?;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["price"].as_str(), changed["stock"].as_i64()),
        (Some("5.25"), Some(7))
    );
    let (status, restocked) = shop
        .post(&format!("/products/{id}/restock"), json!({"quantity": 5}))
        .await?;
    assert_eq!(status, 200, "{restocked}");
    assert_eq!(restocked["stock"], 12);

    let (status, page) = shop.get("/products?limit=1").await?;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["next_after"].is_string());

    let (status, _) = shop.delete(&format!("/products/{}", s(&coffee, "id"))).await?;
    assert_eq!(status, 204);
    assert_eq!(shop.get(&format!("/products/{}", s(&coffee, "id"))).await?.0, 404);
    Ok(())
}

#[tokio::test]
async fn orders_items_and_payments() -> anyhow::Result<()> {
    let shop = TestShop::start().await?;
    let customer = shop.customer("buyer@example.com").await?;
    let tea = shop.product("TEA", "4.50", 10).await?;
    let honey = shop.product("HONEY", "7.25", 3).await?;

    // Place: stock taken, prices snapshotted, total computed.
    let (status, order) = shop
        .post(
            "/orders",
            json!({"customer_id": customer, "items": [{"product_id": tea, "quantity": 2}, {"product_id": honey, "quantity": 1}]}),
        )
        .await?;
    assert_eq!(status, 201, "{order}");
    let id = s(&order, "id");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["total"], "16.25");
    assert_eq!(order["items"].as_array().unwrap().len(), 2);
    assert_eq!((shop.stock(&tea).await?, shop.stock(&honey).await?), (8, 2));

    // Too little stock: 409 naming the item; nothing taken.
    let (status, err) = shop
        .post(
            "/orders",
            json!({"customer_id": customer, "items": [{"product_id": tea, "quantity": 1}, {"product_id": honey, "quantity": 3}]}),
        )
        .await?;
    assert_eq!(
        (status, err["field"].as_str()),
        (409, Some("items[1].quantity")),
        "{err}"
    );
    assert_eq!(shop.stock(&tea).await?, 8, "the failed order took nothing");

    // Read and list.
    let (status, got) = shop.get(&format!("/orders/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(got, order);
    let (status, page) = shop
        .get(&format!("/orders?customer_id={customer}&status=pending"))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (_, page) = shop.get("/orders?status=paid").await?;
    assert!(page["items"].as_array().unwrap().is_empty());

    // Quantity edits move stock and the total.
    let (status, edited) = shop
        .patch(&format!("/orders/{id}/items/{tea}"), json!({"quantity": 5}))
        .await?;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["total"], "29.75");
    assert_eq!(shop.stock(&tea).await?, 5);
    let (status, err) = shop
        .patch(&format!("/orders/{id}/items/{tea}"), json!({"quantity": 11}))
        .await?;
    assert_eq!((status, err["field"].as_str()), (409, Some("quantity")), "{err}");
    let (status, removed) = shop.delete(&format!("/orders/{id}/items/{honey}")).await?;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["total"], "22.50");
    assert_eq!(shop.stock(&honey).await?, 3, "the removed item's stock is back");
    let (status, err) = shop.delete(&format!("/orders/{id}/items/{tea}")).await?;
    assert_eq!(status, 409, "the last item stays: {err}");
    assert_eq!(
        shop.patch(&format!("/orders/{id}/items/{honey}"), json!({"quantity": 1}))
            .await?
            .0,
        404
    );

    // Pay in two parts; overpaying is refused.
    let (status, err) = shop
        .post(
            "/payments",
            json!({"order_id": id, "amount": "30", "method": "card"}),
        )
        .await?;
    assert_eq!((status, err["field"].as_str()), (422, Some("amount")), "{err}");
    let (status, first) = shop
        .post(
            "/payments",
            json!({"order_id": id, "amount": "10.00", "method": "card"}),
        )
        .await?;
    assert_eq!(status, 201, "{first}");
    assert_eq!(shop.get(&format!("/orders/{id}")).await?.1["status"], "pending");
    let (status, err) = shop
        .patch(&format!("/orders/{id}/items/{tea}"), json!({"quantity": 1}))
        .await?;
    assert_eq!(status, 409, "the total may not drop below what was paid: {err}");
    let (status, second) = shop
        .post(
            "/payments",
            json!({"order_id": id, "amount": 12.5, "method": "wallet"}),
        )
        .await?;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["status"], "captured");
    assert_eq!(shop.get(&format!("/orders/{id}")).await?.1["status"], "paid");
    let (status, err) = shop
        .post(
            "/payments",
            json!({"order_id": id, "amount": 1, "method": "card"}),
        )
        .await?;
    assert_eq!((status, err["field"].as_str()), (409, Some("order_id")), "{err}");
    let (status, err) = shop
        .patch(&format!("/orders/{id}/items/{tea}"), json!({"quantity": 2}))
        .await?;
    assert_eq!(
        (status, err["field"].as_str()),
        (409, Some("status")),
        "items of a paid order are fixed: {err}"
    );

    let (status, payments) = shop.get(&format!("/payments?order_id={id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(payments["items"].as_array().unwrap().len(), 2);
    let (status, got) = shop.get(&format!("/payments/{}", s(&first, "id"))).await?;
    assert_eq!((status, &got), (200, &first));

    // Refund one: the order owes again. Pay again; ship; deliver.
    let (status, refunded) = shop
        .patch(
            &format!("/payments/{}", s(&first, "id")),
            json!({"status": "refunded"}),
        )
        .await?;
    assert_eq!(status, 200, "{refunded}");
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(shop.get(&format!("/orders/{id}")).await?.1["status"], "pending");
    let (status, err) = shop
        .patch(
            &format!("/payments/{}", s(&first, "id")),
            json!({"status": "captured"}),
        )
        .await?;
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        shop.delete(&format!("/payments/{}", s(&second, "id"))).await?.0,
        409,
        "captured payments stay"
    );
    assert_eq!(
        shop.delete(&format!("/payments/{}", s(&first, "id"))).await?.0,
        204,
        "refunded ones may go"
    );
    assert_eq!(shop.get(&format!("/payments/{}", s(&first, "id"))).await?.0, 404);
    let (status, _) = shop
        .post(
            "/payments",
            json!({"order_id": id, "amount": "10", "method": "bank_transfer"}),
        )
        .await?;
    assert_eq!(status, 201);
    let (status, err) = shop.delete(&format!("/orders/{id}")).await?;
    assert_eq!(
        (status, err["field"].as_str()),
        (409, Some("status")),
        "a paid order stays: {err}"
    );
    for (to, code) in [
        ("delivered", 409),
        ("shipped", 200),
        ("delivered", 200),
        ("cancelled", 409),
    ] {
        let (status, body) = shop
            .patch(&format!("/orders/{id}"), json!({"status": to}))
            .await?;
        assert_eq!(status, code, "to {to}: {body}");
    }
    assert_eq!(shop.stock(&tea).await?, 5, "a delivered order keeps its stock");

    // Cancel a paid order: stock back, payments refunded. It cannot be deleted (payments).
    let (_, paid) = shop
        .post(
            "/orders",
            json!({"customer_id": customer, "items": [{"product_id": honey, "quantity": 2}]}),
        )
        .await?;
    let paid_id = s(&paid, "id");
    assert_eq!(shop.stock(&honey).await?, 1);
    shop.create(
        "/payments",
        json!({"order_id": paid_id, "amount": "14.50", "method": "card"}),
    )
    .await?;
    let (status, cancelled) = shop
        .patch(&format!("/orders/{paid_id}"), json!({"status": "cancelled"}))
        .await?;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(shop.stock(&honey).await?, 3);
    let (_, payments) = shop.get(&format!("/payments?order_id={paid_id}")).await?;
    assert!(
        payments["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["status"] == "refunded")
    );
    let (status, err) = shop.delete(&format!("/orders/{paid_id}")).await?;
    assert_eq!((status, err["field"].as_str()), (409, Some("id")), "{err}");

    // Delete a pending order: its stock comes back, its items go.
    let (_, pending) = shop
        .post(
            "/orders",
            json!({"customer_id": customer, "items": [{"product_id": tea, "quantity": 4}]}),
        )
        .await?;
    assert_eq!(shop.stock(&tea).await?, 1);
    assert_eq!(
        shop.delete(&format!("/orders/{}", s(&pending, "id"))).await?.0,
        204
    );
    assert_eq!(shop.stock(&tea).await?, 5);
    assert_eq!(shop.get(&format!("/orders/{}", s(&pending, "id"))).await?.0, 404);
    let items = shop.pg.psql(
        "shop",
        &format!(
            "SELECT count(*) FROM order_items WHERE order_id = '{}'",
            s(&pending, "id")
        ),
    )?;
    assert_eq!(items.trim(), "0");

    // Referenced rows cannot be deleted.
    let (status, err) = shop.delete(&format!("/customers/{customer}")).await?;
    assert_eq!((status, err["field"].as_str()), (409, Some("id")), "{err}");
    let (status, err) = shop.delete(&format!("/products/{tea}")).await?;
    assert_eq!((status, err["field"].as_str()), (409, Some("id")), "{err}");
    Ok(())
}

#[tokio::test]
async fn health_metrics_and_unknown_paths() -> anyhow::Result<()> {
    let shop = TestShop::start().await?;
    let (status, body) = shop.get("/healthz").await?;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = shop.get("/nowhere").await?;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("no such endpoint"));
    shop.customer("m@example.com").await?;
    assert!(shop.metric("shop_transactions_committed_total").await? >= 1);
    assert!(shop.metric("shop_http_responses_total{class=\"2xx\"}").await? >= 2);
    assert!(shop.metric("shop_http_responses_total{class=\"4xx\"}").await? >= 1);

    // With the database gone, health says so.
    shop.pool.close().await;
    let (status, body) = shop.get("/healthz").await?;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    Ok(())
}
