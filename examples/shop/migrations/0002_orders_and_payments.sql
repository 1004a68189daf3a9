-- Orders, their items and payments.
--
-- Deleting an order deletes its items; an order with payments, a customer with orders and a
-- product on an order cannot be deleted (the foreign keys restrict it).

CREATE TABLE orders (
    id           UUID          NOT NULL,
    customer_id  UUID          NOT NULL,
    status       TEXT          NOT NULL DEFAULT 'pending',
    total        NUMERIC(12,2) NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ   NOT NULL DEFAULT now(),
    CONSTRAINT orders_pkey PRIMARY KEY (id),
    CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES customers (id),
    CONSTRAINT orders_status_check
        CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
    CONSTRAINT orders_total_check CHECK (total >= 0)
);

CREATE INDEX orders_customer_id_idx ON orders (customer_id);

CREATE TABLE order_items (
    id          UUID          NOT NULL,
    order_id    UUID          NOT NULL,
    product_id  UUID          NOT NULL,
    quantity    BIGINT        NOT NULL,
    unit_price  NUMERIC(12,2) NOT NULL,
    CONSTRAINT order_items_pkey PRIMARY KEY (id),
    CONSTRAINT order_items_order_id_fkey
        FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE,
    CONSTRAINT order_items_product_id_fkey FOREIGN KEY (product_id) REFERENCES products (id),
    CONSTRAINT order_items_order_id_product_id_key UNIQUE (order_id, product_id),
    CONSTRAINT order_items_quantity_check CHECK (quantity > 0),
    CONSTRAINT order_items_unit_price_check CHECK (unit_price >= 0)
);

CREATE INDEX order_items_product_id_idx ON order_items (product_id);

CREATE TABLE payments (
    id          UUID          NOT NULL,
    order_id    UUID          NOT NULL,
    amount      NUMERIC(12,2) NOT NULL,
    method      TEXT          NOT NULL,
    status      TEXT          NOT NULL DEFAULT 'captured',
    created_at  TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ   NOT NULL DEFAULT now(),
    CONSTRAINT payments_pkey PRIMARY KEY (id),
    CONSTRAINT payments_order_id_fkey FOREIGN KEY (order_id) REFERENCES orders (id),
    CONSTRAINT payments_amount_check CHECK (amount > 0),
    CONSTRAINT payments_method_check CHECK (method IN ('card', 'bank_transfer', 'wallet')),
    CONSTRAINT payments_status_check CHECK (status IN ('captured', 'refunded'))
);

CREATE INDEX payments_order_id_idx ON payments (order_id);
