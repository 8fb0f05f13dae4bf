-- An example shop for the tables file (examples/shop/tables.toml):
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
