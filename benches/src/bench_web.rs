//! The dashboard under load (issue 4): 100 tenants x 400 days x 20 users x 8 models
//! in PostgreSQL; wrk at 16 connections against the fleet page, a tenant page and
//! the billing page (p50, p99, requests/s), and each page's time next to the time
//! of its own SQL run bare in psql (same statements, prepared, one connection).
//!
//!     cargo build --release --bins && cargo run --release --bin bench-web
//!
//! Needs `MAI_FLEET_PG_ADMIN_URL` (scripts/postgres.sh) and wrk (apt-get install wrk).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Datelike, Months};
use mai_fleet::store::billing::{
    breakdown_sql, Breakdown, MONTH_CLOSE_SQL, USAGE_BY_TENANT_SQL, USAGE_PER_DAY_SQL,
};
use mai_fleet::store::dashboard::{
    APPLY_HISTORY_SQL, FLEET_ROWS_SQL, HEALTH_HISTORY_SQL, TENANT_KNOWN_SQL, TENANT_RECORD_SQL,
};
use mai_fleet::store::rates::RATE_ON_SQL;
use mai_fleet::store::users::SESSION_SQL;
use mai_fleet_e2e::dashboard::login;
use mai_fleet_e2e::{bin_dir, http_full, psql};

const TENANTS: usize = 100;
const DAYS: i64 = 400;
const PASSWORD: &str = "bench-password-123";
const PORT: u16 = 19380;

fn fail(msg: &str) -> ! {
    eprintln!("bench-web: {msg}");
    std::process::exit(1)
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let admin = std::env::var("MAI_FLEET_PG_ADMIN_URL")
        .unwrap_or_else(|_| fail("MAI_FLEET_PG_ADMIN_URL is not set: . scripts/postgres.sh"));
    let wrk = which("wrk").unwrap_or_else(|| fail("wrk is not installed: apt-get install wrk"));
    let db_url = mai_fleet_e2e::fresh_database(&admin, "mai_fleet_bench_web");
    // Next to this binary: target/release.
    let controller = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("controller")))
        .unwrap_or_else(|| bin_dir().join("controller"));
    if !controller.exists() {
        fail(&format!(
            "{} is missing: cargo build --release --bins",
            controller.display()
        ));
    }
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(&controller)
            .args(args)
            .env("DATABASE_URL", &db_url)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&e.to_string()));
        if let Some(text) = stdin {
            let _ = child.stdin.take().map(|mut s| s.write_all(text.as_bytes()));
        }
        drop(child.stdin.take());
        if !child.wait().map(|s| s.success()).unwrap_or(false) {
            fail(&format!("controller {args:?} failed"));
        }
    };
    run(&["migrate"], None);
    run(
        &["user", "add", "bench", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );

    let started = Instant::now();
    psql(&db_url, &generate_sql());
    let rows = psql(&db_url, "SELECT (SELECT count(*) FROM usage_daily) + (SELECT count(*) FROM usage_user_daily) + (SELECT count(*) FROM usage_model_daily)");
    println!("bench-web: {TENANTS} tenants x {DAYS} days x 20 users x 8 models: {rows} usage rows loaded in {:.1}s", started.elapsed().as_secs_f64());

    let first = start_server(&controller, &db_url, None);
    let (_, session) = login(PORT, "bench", PASSWORD);
    let session = session.unwrap_or_else(|| fail("login failed"));
    let cookie = format!("mai_session={}", session.cookie);
    let token_sha: String = psql(
        &db_url,
        "SELECT token_sha256 FROM dashboard_sessions LIMIT 1",
    );
    drop(first);

    let today = chrono::Utc::now().date_naive();
    let month_first = today.with_day(1).unwrap_or(today);
    let prev_first = month_first - Months::new(1);
    let prev_last = month_first - chrono::Duration::days(1);
    let tenant = "t-042";
    let q = |s: &str| format!("'{s}'");
    let pages: Vec<(&str, String, Vec<Stmt>)> = vec![
        (
            "fleet",
            "/".to_string(),
            vec![
                stmt(
                    SESSION_SQL,
                    &["text", "float8"],
                    &[q(&token_sha), "1800".into()],
                ),
                stmt(FLEET_ROWS_SQL, &[], &[]),
                stmt(
                    RATE_ON_SQL,
                    &["text", "date", "int"],
                    &[q("C"), q(&today.to_string()), "7".into()],
                ),
            ],
        ),
        (
            "tenant",
            format!("/tenants/{tenant}?month={}", prev_first.format("%Y-%m")),
            vec![
                stmt(
                    SESSION_SQL,
                    &["text", "float8"],
                    &[q(&token_sha), "1800".into()],
                ),
                stmt(TENANT_KNOWN_SQL, &["text"], &[q(tenant)]),
                stmt(TENANT_RECORD_SQL, &["text"], &[q(tenant)]),
                stmt(
                    USAGE_PER_DAY_SQL,
                    &["text", "date", "date"],
                    &[
                        q(tenant),
                        q(&(today - chrono::Duration::days(29)).to_string()),
                        q(&today.to_string()),
                    ],
                ),
                stmt(
                    &breakdown_sql(Breakdown::User),
                    &["text", "date", "date"],
                    &[
                        q(tenant),
                        q(&prev_first.to_string()),
                        q(&prev_last.to_string()),
                    ],
                ),
                stmt(
                    &breakdown_sql(Breakdown::Model),
                    &["text", "date", "date"],
                    &[
                        q(tenant),
                        q(&prev_first.to_string()),
                        q(&prev_last.to_string()),
                    ],
                ),
                stmt(
                    HEALTH_HISTORY_SQL,
                    &["text", "bigint"],
                    &[q(tenant), "50".into()],
                ),
                stmt(
                    APPLY_HISTORY_SQL,
                    &["text", "bigint"],
                    &[q(tenant), "20".into()],
                ),
                stmt(
                    RATE_ON_SQL,
                    &["text", "date", "int"],
                    &[q("C"), q(&prev_last.to_string()), "7".into()],
                ),
            ],
        ),
        (
            "billing",
            format!("/billing?month={}", prev_first.format("%Y-%m")),
            vec![
                stmt(
                    SESSION_SQL,
                    &["text", "float8"],
                    &[q(&token_sha), "1800".into()],
                ),
                stmt(MONTH_CLOSE_SQL, &["date"], &[q(&prev_first.to_string())]),
                stmt(
                    USAGE_BY_TENANT_SQL,
                    &["date", "date"],
                    &[q(&prev_first.to_string()), q(&prev_last.to_string())],
                ),
                stmt(
                    RATE_ON_SQL,
                    &["text", "date", "int"],
                    &[q("C"), q(&prev_last.to_string()), "7".into()],
                ),
            ],
        ),
    ];

    println!(
        "\n{:<8} {:<6} {:>9} {:>9} {:>10} {:>13} {:>13} {:>7}",
        "page", "cache", "wrk p50", "wrk p99", "req/s", "page alone", "SQL in psql", "ratio"
    );
    let sql_ms: Vec<f64> = pages
        .iter()
        .map(|(_, _, stmts)| psql_median_ms(&db_url, stmts, 60))
        .collect();
    let mut all_ok = true;
    for cache in ["off", "5s"] {
        let server = start_server(&controller, &db_url, Some(cache));
        for ((name, path, _), sql) in pages.iter().zip(&sql_ms) {
            let page = http_full(PORT, "GET", path, None, &[("Cookie", &cookie)])
                .unwrap_or_else(|| fail("page"));
            if page.status != 200 {
                fail(&format!("{path} answered {}", page.status));
            }
            let alone = median_ms(60, || {
                let t = Instant::now();
                let _ = http_full(PORT, "GET", path, None, &[("Cookie", &cookie)]);
                t.elapsed().as_secs_f64() * 1000.0
            });
            let (p50, p99, rps) = run_wrk(&wrk, &format!("http://127.0.0.1:{PORT}{path}"), &cookie);
            let ratio = alone / sql;
            if cache != "off" {
                all_ok &= p99 <= 50.0 && ratio <= 2.0;
            }
            println!("{name:<8} {cache:<6} {p50:>7.2}ms {p99:>7.2}ms {rps:>10.0} {alone:>11.2}ms {sql:>11.2}ms {ratio:>6.2}x");
        }
        drop(server);
    }
    println!(
        "\ngoals (default cache): p99 <= 50 ms at 16 connections; page alone <= 2x its SQL bare in psql: {}",
        if all_ok { "met" } else { "NOT met" }
    );
}

/// `controller serve` on [`PORT`], answering; `cache` sets `MAI_FLEET_PAGE_CACHE`.
fn start_server(controller: &std::path::Path, db_url: &str, cache: Option<&str>) -> Server {
    let mut cmd = Command::new(controller);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{PORT}"),
        "--no-rate-sync",
        "--no-alerts",
    ])
    .env("DATABASE_URL", db_url)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(c) = cache {
        cmd.env("MAI_FLEET_PAGE_CACHE", c);
    }
    let server = Server(cmd.spawn().unwrap_or_else(|e| fail(&e.to_string())));
    wait_healthy();
    server
}

fn wait_healthy() {
    for _ in 0..100 {
        if http_full(PORT, "GET", "/healthz", None, &[]).is_some_and(|r| r.status == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fail("the server did not come up");
}

/// SQL, its parameter types, and the literal values it is executed with.
type Stmt = (String, String, Vec<String>);

/// A statement PREPAREd with its parameter types and EXECUTEd with literal values.
fn stmt(sql: &str, types: &[&str], args: &[String]) -> Stmt {
    (sql.to_string(), types.join(", "), args.to_vec())
}

/// Median over `iterations` of the sum of every statement's time, as psql's
/// `\timing` reports it (round trip on one connection, prepared plans).
fn psql_median_ms(url: &str, stmts: &[Stmt], iterations: usize) -> f64 {
    let mut script = String::from("\\set QUIET on\n");
    for (i, (sql, types, _)) in stmts.iter().enumerate() {
        let types = if types.is_empty() {
            String::new()
        } else {
            format!("({types})")
        };
        script.push_str(&format!("PREPARE s{i}{types} AS {sql};\n"));
    }
    // Warm the plans and caches, as the server's pool is warm.
    for (i, (_, _, args)) in stmts.iter().enumerate() {
        script.push_str(&format!("EXECUTE s{i}{};\n", call_args(args)));
    }
    script.push_str("\\timing on\n\\o /dev/null\n");
    for _ in 0..iterations {
        for (i, (_, _, args)) in stmts.iter().enumerate() {
            script.push_str(&format!("EXECUTE s{i}{};\n", call_args(args)));
        }
    }
    let out = Command::new("psql")
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(script.as_bytes())?;
            }
            c.wait_with_output()
        })
        .unwrap_or_else(|e| fail(&e.to_string()));
    if !out.status.success() {
        fail(&format!("psql: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Time: "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let mut sums: Vec<f64> = times.chunks(stmts.len()).map(|c| c.iter().sum()).collect();
    sums.sort_by(f64::total_cmp);
    sums.get(sums.len() / 2).copied().unwrap_or(f64::NAN)
}

fn call_args(args: &[String]) -> String {
    if args.is_empty() {
        String::new()
    } else {
        format!("({})", args.join(", "))
    }
}

fn median_ms(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut v: Vec<f64> = (0..n).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[n / 2]
}

/// wrk at 16 connections for 10 s: p50 and p99 in ms, requests per second.
fn run_wrk(wrk: &str, url: &str, cookie: &str) -> (f64, f64, f64) {
    let out = Command::new(wrk)
        .args([
            "-t2",
            "-c16",
            "-d10s",
            "--latency",
            "-H",
            &format!("Cookie: {cookie}"),
            url,
        ])
        .output()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        fail(&format!("wrk saw errors:\n{text}"));
    }
    let ms = |label: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(to_ms)
            .unwrap_or(f64::NAN)
    };
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(f64::NAN);
    (ms("50%"), ms("99%"), rps)
}

fn to_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        _ => n,
    }
}

fn which(cmd: &str) -> Option<String> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| format!("{d}/{cmd}"))
        .find(|p| std::path::Path::new(p).exists())
}

/// The fleet as it would be after 400 days: usage per user and model each day,
/// daily totals from them, health, heartbeats, an apply, NBP table C on business days.
fn generate_sql() -> String {
    format!(
        "BEGIN;
INSERT INTO hosts (name, fleet, docker_url, data_root) VALUES
  ('bench-a', 'bench', 'unix:///var/run/docker.sock', '/srv/a'), ('bench-b', 'bench', 'unix:///var/run/docker.sock', '/srv/b');
INSERT INTO tenants (id, fleet, host, name, org_id, timezone, markup_rate, monthly_limit_usd, spec, spec_hash, key_fingerprint, key_masked)
SELECT 't-' || lpad(i::text, 3, '0'), 'bench', CASE WHEN i % 2 = 0 THEN 'bench-a' ELSE 'bench-b' END, 'Klient ' || i, 'org_' || i,
       'Europe/Warsaw', 1.3 + (i % 3) * 0.1, CASE WHEN i % 4 = 0 THEN NULL ELSE 500 END, '{{}}'::jsonb, 'v1-bench', 'fp', 'sk-or-v1-…b3c'
FROM generate_series(0, {t}) i;
INSERT INTO tenant_markup_history (tenant_id, markup_rate, effective_from) SELECT id, 1.3, now() - interval '600 days' FROM tenants;
INSERT INTO tenant_markup_history (tenant_id, markup_rate, effective_from) SELECT id, markup_rate, now() - interval '100 days' FROM tenants WHERE markup_rate <> 1.3;
INSERT INTO usage_user_daily (host, tenant_id, user_id, usage_date, openrouter_user_id, total_tokens, total_requests, raw_cost, markup_cost, source_updated_at)
SELECT t.host, t.id, 'user-' || u, d::date, 'temp_user-' || u, 1000 + (u * 37 + i * 11 + extract(doy FROM d)::int * 13) % 5000,
       1 + (u + i) % 20, ((u * 7 + i * 3 + extract(doy FROM d)::int * 13) % 1000) / 10000.0, 0, extract(epoch FROM d)::bigint
FROM (SELECT *, row_number() OVER (ORDER BY id) AS i FROM tenants) t, generate_series(0, 19) u,
     generate_series(current_date - {d}, current_date, interval '1 day') d;
INSERT INTO usage_model_daily (host, tenant_id, model_name, usage_date, provider, total_tokens, total_requests, raw_cost, markup_cost, source_updated_at)
SELECT t.host, t.id, 'provider-' || m || '/model-' || m, d::date, 'provider-' || m, 2500 + (m * 53 + i * 7 + extract(doy FROM d)::int * 17) % 9000,
       1 + (m + i) % 40, ((m * 11 + i * 5 + extract(doy FROM d)::int * 19) % 2000) / 10000.0, 0, extract(epoch FROM d)::bigint
FROM (SELECT *, row_number() OVER (ORDER BY id) AS i FROM tenants) t, generate_series(0, 7) m,
     generate_series(current_date - {d}, current_date, interval '1 day') d;
INSERT INTO usage_daily (host, tenant_id, usage_date, client_org_id, total_tokens, total_requests, raw_cost, markup_cost, primary_model, unique_users, source_updated_at)
SELECT min(host), tenant_id, usage_date, 'org', sum(total_tokens), sum(total_requests), sum(raw_cost), 0, NULL, count(*), max(source_updated_at)
FROM usage_user_daily GROUP BY tenant_id, usage_date;
INSERT INTO tenant_health (tenant_id, host, container, container_state, restart_count, in_spec, env_missing, store_status, tracking, reasons, last_usage_change)
SELECT id, host, 'mai-' || id, 'running', 0, TRUE, CASE WHEN id LIKE '%7' THEN ARRAY['OPENROUTER_EXTERNAL_USER'] ELSE '{{}}' END, 'ok',
       CASE WHEN id LIKE '%7' THEN 'inactive' ELSE 'active' END,
       CASE WHEN id LIKE '%7' THEN ARRAY['required env missing: OPENROUTER_EXTERNAL_USER'] ELSE '{{}}' END, extract(epoch FROM now())::bigint - 60
FROM tenants;
INSERT INTO tenant_health_history (tenant_id, host, observed_at, tracking, reasons, snapshot)
SELECT id, host, now() - n * interval '1 day', 'active', '{{}}', '{{}}'::jsonb FROM tenants, generate_series(1, 20) n;
INSERT INTO agent_heartbeats (host, agent_version, cycle_ms, tenants, rows_shipped, errors) VALUES
  ('bench-a', '0.1.0', 120, 50, 0, 0), ('bench-b', '0.1.0', 130, 50, 0, 0);
INSERT INTO apply_runs (fleet, actor, spec_file, spec_sha256, options, plan, status, finished_at)
SELECT 'bench', 'bench', 'tenants.yaml', 'x', '{{}}', '{{}}', 'succeeded', now() FROM generate_series(1, 30);
INSERT INTO apply_results (run_id, host, tenant_id, action, status, detail, duration_ms)
SELECT r.id, t.host, t.id, 'update', 'ok', 'verified', 2000 FROM apply_runs r, tenants t;
INSERT INTO exchange_rates (rate_table, effective_date, table_no, rate)
SELECT 'C', d::date, extract(doy FROM d) || '/C/NBP/' || extract(year FROM d), 3.6 + (extract(doy FROM d)::int % 50) / 1000.0
FROM generate_series(current_date - {d}, current_date, interval '1 day') d WHERE extract(isodow FROM d) < 6;
COMMIT;
ANALYZE;",
        t = TENANTS - 1,
        d = DAYS - 1
    )
}
