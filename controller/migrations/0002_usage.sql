-- Usage mirrored from the tenants' SQLite stores by the agents (issue 3).
-- Keys are each store row's natural key; money is NUMERIC with the store's 6 places.
-- `host` is the agent's that wrote the row: row-level security keys on it (0003).

CREATE TABLE usage_daily (
    host               TEXT NOT NULL,
    tenant_id          TEXT NOT NULL,
    usage_date         DATE NOT NULL,
    client_org_id      TEXT NOT NULL,
    total_tokens       BIGINT NOT NULL,
    total_requests     BIGINT NOT NULL,
    raw_cost           NUMERIC(18, 6) NOT NULL,
    markup_cost        NUMERIC(18, 6) NOT NULL,
    primary_model      TEXT,
    unique_users       INTEGER NOT NULL,
    source_updated_at  BIGINT NOT NULL,
    synced_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, usage_date)
);

CREATE TABLE usage_user_daily (
    host               TEXT NOT NULL,
    tenant_id           TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    usage_date          DATE NOT NULL,
    openrouter_user_id  TEXT,
    total_tokens        BIGINT NOT NULL,
    total_requests      BIGINT NOT NULL,
    raw_cost            NUMERIC(18, 6) NOT NULL,
    markup_cost         NUMERIC(18, 6) NOT NULL,
    source_updated_at   BIGINT NOT NULL,
    synced_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, usage_date)
);

CREATE TABLE usage_model_daily (
    host               TEXT NOT NULL,
    tenant_id          TEXT NOT NULL,
    model_name         TEXT NOT NULL,
    usage_date         DATE NOT NULL,
    provider           TEXT,
    total_tokens       BIGINT NOT NULL,
    total_requests     BIGINT NOT NULL,
    raw_cost           NUMERIC(18, 6) NOT NULL,
    markup_cost        NUMERIC(18, 6) NOT NULL,
    source_updated_at  BIGINT NOT NULL,
    synced_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model_name, usage_date)
);

-- The store's live counter as last read; `counter_date` is the day its numbers
-- belong to (a counter from an earlier day is stale, not today's).
CREATE TABLE usage_live_counters (
    host               TEXT NOT NULL,
    tenant_id          TEXT PRIMARY KEY,
    counter_date       DATE NOT NULL,
    today_tokens       BIGINT NOT NULL,
    today_requests     BIGINT NOT NULL,
    today_raw_cost     NUMERIC(18, 6) NOT NULL,
    today_markup_cost  NUMERIC(18, 6) NOT NULL,
    last_updated       BIGINT NOT NULL,
    synced_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE usage_generations (
    host               TEXT NOT NULL,
    tenant_id        TEXT NOT NULL,
    generation_id    TEXT NOT NULL,
    generation_date  DATE NOT NULL,
    processed_at     BIGINT NOT NULL,
    total_cost       NUMERIC(18, 6) NOT NULL,
    total_tokens     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, generation_id)
);

-- Per tenant and store table: how far the agent has shipped (the store's
-- `updated_at`, re-read from that second on) and how many rows the store had, to
-- tell a store that shrank. Moved in the same transaction as the rows it covers.
CREATE TABLE agent_watermarks (
    host           TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    store_table    TEXT NOT NULL,
    updated_at     BIGINT NOT NULL,
    row_count      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, store_table)
);

-- A store whose history shrank or went back (a reset script, a restored backup):
-- the fleet keeps its history and records what changed.
CREATE TABLE store_regressions (
    id           BIGSERIAL PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    host         TEXT NOT NULL,
    store_table  TEXT NOT NULL,
    detected_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    detail       TEXT NOT NULL
);
CREATE INDEX store_regressions_tenant ON store_regressions (tenant_id, detected_at DESC);

CREATE TABLE agent_heartbeats (
    host           TEXT PRIMARY KEY,
    agent_version  TEXT NOT NULL,
    seen_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    cycle_ms       BIGINT NOT NULL,
    tenants        INTEGER NOT NULL,
    rows_shipped   BIGINT NOT NULL,
    errors         INTEGER NOT NULL
);

-- The latest health of each tenant container as its agent saw it; history keeps
-- each change (not each cycle).
CREATE TABLE tenant_health (
    tenant_id          TEXT PRIMARY KEY,
    host               TEXT NOT NULL,
    observed_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    container          TEXT NOT NULL,
    container_state    TEXT NOT NULL,
    restart_count      BIGINT NOT NULL,
    started_at         TEXT,
    in_spec            BOOLEAN NOT NULL,
    env_missing        TEXT[] NOT NULL,
    store_status       TEXT NOT NULL,
    schema_variant     TEXT,
    org_row_present    BOOLEAN,
    last_usage_change  BIGINT,
    live_counter_date  DATE,
    tracking           TEXT NOT NULL CHECK (tracking IN ('active', 'inactive')),
    reasons            TEXT[] NOT NULL
);

CREATE TABLE tenant_health_history (
    id           BIGSERIAL PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    host         TEXT NOT NULL,
    observed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    tracking     TEXT NOT NULL,
    reasons      TEXT[] NOT NULL,
    snapshot     JSONB NOT NULL
);
CREATE INDEX tenant_health_history_tenant ON tenant_health_history (tenant_id, observed_at DESC);

-- A regression is recorded once, not every cycle that sees it again.
CREATE UNIQUE INDEX store_regressions_once ON store_regressions (tenant_id, store_table, detail);
