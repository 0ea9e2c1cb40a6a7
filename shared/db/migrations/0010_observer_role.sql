-- A read-only group for operators' views (`conveyor top`): how many jobs are in which state,
-- how long each hop took, how webhook deliveries went. It reads no input, output, error text,
-- callback URL, tenant, key or secret: only states, models, timestamps and outcomes.
-- Its logins are made like the services' (shared/db/roles.py: the emulator, `conveyor
-- provision`), members of this group alone.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'conveyor_observer') THEN
        BEGIN
            CREATE ROLE conveyor_observer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- made meanwhile by the migration of another database in this cluster
        END;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO conveyor_observer;
GRANT SELECT (id, model, status, created_at, started_at, finished_at) ON jobs TO conveyor_observer;
GRANT SELECT (job_id, event, attempt, status_code, succeeded, attempted_at)
    ON webhook_deliveries TO conveyor_observer;
GRANT SELECT (model, created_at, sent_at) ON outbox TO conveyor_observer;

-- What a refresh every second reads stays cheap as the tables grow: the unfinished jobs, the
-- last minute's final states and delivery attempts.
CREATE INDEX jobs_unfinished ON jobs (model, status) WHERE finished_at IS NULL;
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX webhook_deliveries_attempted ON webhook_deliveries (attempted_at);
