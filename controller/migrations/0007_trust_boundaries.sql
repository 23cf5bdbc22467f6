-- Trust boundaries (issue 9, docs/security.md).
--
-- 1. No SECURITY DEFINER helpers any more. The policies of 0003 called two definer
--    functions whose `search_path = public` still searched pg_temp first: an agent
--    role could shadow `agent_roles` with a temporary table (and pose as another
--    host) or with a temporary view over its own function (which then ran as the
--    functions' owner). The policies below name every table schema-qualified inside
--    the policy itself: the names are resolved once, when the policy is created, and
--    evaluated with the agent's own rights, so no temporary object can stand in.
-- 2. An agent sees and writes a tenant's rows only while the spec places that tenant
--    on the agent's host (`tenants.in_spec` and `tenants.host`, written by apply). A
--    tenant that is unknown, planned for later or pruned is nobody's: rows cannot be
--    squatted, and rows left by an earlier placement never block the rightful host.
--    Health alone may be reported for a container the spec does not know (the seeds'
--    hand-started container), and is taken over by the rightful host once known.
-- 3. Agents get no TEMP privilege and nobody but the owner creates in `public`.
-- 4. Figures beyond any plausible day are refused by the database itself, whoever
--    writes them (the agent checks the same bounds first and says why).

ALTER TABLE public.agent_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY agent_self ON public.agent_roles TO mai_agent USING (role_name = session_user);
GRANT SELECT ON public.agent_roles TO mai_agent;

DO $$
DECLARE
    t TEXT;
    mine CONSTANT TEXT := '(SELECT ar.host FROM public.agent_roles ar WHERE ar.role_name = session_user)';
    placed CONSTANT TEXT := 'EXISTS (SELECT 1 FROM public.tenants tn JOIN public.agent_roles ar ON ar.host = tn.host
                                     WHERE tn.id = tenant_id AND tn.in_spec AND ar.role_name = session_user)';
    known CONSTANT TEXT := 'EXISTS (SELECT 1 FROM public.tenants tn WHERE tn.id = tenant_id AND tn.in_spec)';
BEGIN
    FOREACH t IN ARRAY ARRAY['usage_daily', 'usage_user_daily', 'usage_model_daily', 'usage_live_counters',
                             'usage_generations', 'agent_watermarks', 'store_regressions'] LOOP
        EXECUTE format('DROP POLICY agent_own_host ON public.%I', t);
        EXECUTE format('CREATE POLICY agent_own_host ON public.%I TO mai_agent USING (%s) WITH CHECK (host = %s AND %s)',
                       t, placed, mine, placed);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['tenant_health', 'tenant_health_history'] LOOP
        EXECUTE format('DROP POLICY agent_own_host ON public.%I', t);
        EXECUTE format('CREATE POLICY agent_own_host ON public.%I TO mai_agent
                            USING (%s OR (host = %s AND NOT %s)) WITH CHECK (host = %s AND (%s OR NOT %s))',
                       t, placed, mine, known, mine, placed, known);
    END LOOP;
    DROP POLICY agent_own_host ON public.agent_heartbeats;
    EXECUTE format('CREATE POLICY agent_own_host ON public.agent_heartbeats TO mai_agent
                        USING (host = %s) WITH CHECK (host = %s)', mine, mine);
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;

DROP FUNCTION public.mai_tenant_on_agent_host(TEXT);
DROP FUNCTION public.mai_agent_host();
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Bounds of one store row (one tenant, one day, one user or model): 10^12 tokens,
-- 10^9 requests, 1,000,000 USD. The agent's reader refuses the same
-- (agent/src/reader.rs, `Bounds`). NOT VALID: rows already here are kept as they are.
ALTER TABLE usage_daily ADD CONSTRAINT usage_daily_plausible CHECK (
    total_tokens BETWEEN 0 AND 1000000000000 AND total_requests BETWEEN 0 AND 1000000000
    AND raw_cost BETWEEN 0 AND 1000000 AND markup_cost BETWEEN 0 AND 1000000 AND unique_users >= 0) NOT VALID;
ALTER TABLE usage_user_daily ADD CONSTRAINT usage_user_daily_plausible CHECK (
    total_tokens BETWEEN 0 AND 1000000000000 AND total_requests BETWEEN 0 AND 1000000000
    AND raw_cost BETWEEN 0 AND 1000000 AND markup_cost BETWEEN 0 AND 1000000) NOT VALID;
ALTER TABLE usage_model_daily ADD CONSTRAINT usage_model_daily_plausible CHECK (
    total_tokens BETWEEN 0 AND 1000000000000 AND total_requests BETWEEN 0 AND 1000000000
    AND raw_cost BETWEEN 0 AND 1000000 AND markup_cost BETWEEN 0 AND 1000000) NOT VALID;
ALTER TABLE usage_live_counters ADD CONSTRAINT usage_live_counters_plausible CHECK (
    today_tokens BETWEEN 0 AND 1000000000000 AND today_requests BETWEEN 0 AND 1000000000
    AND today_raw_cost BETWEEN 0 AND 1000000 AND today_markup_cost BETWEEN 0 AND 1000000) NOT VALID;
ALTER TABLE usage_generations ADD CONSTRAINT usage_generations_plausible CHECK (
    total_tokens BETWEEN 0 AND 1000000000000 AND total_cost BETWEEN 0 AND 1000000) NOT VALID;

-- Dashboard roles (viewer reads; admin also closes months, silences alerts, manages
-- users) and the idle timeout of sessions.
ALTER TABLE dashboard_users ADD COLUMN role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('viewer', 'admin'));
ALTER TABLE dashboard_sessions ADD COLUMN last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now();
