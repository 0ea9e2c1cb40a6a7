-- One PostgreSQL role per service, holding only what that service's own SQL needs (least
-- privilege, as the per-service IAM policies do for AWS). The operator, who runs these
-- migrations, keeps owning every table; only an owner can alter or drop one.
--
--   conveyor_ingest   records jobs and their outbox messages, reads jobs and results, cancels
--                     (status and finished_at only), keeps idempotency keys, checks API keys
--                     (the hash and its columns only; writes last_used_at and nothing else)
--   conveyor_persist  reads jobs, moves them to running or a final state (the status and the
--                     result columns only), inserts results
--   conveyor_notify   reads jobs, results and the endpoints' signing secrets, logs delivery
--                     attempts, takes and releases delivery leases
--   (infer has no database.)
--
-- These are NOLOGIN groups: a service connects as a login role of its own that is a member of
-- its group (shared/db/roles.py makes them: the emulator, `conveyor provision`). Roles are
-- cluster-wide, so the Conveyor databases of one cluster share the groups; what keeps the
-- login of one database out of another is CONNECT, taken from PUBLIC here and granted to each
-- login on its own database only.
--
-- A table added later is reachable by no service until its migration grants it.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['conveyor_ingest', 'conveyor_persist', 'conveyor_notify'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- made meanwhile by the migration of another database in this cluster
            END;
        END IF;
    END LOOP;
    -- Only roles granted CONNECT reach this database; nobody gets temporary tables.
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
END
$$;

-- Nobody but the owner creates anything in the schema (PostgreSQL 15 and later already
-- start so; older servers, RDS included, let PUBLIC create).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO conveyor_ingest, conveyor_persist, conveyor_notify;

-- ingest
GRANT SELECT, INSERT ON jobs TO conveyor_ingest;
GRANT UPDATE (status, finished_at) ON jobs TO conveyor_ingest;
GRANT SELECT ON results TO conveyor_ingest;
GRANT SELECT, INSERT, DELETE ON outbox TO conveyor_ingest;
GRANT UPDATE (sent_at, attempts, last_error) ON outbox TO conveyor_ingest;
GRANT USAGE ON SEQUENCE outbox_id_seq TO conveyor_ingest;
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO conveyor_ingest;
GRANT UPDATE (request_hash, response_status, response_body, created_at, completed_at)
    ON idempotency_keys TO conveyor_ingest;
GRANT SELECT (id, tenant_id, key_hash, revoked_at, last_used_at) ON api_keys TO conveyor_ingest;
GRANT UPDATE (last_used_at) ON api_keys TO conveyor_ingest;

-- persist
GRANT SELECT ON jobs TO conveyor_persist;
GRANT UPDATE (status, error, model_version, started_at, finished_at, updated_at, version)
    ON jobs TO conveyor_persist;
GRANT INSERT ON results TO conveyor_persist;
-- ON CONFLICT (job_id) reads the arbiter column: a redelivered result is a no-op.
GRANT SELECT (job_id) ON results TO conveyor_persist;

-- notify
GRANT SELECT ON jobs, results, webhook_endpoints, webhook_secrets TO conveyor_notify;
GRANT SELECT, INSERT ON webhook_deliveries TO conveyor_notify;
GRANT USAGE ON SEQUENCE webhook_deliveries_id_seq TO conveyor_notify;
GRANT SELECT, INSERT, DELETE ON webhook_leases TO conveyor_notify;
GRANT UPDATE (lease_until) ON webhook_leases TO conveyor_notify;
