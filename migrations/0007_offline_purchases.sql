-- Offline purchases from PSAM terminals (docs/psam.md "Offline purchases"): a terminal
-- is a reader registered to a merchant, whose PSAM has the reader's terminal number; it
-- runs the city's sealed terminal program offline and uploads each receipt through its
-- journal. The card company settles a receipt on the card's TAC, once per
-- (city, terminal number, terminal sequence) — the fields the TAC covers — as a
-- committed purchase row of its own, credited to the terminal's merchant.

-- The merchant whose terminal this reader is (NULL: not a merchant terminal).
ALTER TABLE readers ADD COLUMN merchant_id TEXT REFERENCES merchants (merchant_id);

-- For an offline purchase: the PSAM's terminal sequence, and the merchant and fee rate
-- at settlement (an online purchase takes them from its order).
ALTER TABLE transactions ADD COLUMN terminal_seq BIGINT;
ALTER TABLE transactions ADD COLUMN merchant_id TEXT;
ALTER TABLE transactions ADD COLUMN fee_bp BIGINT;
-- Exactly once: NULLs (every bundle) never collide.
CREATE UNIQUE INDEX transactions_offline ON transactions (city, terminal_id, terminal_seq);

-- Every terminal program a city has had: a receipt of an older one still settles.
CREATE TABLE terminal_programs (
    city     BIGINT NOT NULL,
    sm3      TEXT   NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (city, sm3)
);
