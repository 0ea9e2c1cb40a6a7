-- The job state machine, enforced where every writer meets it:
--   queued -> running -> succeeded | failed | cancelled, and queued -> any final state.
-- Final states are final. A write that breaks the rule is refused by the database itself,
-- whatever service (or person) attempts it; every accepted change bumps the version.
CREATE FUNCTION jobs_check_transition() RETURNS trigger AS $$
BEGIN
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF OLD.status IN ('succeeded', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'job % is % and cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status = 'running' AND NEW.status = 'queued' THEN
        RAISE EXCEPTION 'job % is running and cannot go back to queued', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_state_machine
    BEFORE UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_check_transition();
