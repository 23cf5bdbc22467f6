-- Day-2 operations (issue 13): what each apply ran per tenant (history, rollback),
-- operations on single tenants (restart, exec, rollback, backup, restore) with who
-- did them, backups and restores. Only the controller reads or writes these tables;
-- agents have no privilege on them.

-- The effective spec a tenant was launched with in a run (secrets as their
-- references, the key as its mask), whatever the result.
CREATE TABLE tenant_revisions (
    run_id       BIGINT NOT NULL REFERENCES apply_runs (id) ON DELETE CASCADE,
    tenant_id    TEXT NOT NULL,
    host         TEXT NOT NULL,
    action       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('ok', 'rolled_back', 'failed', 'skipped')),
    spec         JSONB NOT NULL,
    spec_hash    TEXT NOT NULL,
    image        TEXT NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, tenant_id)
);
CREATE INDEX tenant_revisions_tenant ON tenant_revisions (tenant_id, run_id DESC);

CREATE TABLE tenant_operations (
    id           BIGSERIAL PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    host         TEXT NOT NULL,
    actor        TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('restart', 'exec', 'rollback', 'backup', 'restore')),
    -- exec: the command as given (the tenant's key masked).
    command      TEXT[],
    detail       TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ok', 'failed', 'rolled_back')),
    exit_code    INT,
    -- rollback: the run whose revision it put back.
    run_id       BIGINT,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
CREATE INDEX tenant_operations_tenant ON tenant_operations (tenant_id, started_at DESC);

CREATE TABLE tenant_backups (
    id            BIGSERIAL PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    host          TEXT NOT NULL,
    taken_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    path          TEXT NOT NULL,
    bytes         BIGINT NOT NULL,
    files         INT NOT NULL,
    store_sha256  TEXT NOT NULL,
    -- The store's totals for the tenant's organization in the copy.
    tokens        BIGINT NOT NULL,
    raw_cost      NUMERIC(18, 6) NOT NULL,
    actor         TEXT NOT NULL,
    scheduled     BOOLEAN NOT NULL DEFAULT FALSE,
    -- Set when retention removed the copy.
    removed_at    TIMESTAMPTZ
);
CREATE INDEX tenant_backups_tenant ON tenant_backups (tenant_id, taken_at DESC);

-- A store put back on purpose: the regressions the agent then sees are expected.
CREATE TABLE tenant_restores (
    id           BIGSERIAL PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    backup_id    BIGINT REFERENCES tenant_backups (id),
    path         TEXT NOT NULL,
    actor        TEXT NOT NULL,
    restored_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tenant_restores_tenant ON tenant_restores (tenant_id, restored_at DESC);

-- The run whose revision `controller rollback` put back, until an apply replaces it.
ALTER TABLE tenants ADD COLUMN rolled_back_to BIGINT;
