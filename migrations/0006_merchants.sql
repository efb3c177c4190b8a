-- Merchants, their payment orders and the notifications they are owed, and the clearing
-- of business days (docs/clearing.md).
--
-- An order's money is its purchase transaction's: the order names the transaction that
-- pays it (reader_id, seq), bound in the same database transaction that records the
-- bundle, and it is paid exactly when that transaction is committed. Nothing else
-- records "paid", so an order and the ledger cannot disagree.
CREATE TABLE merchants (
    merchant_id TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    -- Service fee the card company keeps, in basis points (1/100 of a percent).
    fee_bp      BIGINT NOT NULL,
    account     TEXT   NOT NULL,
    -- The merchant's SM2 public key (SEC1, hex): it signs every merchant request.
    public_key  TEXT   NOT NULL,
    notify_url  TEXT,
    enabled     BIGINT NOT NULL,
    added_at    BIGINT NOT NULL
);

CREATE TABLE orders (
    order_id       TEXT   PRIMARY KEY,
    merchant_id    TEXT   NOT NULL REFERENCES merchants (merchant_id),
    merchant_order TEXT   NOT NULL,
    amount         BIGINT NOT NULL,
    description    TEXT   NOT NULL,
    -- The merchant's fee rate when the order was made (a later change does not reprice it).
    fee_bp         BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    -- open, cancelled or refunded; "paying" and "paid" are read from the transaction.
    state          TEXT   NOT NULL,
    reader_id      TEXT,
    seq            BIGINT,
    -- A refund is a record owed to the cardholder (docs/clearing.md "Refunds").
    refunded_at    BIGINT,
    refund_note    TEXT,
    refund_cleared_day TEXT,
    -- The paid notification: acknowledged, or when to try next.
    notify_attempts BIGINT NOT NULL DEFAULT 0,
    notify_next_at  BIGINT NOT NULL DEFAULT 0,
    notify_acked_at BIGINT,
    notify_error    TEXT,
    UNIQUE (merchant_id, merchant_order)
);
CREATE UNIQUE INDEX orders_txn ON orders (reader_id, seq);

-- The order a purchase transaction pays (NULL: a payment to the card company itself),
-- and the business day it was cleared in.
ALTER TABLE transactions ADD COLUMN order_id TEXT;
ALTER TABLE transactions ADD COLUMN cleared_day TEXT;
CREATE INDEX transactions_cleared ON transactions (cleared_day);

-- One row per cleared business day: the result as it was signed. Re-running a day
-- returns this row; nothing is cleared twice.
CREATE TABLE clearing_days (
    day        TEXT   PRIMARY KEY,
    zone       TEXT   NOT NULL,
    cutoff     TEXT   NOT NULL,
    run_at     BIGINT NOT NULL,
    result     TEXT   NOT NULL
);

-- Recharges paid first (a city setting): a payment provider (bank, third-party payment)
-- notifies the card company, signed with its own key, that a recharge order was paid;
-- only then does a load for exactly that card and amount get a bundle. The order names
-- the load that uses it (transactions.order_id), bound like a merchant order.
CREATE TABLE providers (
    provider_id TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    -- sm2 (public key: SEC1 hex) or rsa-sha256 (public key: SPKI PEM).
    alg         TEXT   NOT NULL,
    public_key  TEXT   NOT NULL,
    enabled     BIGINT NOT NULL,
    added_at    BIGINT NOT NULL
);

CREATE TABLE recharge_orders (
    order_id     TEXT   PRIMARY KEY,
    city         BIGINT NOT NULL,
    card_id      TEXT   NOT NULL,
    amount       BIGINT NOT NULL,
    provider_id  TEXT   NOT NULL REFERENCES providers (provider_id),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    -- What the provider says was paid (recorded even when it is not the amount).
    paid_amount  BIGINT,
    provider_ref TEXT,
    paid_at      BIGINT,
    reader_id    TEXT,
    seq          BIGINT
);
CREATE UNIQUE INDEX recharge_orders_txn ON recharge_orders (reader_id, seq);
CREATE UNIQUE INDEX recharge_orders_ref ON recharge_orders (provider_id, provider_ref);
