CREATE TABLE products (
    id          serial PRIMARY KEY,
    name        text    NOT NULL UNIQUE,
    price_cents integer NOT NULL CHECK (price_cents >= 0)
);
