-- OpenRouter keys owned by the fleet (issue 12): the keys the controller created or
-- adopted, OpenRouter's own ledger per key and day (`GET /activity` keeps 30 days
-- only: these rows are the history) and the account's credit. Only the controller
-- reads or writes these tables; agents have no privilege on them.

-- A key's string is kept sealed (ChaCha20-Poly1305 under the fleet's master key,
-- bound to tenant and hash): the database alone never reveals a key. `hash` is
-- OpenRouter's identifier for the management endpoints; `fingerprint` is the
-- SHA-256 the rest of the fleet uses (tenants.key_fingerprint, snapshots).
CREATE TABLE openrouter_keys (
    id           BIGSERIAL PRIMARY KEY,
    fleet        TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    mask         TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    sealed       BYTEA NOT NULL,
    origin       TEXT NOT NULL CHECK (origin IN ('provisioned', 'adopted')),
    -- current: the tenant's key; next: made by a rotation not yet finished;
    -- disabled: kept at OpenRouter but stopped; deleted: gone from OpenRouter.
    status       TEXT NOT NULL CHECK (status IN ('current', 'next', 'disabled', 'deleted')),
    limit_usd    NUMERIC(14, 2),
    -- Why the fleet disabled it: `limit YYYY-MM` (re-enabled the next month) or `offboarded`.
    disabled_for TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at   TIMESTAMPTZ
);
CREATE UNIQUE INDEX openrouter_keys_one_current ON openrouter_keys (tenant_id) WHERE status = 'current';
CREATE UNIQUE INDEX openrouter_keys_one_next ON openrouter_keys (tenant_id) WHERE status = 'next';

-- `GET /activity` per key (`key_hash`) and for the whole account (`key_hash` '*'):
-- spend per completed UTC day, model and endpoint.
CREATE TABLE openrouter_activity (
    key_hash           TEXT NOT NULL,
    activity_date      DATE NOT NULL,
    model              TEXT NOT NULL,
    endpoint_id        TEXT NOT NULL DEFAULT '',
    provider_name      TEXT,
    usage              NUMERIC(18, 6) NOT NULL,
    requests           BIGINT NOT NULL DEFAULT 0,
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens   BIGINT NOT NULL DEFAULT 0,
    fetched_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key_hash, activity_date, model, endpoint_id)
);
CREATE INDEX openrouter_activity_date ON openrouter_activity (activity_date);

-- Each key's day in one row (kept with the snapshot that changes it): days are
-- compared first, and only a day that differs is broken down by model.
CREATE TABLE openrouter_activity_days (
    key_hash       TEXT NOT NULL,
    activity_date  DATE NOT NULL,
    usage          NUMERIC(18, 6) NOT NULL,
    PRIMARY KEY (key_hash, activity_date)
);
CREATE INDEX openrouter_activity_days_date ON openrouter_activity_days (activity_date);

CREATE TABLE openrouter_activity_fetches (
    id          BIGSERIAL PRIMARY KEY,
    fetched_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    keys        INTEGER NOT NULL,
    items       INTEGER NOT NULL
);

-- `GET /credits`: what the account bought and spent, as polled.
CREATE TABLE openrouter_credits (
    id             BIGSERIAL PRIMARY KEY,
    polled_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    total_credits  NUMERIC(18, 6) NOT NULL,
    total_usage    NUMERIC(18, 6) NOT NULL
);
CREATE INDEX openrouter_credits_time ON openrouter_credits (polled_at DESC);

-- What the fleet does when a client's monthly limit is reached on a key it did not
-- create: raise the alert only, or also disable the key (it must be adopted).
ALTER TABLE tenants ADD COLUMN on_limit TEXT NOT NULL DEFAULT 'alert'
    CHECK (on_limit IN ('alert', 'disable'));

CREATE TRIGGER mai_fleet_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON openrouter_activity
    FOR EACH STATEMENT EXECUTE FUNCTION mai_fleet_notify_change();
CREATE TRIGGER mai_fleet_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON openrouter_keys
    FOR EACH STATEMENT EXECUTE FUNCTION mai_fleet_notify_change();

-- A key rotation is an operation on one tenant, with who did it and how it ended.
ALTER TABLE tenant_operations DROP CONSTRAINT tenant_operations_kind_check;
ALTER TABLE tenant_operations ADD CONSTRAINT tenant_operations_kind_check
    CHECK (kind IN ('restart', 'exec', 'rollback', 'backup', 'restore', 'rotate_key'));
