-- The card company's ledger. Portable SQL: the same text runs on SQLite and on
-- PostgreSQL (TEXT and BIGINT only; byte strings are upper-case hex).

-- Issuer settings: the trust anchors, CRLs, the sealing key's path, the key store.
CREATE TABLE issuer_config (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per city: purse algorithm and limits (fen).
CREATE TABLE cities (
    city        BIGINT PRIMARY KEY,
    alg         TEXT   NOT NULL,
    purse_limit BIGINT NOT NULL,
    txn_limit   BIGINT NOT NULL,
    day_limit   BIGINT NOT NULL
);

-- The command scripts the issuer seals per city: query, load, recover.
CREATE TABLE scripts (
    city      BIGINT NOT NULL REFERENCES cities (city),
    role      TEXT   NOT NULL,
    sm3       TEXT   NOT NULL,
    body      TEXT   NOT NULL,
    PRIMARY KEY (city, role)
);

-- Readers the issuer serves: certificate (re-verified on every use), terminal id, and
-- the next sequence number to seal for it (allocated by a conditional UPDATE).
CREATE TABLE readers (
    reader_id   TEXT   PRIMARY KEY,
    cert_pem    TEXT   NOT NULL,
    serial      TEXT   NOT NULL,
    terminal_id TEXT   NOT NULL,
    next_seq    BIGINT NOT NULL,
    added_at    BIGINT NOT NULL
);

-- Cards refused (lost, stolen, disputed).
CREATE TABLE blocklist (
    card_id  TEXT   PRIMARY KEY,
    reason   TEXT   NOT NULL,
    added_at BIGINT NOT NULL
);

-- One row per sealed bundle. (reader_id, seq) is what a receipt names; a query receipt
-- can buy one bundle (query_sm3 UNIQUE); state moves only by conditional UPDATEs.
CREATE TABLE transactions (
    reader_id      TEXT   NOT NULL REFERENCES readers (reader_id),
    seq            BIGINT NOT NULL,
    kind           TEXT   NOT NULL,
    city           BIGINT NOT NULL,
    card_id        TEXT   NOT NULL,
    amount         BIGINT NOT NULL,
    terminal_id    TEXT   NOT NULL,
    txn_datetime   TEXT   NOT NULL,
    command_sm3    TEXT   NOT NULL,
    query_sm3      TEXT   UNIQUE,
    balance_before BIGINT,
    recovers_seq   BIGINT,
    issued_at      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    state          TEXT   NOT NULL,
    receipt_sm3    TEXT,
    settled_at     BIGINT,
    atc            BIGINT,
    mac2           TEXT,
    tac            TEXT,
    balance_after  BIGINT,
    note           TEXT,
    PRIMARY KEY (reader_id, seq)
);
CREATE INDEX transactions_card ON transactions (card_id, issued_at);
CREATE INDEX transactions_state ON transactions (state);
