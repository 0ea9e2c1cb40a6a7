-- One delivery of a job's event at a time. SQS can hand two copies of a notification to two
-- workers at once; the one holding the lease delivers, the other retries later and then
-- finds the event delivered. A lease outlives a crashed holder only until lease_until.
CREATE TABLE webhook_leases (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event text NOT NULL,
    lease_until timestamptz NOT NULL,
    PRIMARY KEY (job_id, event)
);
