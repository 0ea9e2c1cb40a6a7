-- What the pipeline records: the job's progress, its result (once), each webhook attempt.
ALTER TABLE jobs
    ADD COLUMN inputs_count integer NOT NULL DEFAULT 0,
    ADD COLUMN model_version text,
    ADD COLUMN started_at timestamptz;

CREATE TABLE results (
    job_id uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    outputs jsonb,
    model_version text,
    batch_size integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per delivery attempt. webhook_id is stable across the retries of one delivery.
CREATE TABLE webhook_deliveries (
    id bigserial PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    webhook_id text NOT NULL,
    event text NOT NULL,
    attempt integer NOT NULL,
    url text NOT NULL,
    status_code integer,
    error text,
    succeeded boolean NOT NULL,
    duration_ms integer NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, attempted_at);
