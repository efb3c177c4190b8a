-- The online service's idempotency store: the answer to each successful request, by the
-- reader's request id, so a retry after a lost connection gets the same answer and does
-- nothing twice (shared by every service instance on the same database).
CREATE TABLE requests (
    reader_id  TEXT   NOT NULL,
    request_id TEXT   NOT NULL,
    endpoint   TEXT   NOT NULL,
    response   TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (reader_id, request_id)
);
