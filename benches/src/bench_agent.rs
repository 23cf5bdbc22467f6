//! The agent's store-to-Postgres path on 200 generated tenant stores (issue 3).
//!
//!     cargo run --release --bin bench-agent [-- STORES]
//!
//! Each store: a year of history, 20 users, 8 models (10,585 usage rows) in the
//! tenant app's schema. Phases, each in a child process so its peak RSS is its own:
//! first full sync; a steady cycle after 5 % of the stores changed today's rows; the
//! same cycle done naively (every store re-read in full and re-sent). The Docker
//! discovery of a real cycle is not in these figures. The phases run with the host's
//! own agent credentials (row-level security in force). Needs `MAI_FLEET_PG_ADMIN_URL`
//! (scripts/postgres.sh).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use chrono::Duration;
use mai_fleet_agent::discover::TenantContainer;
use mai_fleet_agent::{cycle, health, reader, sink};

const USERS: usize = 20;
const DAYS: i64 = 365;
const MODELS: [&str; 8] = [
    "anthropic/claude-3.5-sonnet",
    "openai/gpt-4o-mini",
    "deepseek/deepseek-chat",
    "google/gemini-2.5-pro",
    "meta-llama/llama-3.1-70b",
    "mistralai/mistral-large",
    "openai/gpt-4o",
    "anthropic/claude-3-haiku",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--phase") {
        return child(
            &args[2],
            Path::new(&args[3]),
            &args[4],
            args[5].parse().unwrap_or(200),
        );
    }
    let stores: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let admin = std::env::var("MAI_FLEET_PG_ADMIN_URL")
        .unwrap_or_else(|_| fail("MAI_FLEET_PG_ADMIN_URL is not set: . scripts/postgres.sh"));
    let db_url = mai_fleet_e2e::fresh_database(&admin, "mai_fleet_bench_agent");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let agent_url = rt.block_on(async {
        let store = mai_fleet::store::Store::connect(&db_url)
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        store
            .migrate()
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        // The tenants placed on host `bench` as an apply would, so that the agent
        // runs with its own credentials and row-level security is in the figures.
        sqlx::query("INSERT INTO hosts (name, fleet, docker_url, data_root) VALUES ('bench', 'bench', 'unix:///var/run/docker.sock', '/tmp')")
            .execute(&store.pool)
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        sqlx::query(
            "INSERT INTO tenants (id, fleet, host, name, org_id, timezone, markup_rate, spec, spec_hash, key_fingerprint, key_masked)
             SELECT 't' || i, 'bench', 'bench', 'T' || i, 'org_' || i, 'Europe/Warsaw', 1.3, '{}', '', '', '' FROM generate_series(0, $1 - 1) i",
        )
        .bind(stores as i32)
        .execute(&store.pool)
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
        let creds = store
            .add_agent_host("bench", false)
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        let (scheme, rest) = db_url.split_once("://").unwrap_or(("postgres", &db_url));
        let server = rest.rsplit_once('@').map_or(rest, |(_, s)| s);
        format!("{scheme}://{}:{}@{server}", creds.role, creds.password)
    });

    let dir = std::env::temp_dir().join(format!("mai-fleet-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&e.to_string()));
    let started = Instant::now();
    for i in 0..stores {
        let store_dir = dir.join(format!("t{i}"));
        std::fs::create_dir_all(&store_dir).unwrap_or_else(|e| fail(&e.to_string()));
        generate_store(&store_dir.join("webui.db"), &format!("org_{i}"));
    }
    let rows_per_store = DAYS as usize * (1 + USERS + MODELS.len());
    println!(
        "bench-agent: {stores} stores x {rows_per_store} usage rows ({} rows) generated in {:.1}s",
        stores * rows_per_store,
        started.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&e.to_string()));
    let run = |phase: &str| -> HashMap<String, f64> {
        let out = std::process::Command::new(&exe)
            .args([
                "--phase",
                phase,
                dir.to_str().unwrap_or_default(),
                &agent_url,
                &stores.to_string(),
            ])
            .output()
            .unwrap_or_else(|e| fail(&e.to_string()));
        if !out.status.success() {
            fail(&format!(
                "phase {phase}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| fail(&format!("phase {phase}: {e}")))
    };
    let first = run("first");
    let steady = run("steady");
    let naive = run("naive");

    println!(
        "{:<34} {:>9} {:>8} {:>8} {:>11} {:>9} {:>9}",
        "phase", "wall ms", "cpu ms", "stores", "rows", "rows/s", "peak RSS"
    );
    for (name, r) in [
        ("first full sync", &first),
        ("steady cycle (5% changed)", &steady),
        ("naive full re-read (5% changed)", &naive),
    ] {
        println!(
            "{name:<34} {:>9.0} {:>8.0} {:>8.0} {:>11.0} {:>9.0} {:>7.1}MB",
            r["wall_ms"],
            r["cpu_ms"],
            r["stores_read"],
            r["rows"],
            r["rows"] / (r["wall_ms"] / 1000.0),
            r["peak_rss_kb"] / 1024.0
        );
    }
    println!(
        "(rows: rows written for the agent's cycles, rows read and re-sent for the naive one)"
    );
    println!(
        "steady / naive: wall {:.3}x, cpu {:.3}x   (goals: first sync >= 20000 rows/s, steady cycle <= 100 ms cpu, peak RSS <= 20 MB)",
        steady["wall_ms"] / naive["wall_ms"],
        steady["cpu_ms"] / naive["cpu_ms"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One phase in this process: `first` (a cycle from nothing), `steady` (a warm-up
/// cycle, then 5 % of the stores change, then the measured cycle), `naive` (every
/// store read in full and re-sent, as an agent without watermarks would).
fn child(phase: &str, dir: &Path, db_url: &str, stores: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let result = rt.block_on(async {
        let sink = sink::Sink::connect(db_url, "bench")
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        let containers: Vec<TenantContainer> = (0..stores)
            .map(|i| TenantContainer {
                tenant: format!("t{i}"),
                container: format!("mai-t{i}"),
                state: "running".into(),
                restart_count: 0,
                started_at: None,
                spec_hash: String::new(),
                env_missing: Vec::new(),
                org_id: Some(format!("org_{i}")),
                data_dir: Some(dir.join(format!("t{i}"))),
            })
            .collect();
        let mut spool = None;
        let mut memory = cycle::Memory::default();
        if phase == "steady" {
            cycle::sync_tenants(&sink, containers.clone(), &mut memory, &mut spool)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            touch_five_percent(dir, stores);
        }
        let cpu0 = cpu_ms();
        let started = Instant::now();
        let (rows, read) = if phase == "naive" {
            touch_five_percent(dir, stores);
            let cpu0 = cpu_ms();
            let started = Instant::now();
            let mut rows = 0usize;
            let watermarks = sink
                .watermarks(
                    &containers
                        .iter()
                        .map(|c| c.tenant.clone())
                        .collect::<Vec<_>>(),
                )
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            for c in &containers {
                let previous = watermarks.get(&c.tenant).cloned().unwrap_or_default();
                let org = c.org_id.clone().unwrap_or_default();
                let snap = reader::read(
                    &dir.join(&c.tenant).join("webui.db"),
                    &org,
                    &HashMap::new(),
                    &reader::Budget::default(),
                );
                let health = health::assess(c, true, &health::StoreState::of(&snap, true));
                let snap = snap.unwrap_or_else(|e| fail(&e.to_string()));
                rows += snap.daily.len() + snap.user.len() + snap.model.len();
                sink.ship(&c.tenant, &snap, &previous, &health)
                    .await
                    .unwrap_or_else(|e| fail(&e.to_string()));
            }
            return serde_json::json!({
                "wall_ms": started.elapsed().as_secs_f64() * 1000.0, "cpu_ms": cpu_ms() - cpu0,
                "rows": rows as f64, "stores_read": stores as f64, "peak_rss_kb": peak_rss_kb(),
            });
        } else {
            let r = cycle::sync_tenants(&sink, containers, &mut memory, &mut spool)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            (r.rows_changed as f64, r.stores_read as f64)
        };
        serde_json::json!({
            "wall_ms": started.elapsed().as_secs_f64() * 1000.0,
            "cpu_ms": cpu_ms() - cpu0,
            "rows": rows,
            "stores_read": read,
            "peak_rss_kb": peak_rss_kb(),
        })
    });
    println!("{result}");
}

fn generate_store(path: &Path, org: &str) {
    let mut conn = rusqlite::Connection::open(path).unwrap_or_else(|e| fail(&e.to_string()));
    conn.execute_batch(mai_tenant::store::SCHEMA)
        .unwrap_or_else(|e| fail(&e.to_string()));
    let tx = conn.transaction().unwrap_or_else(|e| fail(&e.to_string()));
    tx.execute("INSERT INTO client_organizations (id, name, openrouter_api_key, markup_rate, is_active, created_at, updated_at) VALUES (?1, 'Bench', 'x', 1.3, 1, 0, 0)", [org]).ok();
    // History ends yesterday, stamped in the past as a live app's would be.
    let now = chrono::Utc::now();
    let start = now.date_naive() - Duration::days(DAYS);
    {
        let mut daily = tx.prepare("INSERT INTO client_daily_usage VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)").unwrap_or_else(|e| fail(&e.to_string()));
        let mut user = tx.prepare("INSERT INTO client_user_daily_usage VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)").unwrap_or_else(|e| fail(&e.to_string()));
        let mut model = tx.prepare("INSERT INTO client_model_daily_usage VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)").unwrap_or_else(|e| fail(&e.to_string()));
        for d in 0..DAYS {
            let day = (start + Duration::days(d)).format("%Y-%m-%d").to_string();
            let ts = now.timestamp() - (DAYS - d) * 86_400;
            let cost = (d as f64 + 1.0) * 0.001;
            daily
                .execute(rusqlite::params![
                    format!("{org}:{day}"),
                    org,
                    day,
                    1000 + d,
                    10,
                    cost,
                    cost * 1.3,
                    MODELS[0],
                    USERS as i64,
                    ts
                ])
                .ok();
            for u in 0..USERS {
                user.execute(rusqlite::params![
                    format!("{org}:u{u}:{day}"),
                    org,
                    format!("u{u}"),
                    format!("temp_u{u}"),
                    day,
                    50 + d,
                    1,
                    cost / 20.0,
                    cost * 1.3 / 20.0,
                    ts
                ])
                .ok();
            }
            for m in MODELS {
                model
                    .execute(rusqlite::params![
                        format!("{org}:{m}:{day}"),
                        org,
                        m,
                        day,
                        125 + d,
                        2,
                        cost / 8.0,
                        cost * 1.3 / 8.0,
                        m.split('/').next(),
                        ts
                    ])
                    .ok();
            }
        }
    }
    tx.commit().unwrap_or_else(|e| fail(&e.to_string()));
}

/// Today's rows of every 20th store get more usage, as a live app would write them.
fn touch_five_percent(dir: &Path, stores: usize) {
    let now = chrono::Utc::now().timestamp();
    for i in (0..stores).step_by(20) {
        let conn = rusqlite::Connection::open(dir.join(format!("t{i}")).join("webui.db"))
            .unwrap_or_else(|e| fail(&e.to_string()));
        for table in [
            "client_daily_usage",
            "client_user_daily_usage",
            "client_model_daily_usage",
        ] {
            conn.execute(
                &format!("UPDATE {table} SET total_tokens = total_tokens + 100, total_requests = total_requests + 1, raw_cost = raw_cost + 0.001, updated_at = ?1 WHERE usage_date = (SELECT MAX(usage_date) FROM {table})"),
                [now],
            )
            .unwrap_or_else(|e| fail(&e.to_string()));
        }
    }
}

/// User + system CPU of this process, from /proc (clock ticks of 10 ms).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks * 10.0
}

fn peak_rss_kb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0.0)
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-agent: {msg}");
    std::process::exit(1)
}
