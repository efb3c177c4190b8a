-- Host-secured mode (docs/host.md): the reader holds no card key; the card company answers
-- the script's host commands. A load's MAC2 is issued once per bundle: the same request
-- again gets the same answer (a lost reply is retried), any other is refused. A
-- host-secured transaction cannot have committed without its MAC2, and a reader's
-- "failed" after its MAC2 was issued is not evidence (recovery decides).
CREATE TABLE host_answers (
    reader_id TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    ins       BIGINT NOT NULL,
    request   TEXT   NOT NULL,
    response  TEXT   NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (reader_id, seq, ins)
);
ALTER TABLE transactions ADD COLUMN host_secured BIGINT NOT NULL DEFAULT 0;
