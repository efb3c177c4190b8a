-- What the ledger knows of each card it has seen, per city (DESIGN invariant 14). The base is the
-- card's online counter and balance at first sight (or when an operator cleared it), with
-- the ledger's count and sum of its settled loads and the count of its open loads then;
-- every query is compared with the base plus the loads the ledger has settled since and
-- those still open. A card whose
-- counter or balance moved beyond that is suspect, with the evidence, and gets no bundle
-- until an operator clears it (`cardvm issuer card clear`); `history` keeps every
-- suspicion and clearing.
CREATE TABLE card_state (
    city            BIGINT NOT NULL,
    card_id         TEXT   NOT NULL,
    base_online_atc BIGINT NOT NULL,
    base_balance    BIGINT NOT NULL,
    base_at         BIGINT NOT NULL,
    base_settled_n  BIGINT NOT NULL,
    base_settled_sum BIGINT NOT NULL,
    base_open_n     BIGINT NOT NULL,
    last_online_atc BIGINT NOT NULL,
    last_balance    BIGINT NOT NULL,
    last_at         BIGINT NOT NULL,
    suspect         TEXT,
    suspect_at      BIGINT,
    history         TEXT   NOT NULL,
    PRIMARY KEY (city, card_id)
);
