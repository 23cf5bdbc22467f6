-- Billing (issue 4): NBP exchange rates, closed months, dashboard users and sessions.

-- One row per NBP table and publication day. `rate` is the ask (table C) or the mid
-- (table A), 4 places as NBP publishes them.
CREATE TABLE exchange_rates (
    rate_table      TEXT NOT NULL CHECK (rate_table IN ('A', 'C')),
    effective_date  DATE NOT NULL,
    table_no        TEXT NOT NULL,
    rate            NUMERIC(10, 4) NOT NULL CHECK (rate > 0),
    fetched_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (rate_table, effective_date)
);

-- Each fetch attempt, so the dashboard can tell "no table published" from "NBP down".
CREATE TABLE exchange_rate_fetches (
    id           BIGSERIAL PRIMARY KEY,
    rate_table   TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    ok           BOOLEAN NOT NULL,
    stored       INTEGER NOT NULL,
    detail       TEXT NOT NULL
);

-- A closed month is frozen: its lines as they were at closing. Later usage for the
-- month shows as an adjustment against these, never folded in.
CREATE TABLE billing_closes (
    month        DATE PRIMARY KEY CHECK (extract(day FROM month) = 1),
    closed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    closed_by    TEXT NOT NULL,
    rate_table   TEXT NOT NULL
);

CREATE TABLE billing_closed_lines (
    month            DATE NOT NULL REFERENCES billing_closes (month),
    tenant_id        TEXT NOT NULL,
    tokens           BIGINT NOT NULL,
    requests         BIGINT NOT NULL,
    raw_cost         NUMERIC(20, 10) NOT NULL,
    client_cost      NUMERIC(20, 10) NOT NULL,
    markup_rate      NUMERIC(8, 4) NOT NULL,
    rate             NUMERIC(10, 4),
    rate_date        DATE,
    rate_table_no    TEXT,
    client_cost_pln  NUMERIC(16, 2),
    PRIMARY KEY (month, tenant_id)
);

CREATE TABLE dashboard_users (
    name           TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Only a SHA-256 of the session token is kept: a copy of this table logs nobody in.
CREATE TABLE dashboard_sessions (
    token_sha256  TEXT PRIMARY KEY,
    user_name     TEXT NOT NULL REFERENCES dashboard_users (name) ON DELETE CASCADE,
    csrf_token    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);

-- The dashboard reads usage by tenant and day range.
CREATE INDEX usage_user_daily_tenant_date ON usage_user_daily (tenant_id, usage_date);
CREATE INDEX usage_model_daily_tenant_date ON usage_model_daily (tenant_id, usage_date);
CREATE INDEX usage_daily_date ON usage_daily (usage_date, tenant_id);

-- The markup in force on each of a tenant's days (its local calendar, as the usage
-- rows are): a change applies from the local day of the apply that made it, and the
-- first markup also covers any usage from before the tenant's first apply.
-- [period_from, period_until) as dates; two applies on one day leave the later one.
CREATE VIEW tenant_markup_periods AS
SELECT tenant_id, markup_rate,
       CASE WHEN first THEN DATE '-infinity' ELSE from_day END AS period_from,
       coalesce(lead(from_day) OVER (PARTITION BY tenant_id ORDER BY effective_from),
                DATE 'infinity') AS period_until
FROM (SELECT h.tenant_id, h.markup_rate, h.effective_from,
             (h.effective_from AT TIME ZONE t.timezone)::date AS from_day,
             row_number() OVER (PARTITION BY h.tenant_id ORDER BY h.effective_from) = 1 AS first
      FROM tenant_markup_history h JOIN tenants t ON t.id = h.tenant_id) x;
