-- The transactional outbox: ingest writes a job and the message that announces it in one
-- transaction; a relay sends unsent rows to the model's queue and marks them sent (it can send
-- twice after a crash between send and commit: consumers dedupe). Sent rows are pruned after a
-- retention. queue is the destination queue's name: it carries the stack's prefix, so stacks
-- sharing a database each relay their own rows.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    queue text NOT NULL,
    model text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);

-- What the relay reads (oldest unsent first) and backpressure counts (unsent per queue).
CREATE INDEX outbox_unsent ON outbox (queue, id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
