-- A multi-server fleet: a tenant whose host could not be reached is recorded as
-- such, and each host's agent reports how much it holds in its spool.
ALTER TABLE apply_results DROP CONSTRAINT apply_results_status_check;
ALTER TABLE apply_results ADD CONSTRAINT apply_results_status_check
    CHECK (status IN ('ok', 'rolled_back', 'failed', 'skipped', 'unreachable'));
ALTER TABLE tenant_revisions DROP CONSTRAINT tenant_revisions_status_check;
ALTER TABLE tenant_revisions ADD CONSTRAINT tenant_revisions_status_check
    CHECK (status IN ('ok', 'rolled_back', 'failed', 'skipped', 'unreachable'));
ALTER TABLE agent_heartbeats ADD COLUMN spool_bytes BIGINT NOT NULL DEFAULT 0;
