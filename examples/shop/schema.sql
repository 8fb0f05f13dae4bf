-- An example shop for the tables file (examples/shop/tables.toml): three
-- tables, one filtered and projected, one projected, one with a composite key.
--   ./scripts/demo.sh --primary postgres --pg-init examples/shop/schema.sql \
--       --config examples/shop/tables.toml
-- Safe to run again: it creates what is missing and adds no row twice.

CREATE TABLE IF NOT EXISTS products (
    sku     text PRIMARY KEY,
    name    text NOT NULL,
    price   numeric(10, 2) NOT NULL,
    cost    numeric(10, 2) NOT NULL,          -- never leaves the database
    active  boolean NOT NULL DEFAULT true,    -- inactive products are not cached
    tags    text[] NOT NULL DEFAULT '{}'
);

-- The tables file filters on `active` and publishes only some columns, so
-- PostgreSQL needs a replica identity that covers the filter's column and
-- lies within the column list: an index over the key and the flag.
CREATE UNIQUE INDEX IF NOT EXISTS products_ident ON products (sku, active);
ALTER TABLE products REPLICA IDENTITY USING INDEX products_ident;

INSERT INTO products (sku, name, price, cost, active, tags)
SELECT format('SKU-%s', lpad(i::text, 5, '0')),
       format('Product %s', i),
       (i % 97 + 0.99)::numeric(10, 2),
       (i % 97 * 0.6)::numeric(10, 2),
       i % 10 <> 0,
       ARRAY[CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END]
FROM generate_series(1, 1000) AS i
ON CONFLICT (sku) DO NOTHING;

CREATE TABLE IF NOT EXISTS customers (
    id            bigint PRIMARY KEY,
    name          text NOT NULL,
    email         text NOT NULL,
    password_hash text NOT NULL                -- never leaves the database
);

INSERT INTO customers (id, name, email, password_hash)
SELECT i, format('Customer %s', i), format('customer%s@example.com', i), md5(i::text)
FROM generate_series(1, 200) AS i
ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS order_lines (
    order_id  bigint NOT NULL,
    line_no   integer NOT NULL,
    customer  bigint NOT NULL REFERENCES customers (id),
    sku       text NOT NULL REFERENCES products (sku),
    quantity  integer NOT NULL,
    PRIMARY KEY (order_id, line_no)            -- a composite key
);

INSERT INTO order_lines (order_id, line_no, customer, sku, quantity)
SELECT o, l, 1 + o % 200, format('SKU-%s', lpad((1 + (o * 7 + l) % 1000)::text, 5, '0')), 1 + l
FROM generate_series(1, 300) AS o, generate_series(1, 3) AS l
ON CONFLICT (order_id, line_no) DO NOTHING;
