-- Idempotency keys of POST /v1/jobs (the Idempotency-Key header), scoped per tenant. The key is
-- claimed, and the answer saved, in the transaction that records the job: a retry with the
-- same key and body gets the saved answer; the same key with another body is refused. Kept
-- INGEST_IDEMPOTENCY_TTL_S (at least 24 h), then pruned; an expired key may be claimed anew.
CREATE TABLE idempotency_keys (
    tenant_id text NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash bytea NOT NULL CHECK (octet_length(request_hash) = 32),
    response_status integer,
    response_body text,
    created_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (tenant_id, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
