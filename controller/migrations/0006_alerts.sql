-- Alerts (issue 5): OpenRouter's ledger per key, alert state with its history,
-- silences, and the delivery log of notifications.

-- `GET /key` for a tenant's key, with what the fleet had recorded for the tenant at
-- that moment: two snapshots give OpenRouter's spend and the recorded spend over
-- the same interval, whatever the timezones.
CREATE TABLE openrouter_snapshots (
    id               BIGSERIAL PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    polled_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    key_fingerprint  TEXT NOT NULL,
    usage            NUMERIC(18, 6) NOT NULL,
    usage_daily      NUMERIC(18, 6),
    usage_monthly    NUMERIC(18, 6),
    key_limit        NUMERIC(18, 6),
    limit_remaining  NUMERIC(18, 6),
    recorded_total   NUMERIC(18, 6) NOT NULL
);
CREATE INDEX openrouter_snapshots_tenant ON openrouter_snapshots (tenant_id, polled_at DESC);

CREATE TABLE alerts (
    fingerprint       TEXT PRIMARY KEY,
    rule              TEXT NOT NULL,
    tenant_id         TEXT,
    labels            JSONB NOT NULL,
    annotations       JSONB NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    active_since      TIMESTAMPTZ NOT NULL,
    fired_at          TIMESTAMPTZ,
    resolved_at       TIMESTAMPTZ,
    last_seen_at      TIMESTAMPTZ NOT NULL,
    last_notified_at  TIMESTAMPTZ,
    notified_state    TEXT
);
CREATE INDEX alerts_open ON alerts (state) WHERE state <> 'resolved';
CREATE INDEX alerts_tenant ON alerts (tenant_id);

CREATE TABLE alert_events (
    id           BIGSERIAL PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    rule         TEXT NOT NULL,
    tenant_id    TEXT,
    at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    summary      TEXT NOT NULL
);
CREATE INDEX alert_events_at ON alert_events (at DESC);

CREATE TABLE silences (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT,
    rule        TEXT,
    starts_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    ended_at    TIMESTAMPTZ,
    created_by  TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    CHECK (tenant_id IS NOT NULL OR rule IS NOT NULL)
);

-- One row per alert change per receiver: the queue and the delivery log.
CREATE TABLE alert_notifications (
    id               BIGSERIAL PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    receiver         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
    payload          JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT,
    sent_at          TIMESTAMPTZ
);
CREATE INDEX alert_notifications_due ON alert_notifications (receiver, next_attempt_at) WHERE state = 'pending';

CREATE TABLE alert_evaluations (
    id           BIGSERIAL PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    duration_ms  BIGINT NOT NULL,
    queries      INTEGER NOT NULL,
    candidates   INTEGER NOT NULL,
    transitions  INTEGER NOT NULL
);

CREATE TRIGGER mai_fleet_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON alerts
    FOR EACH STATEMENT EXECUTE FUNCTION mai_fleet_notify_change();
CREATE TRIGGER mai_fleet_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON silences
    FOR EACH STATEMENT EXECUTE FUNCTION mai_fleet_notify_change();
