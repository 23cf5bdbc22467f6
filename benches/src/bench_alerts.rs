//! One alert evaluation cycle over a large fleet (issue 5): 1,000 tenants with a
//! month of usage and a month of OpenRouter snapshots every 10 minutes
//! (4.46 million), health, heartbeats, regressions; and (issue 12) a managed key
//! each with OpenRouter's daily ledger per model for 30 days (120,000 rows at 1,000
//! tenants), the account's ledger and credit. Time per cycle and queries per
//! cycle, at 100 and at 1,000 tenants (the count must not grow with the fleet).
//!
//!     cargo run --release --bin bench-alerts
//!
//! Needs `MAI_FLEET_PG_ADMIN_URL` (scripts/postgres.sh).

use std::time::Duration;

use mai_fleet::alerts::config::AlertsConfig;
use mai_fleet::alerts::evaluate::run_cycle;
use mai_fleet::rates::RateTable;
use mai_fleet_e2e::psql;

fn fail(msg: &str) -> ! {
    eprintln!("bench-alerts: {msg}");
    std::process::exit(1)
}

fn main() {
    let admin = std::env::var("MAI_FLEET_PG_ADMIN_URL")
        .unwrap_or_else(|_| fail("MAI_FLEET_PG_ADMIN_URL is not set: . scripts/postgres.sh"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let config = AlertsConfig::parse(
        "bench",
        "receivers:\n  - name: ops\n    webhook: { url: \"http://127.0.0.1:9/hook\" }\n",
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    println!(
        "{:>8} {:>12} {:>14} {:>14} {:>9} {:>9} {:>11}",
        "tenants", "snapshots", "first cycle", "steady cycle", "queries", "findings", "notified"
    );
    for tenants in [100usize, 1000] {
        let db = format!("mai_fleet_bench_alerts_{tenants}");
        let url = mai_fleet_e2e::fresh_database(&admin, &db);
        rt.block_on(async {
            let store = mai_fleet::store::Store::connect(&url)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            store
                .migrate()
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
        });
        psql(&url, &generate_sql(tenants));
        let snapshots = psql(&url, "SELECT count(*) FROM openrouter_snapshots");
        rt.block_on(async {
            let store = mai_fleet::store::Store::connect(&url)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            let first = run_cycle(&store, &config, RateTable::C)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            let mut steady: Vec<Duration> = Vec::new();
            let mut last = first.clone();
            for _ in 0..10 {
                last = run_cycle(&store, &config, RateTable::C)
                    .await
                    .unwrap_or_else(|e| fail(&e.to_string()));
                steady.push(last.duration);
            }
            steady.sort();
            println!(
                "{tenants:>8} {snapshots:>12} {:>11.1} ms {:>11.1} ms {:>9} {:>9} {:>11}",
                first.duration.as_secs_f64() * 1000.0,
                steady[steady.len() / 2].as_secs_f64() * 1000.0,
                last.queries,
                last.candidates,
                first.notifications
            );
        });
    }
    println!("\nqueries: statements one cycle sends (10 rule reads, open alerts, silences, the writes in one transaction, the cycle's record)");
}

/// A month of a fleet: usage per day, OpenRouter snapshots every 10 minutes (one
/// tenant in 10 losing half its usage, one in 50 tracking nothing), health with
/// some containers down, heartbeats (one host silent), a regression, NBP rates.
fn generate_sql(tenants: usize) -> String {
    format!(
        "BEGIN;
INSERT INTO hosts (name, fleet, docker_url, data_root)
SELECT 'h' || h, 'bench', 'unix:///var/run/docker.sock', '/srv' FROM generate_series(0, 9) h;
INSERT INTO tenants (id, fleet, host, name, org_id, timezone, markup_rate, monthly_limit_usd, spec, spec_hash, key_fingerprint, key_masked)
SELECT 't' || lpad(i::text, 4, '0'), 'bench', 'h' || (i % 10), 'Klient ' || i, 'org_' || i, 'Europe/Warsaw', 1.3,
       CASE WHEN i % 3 = 0 THEN 20 ELSE NULL END, '{{}}'::jsonb, 'v1', 'fp', 'sk-or-v1-…abc'
FROM generate_series(0, {last}) i;
INSERT INTO tenant_markup_history (tenant_id, markup_rate, effective_from) SELECT id, 1.3, now() - interval '90 days' FROM tenants;
INSERT INTO usage_daily (host, tenant_id, usage_date, client_org_id, total_tokens, total_requests, raw_cost, markup_cost, unique_users, source_updated_at)
SELECT t.host, t.id, d::date, t.org_id, 50000, 100, 0.5 + (length(t.id) % 3) / 10.0, 0, 5, extract(epoch FROM d)::bigint
FROM tenants t, generate_series(current_date - 30, current_date, interval '1 day') d;
INSERT INTO openrouter_snapshots (tenant_id, polled_at, key_fingerprint, usage, usage_daily, usage_monthly, key_limit, limit_remaining, recorded_total)
SELECT t.id, now() - n * interval '10 minutes', 'fp', 100 + (4464 - n) * 0.0035, 0.5, 15, NULL, NULL,
       CASE WHEN right(t.id, 2) = '49' THEN 100
            WHEN right(t.id, 1) = '7' THEN 100 + (4464 - n) * 0.00175
            ELSE 100 + (4464 - n) * 0.0035 END
FROM tenants t, generate_series(0, 4463) n;
INSERT INTO tenant_health (tenant_id, host, container, container_state, restart_count, in_spec, env_missing, store_status, tracking, reasons, last_usage_change)
SELECT id, host, 'mai-' || id, CASE WHEN right(id, 2) = '13' THEN 'exited' ELSE 'running' END, 0, TRUE,
       CASE WHEN right(id, 2) = '49' THEN ARRAY['OPENROUTER_EXTERNAL_USER'] ELSE '{{}}' END, 'ok',
       CASE WHEN right(id, 2) = '49' THEN 'inactive' ELSE 'active' END,
       CASE WHEN right(id, 2) = '49' THEN ARRAY['required env missing: OPENROUTER_EXTERNAL_USER'] ELSE '{{}}' END,
       extract(epoch FROM now())::bigint
FROM tenants;
INSERT INTO agent_heartbeats (host, agent_version, seen_at, cycle_ms, tenants, rows_shipped, errors)
SELECT 'h' || h, '0.1.0', CASE WHEN h = 9 THEN now() - interval '1 hour' ELSE now() END, 100, 100, 0, 0 FROM generate_series(0, 9) h;
INSERT INTO store_regressions (tenant_id, host, store_table, detail) VALUES ('t0005', 'h5', 'client_daily_usage', 'rows 31 -> 2');
INSERT INTO exchange_rates (rate_table, effective_date, table_no, rate)
SELECT 'C', d::date, 'x/C/NBP', 3.65 FROM generate_series(current_date - 40, current_date, interval '1 day') d
WHERE extract(isodow FROM d) < 6;
-- Issue 12: each tenant's key under management, its per-model usage (agreeing with
-- usage_daily), OpenRouter's daily ledger for the last 30 days (one tenant in 100
-- charged $0.20 more for one model), the account's ledger and credit.
INSERT INTO usage_model_daily (host, tenant_id, model_name, usage_date, total_tokens, total_requests, raw_cost, markup_cost, source_updated_at)
SELECT t.host, t.id, m, d::date, 12500, 25, 0.175, 0, extract(epoch FROM d)::bigint
FROM tenants t, generate_series(current_date - 30, current_date, interval '1 day') d,
     unnest(ARRAY['anthropic/claude-3.5-sonnet', 'openai/gpt-4o-mini', 'deepseek/deepseek-chat', 'google/gemini-2.5-pro']) m;
INSERT INTO openrouter_keys (fleet, tenant_id, hash, name, mask, fingerprint, sealed, origin, status, limit_usd)
SELECT 'bench', id, md5(id), 'mai-fleet/bench/' || id, 'sk-or-v1-…abc', 'fp', '\\x00'::bytea, 'provisioned', 'current', 20
FROM tenants;
INSERT INTO openrouter_activity (key_hash, activity_date, model, endpoint_id, usage, requests)
SELECT md5(t.id), d::date, m, 'ep',
       CASE WHEN right(t.id, 2) = '21' AND m = 'openai/gpt-4o-mini' THEN 0.375 ELSE 0.175 END, 25
FROM tenants t, generate_series(current_date - 30, current_date - 1, interval '1 day') d,
     unnest(ARRAY['anthropic/claude-3.5-sonnet', 'openai/gpt-4o-mini', 'deepseek/deepseek-chat', 'google/gemini-2.5-pro']) m;
INSERT INTO openrouter_activity (key_hash, activity_date, model, usage, requests)
SELECT '*', d::date, 'all', 50, 1000 FROM generate_series(current_date - 30, current_date - 1, interval '1 day') d;
INSERT INTO openrouter_activity_days (key_hash, activity_date, usage)
SELECT key_hash, activity_date, sum(usage) FROM openrouter_activity GROUP BY 1, 2;
INSERT INTO openrouter_credits (total_credits, total_usage) VALUES (1000, 800);
COMMIT;
ANALYZE;",
        last = tenants - 1
    )
}
