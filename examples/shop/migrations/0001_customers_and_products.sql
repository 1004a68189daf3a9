-- Customers and the product catalogue.
--
-- Portable between PostgreSQL and CockroachDB: UUID keys made by the application (no SERIAL,
-- no sequences), BIGINT rather than INT (INT is 4 bytes in PostgreSQL, 8 in CockroachDB),
-- named constraints so both databases report the same names in errors.

CREATE TABLE customers (
    id          UUID        NOT NULL,
    email       TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT customers_pkey PRIMARY KEY (id),
    CONSTRAINT customers_email_key UNIQUE (email),
    CONSTRAINT customers_email_check CHECK (email LIKE '_%@_%'),
    CONSTRAINT customers_name_check CHECK (length(name) > 0)
);

CREATE TABLE products (
    id          UUID          NOT NULL,
    sku         TEXT          NOT NULL,
    name        TEXT          NOT NULL,
    price       NUMERIC(12,2) NOT NULL,
    stock       BIGINT        NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ   NOT NULL DEFAULT now(),
    CONSTRAINT products_pkey PRIMARY KEY (id),
    CONSTRAINT products_sku_key UNIQUE (sku),
    CONSTRAINT products_price_check CHECK (price >= 0),
    CONSTRAINT products_stock_check CHECK (stock >= 0),
    CONSTRAINT products_name_check CHECK (length(name) > 0)
);
