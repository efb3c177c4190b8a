-- Money is decided by the database, per card (DESIGN invariant 13). Every bundle for a
-- card is recorded in one transaction that first writes the card's row here: PostgreSQL
-- locks that row, SQLite takes its write lock, so two issuances for one card (on one
-- instance or several) are decided one after the other, each seeing the other's amount.
CREATE TABLE card_locks (
    card_id TEXT   PRIMARY KEY,
    version BIGINT NOT NULL
);

-- Request ids are reserved before any work: a reservation holds the SM3 of the request
-- body and an empty response until the answer is stored, so a raced id has exactly one
-- effect and the same id with another body is refused.
ALTER TABLE requests ADD COLUMN body_sm3 TEXT;
