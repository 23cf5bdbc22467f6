-- Per-host agent credentials (issue 3): each host's agent logs in as a role of its
-- own (`controller host add`), member of mai_agent; row-level security lets it see
-- and write only rows of its host, and never rows of a tenant the spec puts on
-- another host. The controller owns the tables and is not subject to the policies.

CREATE TABLE agent_roles (
    role_name   TEXT PRIMARY KEY,
    host        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Roles are cluster-wide: another fleet database may have made it already, or be
-- making it at this moment (a check-then-create would race).
DO $$
BEGIN
    CREATE ROLE mai_agent NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The host of the agent logged in (session_user: inside SECURITY DEFINER,
-- current_user is the definer).
CREATE FUNCTION mai_agent_host() RETURNS TEXT
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT host FROM agent_roles WHERE role_name = session_user $$;

CREATE FUNCTION mai_tenant_on_agent_host(tenant TEXT) RETURNS BOOLEAN
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT NOT EXISTS (
        SELECT 1 FROM tenants WHERE id = tenant AND in_spec AND host IS DISTINCT FROM mai_agent_host()) $$;

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['usage_daily', 'usage_user_daily', 'usage_model_daily', 'usage_live_counters',
                             'usage_generations', 'agent_watermarks', 'tenant_health', 'tenant_health_history',
                             'store_regressions'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY agent_own_host ON %I TO mai_agent USING (host = mai_agent_host())
                        WITH CHECK (host = mai_agent_host() AND mai_tenant_on_agent_host(tenant_id))', t);
    END LOOP;
END
$$;
ALTER TABLE agent_heartbeats ENABLE ROW LEVEL SECURITY;
CREATE POLICY agent_own_host ON agent_heartbeats TO mai_agent
    USING (host = mai_agent_host()) WITH CHECK (host = mai_agent_host());

GRANT SELECT, INSERT, UPDATE ON usage_daily, usage_user_daily, usage_model_daily, usage_live_counters,
    usage_generations, agent_watermarks, tenant_health, agent_heartbeats TO mai_agent;
GRANT SELECT, INSERT ON tenant_health_history, store_regressions TO mai_agent;
GRANT USAGE ON SEQUENCE tenant_health_history_id_seq, store_regressions_id_seq TO mai_agent;
-- What the agent needs to tell a container that is not what the last apply wanted.
GRANT SELECT (id, host, spec_hash, in_spec) ON tenants TO mai_agent;
