-- Every write to what the dashboard shows announces itself on one channel, so the
-- server can keep rendered data until it changes (controller serve, web::cache).
-- Statement-level: one notification per statement, folded per transaction.

CREATE FUNCTION mai_fleet_notify_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mai_fleet_changed', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['usage_daily', 'usage_user_daily', 'usage_model_daily', 'usage_live_counters',
                             'tenant_health', 'tenant_health_history', 'agent_heartbeats', 'store_regressions',
                             'hosts', 'tenants', 'tenant_markup_history', 'apply_runs', 'apply_results',
                             'agent_roles', 'exchange_rates', 'exchange_rate_fetches', 'billing_closes',
                             'billing_closed_lines'] LOOP
        EXECUTE format('CREATE TRIGGER mai_fleet_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION mai_fleet_notify_change()', t);
    END LOOP;
END
$$;
