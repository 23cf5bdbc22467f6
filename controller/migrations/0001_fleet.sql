-- Desired state and apply history. Never edit once applied: add a new migration.

CREATE TABLE hosts (
    name        TEXT PRIMARY KEY,
    fleet       TEXT NOT NULL,
    docker_url  TEXT NOT NULL,
    data_root   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The effective spec of each tenant as last applied, without secrets: the key is
-- kept only as a SHA-256 fingerprint (to tell a rotation) and a masked label.
CREATE TABLE tenants (
    id                 TEXT PRIMARY KEY,
    fleet              TEXT NOT NULL,
    host               TEXT NOT NULL REFERENCES hosts (name),
    name               TEXT NOT NULL,
    org_id             TEXT NOT NULL,
    timezone           TEXT NOT NULL,
    markup_rate        NUMERIC(8, 4) NOT NULL CHECK (markup_rate BETWEEN 1 AND 5),
    monthly_limit_usd  NUMERIC(14, 2),
    spec               JSONB NOT NULL,
    spec_hash          TEXT NOT NULL,
    key_fingerprint    TEXT NOT NULL,
    key_masked         TEXT NOT NULL,
    in_spec            BOOLEAN NOT NULL DEFAULT TRUE,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT tenants_org_id_unique UNIQUE (org_id)
);

-- Billing uses the markup in force when the usage happened: each change is kept
-- with the apply that made it.
CREATE TABLE tenant_markup_history (
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    markup_rate     NUMERIC(8, 4) NOT NULL,
    effective_from  TIMESTAMPTZ NOT NULL,
    apply_run_id    BIGINT,
    PRIMARY KEY (tenant_id, effective_from)
);

CREATE TABLE apply_runs (
    id           BIGSERIAL PRIMARY KEY,
    fleet        TEXT NOT NULL,
    actor        TEXT NOT NULL,
    spec_file    TEXT NOT NULL,
    spec_sha256  TEXT NOT NULL,
    options      JSONB NOT NULL,
    plan         JSONB NOT NULL,
    status       TEXT NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')),
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    summary      JSONB
);
CREATE INDEX apply_runs_fleet_started ON apply_runs (fleet, started_at DESC);

CREATE TABLE apply_results (
    id            BIGSERIAL PRIMARY KEY,
    run_id        BIGINT NOT NULL REFERENCES apply_runs (id) ON DELETE CASCADE,
    host          TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    action        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('ok', 'rolled_back', 'failed', 'skipped')),
    detail        TEXT NOT NULL,
    container_id  TEXT,
    duration_ms   BIGINT NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX apply_results_tenant ON apply_results (tenant_id, recorded_at DESC);
