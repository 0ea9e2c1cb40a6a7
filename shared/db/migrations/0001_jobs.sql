-- Jobs: one row per accepted job. The status only moves forward (queued -> running ->
-- succeeded | failed | cancelled); the version column lets updates check what they saw.
CREATE TABLE jobs (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    model text NOT NULL,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    version integer NOT NULL DEFAULT 0,
    callback_url text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created_at DESC);
