//! The agent against real tenant containers and PostgreSQL (issue 3, first part).

use std::process::{Command, Stdio};
use std::time::Duration;

use mai_fleet_e2e::{chat, fleet_sums_in, require_services, store_sums, Fleet, Running};

const DEV: &str = "mai-fleet/tenant:dev";

fn spawn_agent(f: &Fleet, host: &str) -> Running {
    Running(
        f.agent_command(host, &["--interval", "300ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    )
}

fn fleet_sums(f: &Fleet, tenant: &str) -> Vec<String> {
    fleet_sums_in(&f.database_url, tenant)
}

#[test]
fn usage_is_mirrored_exactly_through_agent_kills_and_a_database_outage() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("mirror");
    let (a, b, c) = (f.id("a"), f.id("b"), f.id("c"));
    let load = "SIM_USAGE_PER_MIN: \"1200\"";
    // Tenant b's store in WAL mode, the others in rollback-journal mode: the agent
    // reads both while the app writes.
    let wal = "SIM_USAGE_PER_MIN: \"1200\", MAI_SQLITE_JOURNAL: wal";
    let spec = f.write_spec(&f.spec(&[
        (&a, "a", DEV, load),
        (&b, "a", DEV, wal),
        (&c, "b", DEV, load),
    ]));
    f.apply_ok(&spec, &[]);

    let mut agents = vec![spawn_agent(&f, "a"), spawn_agent(&f, "b")];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..5u64 {
        std::thread::sleep(Duration::from_millis(
            300 + (seed.wrapping_mul(round + 7) % 1200),
        ));
        // Real users on top of the load, streaming and not.
        chat(
            f.base_port + (round % 3) as u16,
            "jan",
            "deepseek/deepseek-chat",
        );
        let victim = (round % 2) as usize;
        let _ = agents[victim].0.kill(); // SIGKILL, mid-cycle or between cycles
        let _ = agents[victim].0.wait();
        agents[victim] = spawn_agent(&f, if victim == 0 { "a" } else { "b" });
    }
    // The database away for a cycle: the cycle fails, nothing moves, nothing is lost.
    let down = f
        .agent_command("a", &["--once"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("database_away=true"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    drop(agents);
    // Freeze the stores, then one last cycle: the fleet must equal them exactly.
    let wal_file = f.data_root("a").join(&b).join("data").join("webui.db-wal");
    assert!(wal_file.exists(), "tenant b writes in WAL mode");
    let names: Vec<String> = [&a, &b, &c].iter().map(|id| format!("mai-{id}")).collect();
    assert!(Command::new("docker")
        .arg("stop")
        .args(&names)
        .output()
        .unwrap()
        .status
        .success());
    f.agent_once("a");
    f.agent_once("b");
    for (id, host) in [(&a, "a"), (&b, "a"), (&c, "b")] {
        let store = store_sums(
            &f.data_root(host).join(id).join("data"),
            &format!("org_{id}"),
        );
        assert!(
            store.len() >= 5,
            "{id}: the load produced too little to test: {store:?}"
        );
        assert_eq!(fleet_sums(&f, id), store, "{id}: fleet and store differ");
    }
    let generations = f.psql(&format!(
        "SELECT count(*) FROM usage_generations WHERE tenant_id = '{a}'"
    ));
    assert!(generations.parse::<u32>().unwrap() > 10, "{generations}");
    assert_eq!(f.psql("SELECT count(*) FROM agent_heartbeats"), "2");
    assert_eq!(f.psql("SELECT count(*) FROM store_regressions"), "0");
}

#[test]
fn tenant_started_by_hand_without_its_org_env_is_reported_inactive() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("byhand");
    assert_eq!(f.controller(&["migrate"]).code, 0);
    let id = f.id("x");
    // The seeds' incident: started by hand, OPENROUTER_EXTERNAL_USER forgotten.
    let data = f.start_by_hand(
        &id,
        "a",
        None,
        &[
            "ORGANIZATION_NAME=Kancelaria".into(),
            format!("OPENROUTER_API_KEY={}", mai_fleet_e2e::KEY_A),
        ],
    );
    for _ in 0..50 {
        if data.join("webui.db").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = f.agent_once("a");
    assert!(log.contains(" inactive=1 "), "{log}");
    let row = f.psql(&format!("SELECT tracking, in_spec, store_status, array_to_string(reasons, ' / ') FROM tenant_health WHERE tenant_id = '{id}'"));
    assert!(row.starts_with("inactive|f|ok|"), "{row}");
    assert!(
        row.contains("required env missing: OPENROUTER_EXTERNAL_USER"),
        "{row}"
    );
    assert!(row.contains("no organization row"), "{row}");
    assert!(!row.contains(mai_fleet_e2e::KEY_A), "no key in health");
    let status = f.controller(&["status", "--output", "json"]);
    assert_eq!(
        status.code,
        3,
        "exit 3 = not every tenant active: {}",
        status.all()
    );
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    let tenants = json["tenants"].as_array().expect("tenants").clone();
    let t = tenants
        .iter()
        .find(|t| t["tenant"] == id.as_str())
        .expect("the hand-started container is listed");
    assert_eq!(t["tracking"], "inactive");
    assert_eq!(t["in_spec"], false);
    assert_eq!(t["container"], format!("mai-{id}"));
    assert_eq!(t["host"], format!("{}-a", f.name));
    let reasons = t["reasons"].to_string();
    assert!(
        reasons.contains("OPENROUTER_EXTERNAL_USER") && reasons.contains("no organization row"),
        "{reasons}"
    );
    assert!(t.get("last_data_age_s").is_some());
}

#[test]
fn store_reset_keeps_fleet_history_and_is_recorded() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("reset");
    let id = f.id("a");
    let spec = f.write_spec(&f.spec(&[(&id, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    for user in ["anna", "piotr", "ewa"] {
        chat(f.base_port, user, "openai/gpt-4o-mini").expect("chat");
    }
    f.agent_once("a");
    let before = fleet_sums(&f, &id);
    assert_eq!(before.len(), 5, "{before:?}");

    // The app's complete_usage_reset script, run against the live store.
    let db = f.data_root("a").join(&id).join("data").join("webui.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("DELETE FROM client_daily_usage; DELETE FROM client_user_daily_usage; DELETE FROM client_model_daily_usage;").unwrap();
    drop(conn);
    let log = f.agent_once("a");
    assert!(log.contains(" regressions=3 "), "{log}");
    assert_eq!(fleet_sums(&f, &id), before, "the fleet keeps its history");
    let detail = f.psql(&format!("SELECT string_agg(store_table || ': ' || detail, ' / ' ORDER BY store_table) FROM store_regressions WHERE tenant_id = '{id}'"));
    assert!(
        detail.contains("client_daily_usage: 0 row(s) now, 1 before: rows were deleted"),
        "{detail}"
    );
    // Seen again next cycle: recorded once.
    f.agent_once("a");
    assert_eq!(f.psql("SELECT count(*) FROM store_regressions"), "3");
}

#[test]
fn host_credentials_confine_an_agent_to_its_own_tenants() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("rls");
    let (a, b) = (f.id("a"), f.id("b"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, "")]));
    f.apply_ok(&spec, &[]);
    chat(f.base_port, "anna", "openai/gpt-4o-mini").expect("chat a");
    chat(f.base_port + 1, "ewa", "openai/gpt-4o-mini").expect("chat b");
    let (host_a, host_b) = (format!("{}-a", f.name), format!("{}-b", f.name));
    let add = |host: &str, extra: &[&str]| {
        let mut args = vec!["host", "add", host];
        args.extend_from_slice(extra);
        let r = f.controller(&args);
        (
            r.code,
            r.stdout
                .trim()
                .strip_prefix("DATABASE_URL=")
                .unwrap_or_default()
                .to_string(),
            r.stderr,
        )
    };
    let (code, url_a, _) = add(&host_a, &[]);
    assert_eq!(code, 0);
    let (_, url_b, _) = add(&host_b, &[]);
    let (code, _, err) = add(&host_a, &[]);
    assert_eq!(code, 1, "a second add is refused");
    assert!(
        err.contains("already has agent credentials") && err.contains("--rotate"),
        "{err}"
    );

    let with = |url: &str, host: &str| {
        f.agent_command(host, &["--once"])
            .env("DATABASE_URL", url)
            .output()
            .unwrap()
    };
    assert!(with(&url_a, "a").status.success());
    assert!(with(&url_b, "b").status.success());
    assert_eq!(
        f.psql(
            "SELECT string_agg(tenant_id || '@' || host, ',' ORDER BY tenant_id) FROM usage_daily"
        ),
        format!("{a}@{host_a},{b}@{host_b}")
    );

    // With host A's credentials, no write for a host-B tenant goes through.
    let insert = |host: &str| {
        format!("INSERT INTO usage_daily (host, tenant_id, usage_date, client_org_id, total_tokens, total_requests, raw_cost, markup_cost, unique_users, source_updated_at) VALUES ('{host}', '{b}', '2026-01-01', 'x', 1, 1, 0, 0, 0, 0)")
    };
    for host in [&host_b, &host_a] {
        let err = mai_fleet_e2e::try_psql(&url_a, &insert(host)).expect_err("must be refused");
        assert!(err.contains("row-level security"), "{err}");
    }
    let tokens_b = f.psql(&format!(
        "SELECT total_tokens FROM usage_daily WHERE tenant_id = '{b}'"
    ));
    assert_eq!(
        mai_fleet_e2e::try_psql(
            &url_a,
            &format!("UPDATE usage_daily SET total_tokens = 0 WHERE tenant_id = '{b}' RETURNING 1")
        ),
        Ok(String::new())
    );
    assert_eq!(
        mai_fleet_e2e::try_psql(
            &url_a,
            &format!("SELECT count(*) FROM usage_daily WHERE tenant_id = '{b}'")
        ),
        Ok("0".into()),
        "B's rows are invisible to A"
    );
    assert_eq!(
        f.psql(&format!(
            "SELECT total_tokens FROM usage_daily WHERE tenant_id = '{b}'"
        )),
        tokens_b
    );
    // Host B's agent run with A's credentials writes nothing for B.
    let wrong = with(&url_a, "b");
    assert!(
        !wrong.status.success(),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    // A wrong password is refused; a rotation retires the old one.
    let bad = url_a
        .replacen(":", "#", 2)
        .replacen("#", ":", 1)
        .replace('#', ":x");
    assert!(mai_fleet_e2e::try_psql(&bad, "SELECT 1")
        .unwrap_err()
        .contains("password authentication failed"));
    let (code, rotated, _) = add(&host_a, &["--rotate"]);
    assert_eq!(code, 0);
    assert!(
        mai_fleet_e2e::try_psql(&url_a, "SELECT 1").is_err(),
        "the old password stops working"
    );
    assert_eq!(
        mai_fleet_e2e::try_psql(&rotated, "SELECT 1"),
        Ok("1".into())
    );
    let transcript = f.transcript.borrow();
    let password = rotated
        .rsplit_once('@')
        .unwrap()
        .0
        .rsplit_once(':')
        .unwrap()
        .1;
    assert_eq!(
        transcript.matches(password).count(),
        1,
        "the password is printed once"
    );
    assert!(f.psql_admin("SELECT string_agg(rolpassword, '') FROM pg_authid WHERE rolname LIKE 'mai_agent_e2e_rls%'").starts_with("SCRAM-SHA-256$"));
}

#[test]
fn postgres_away_loses_nothing_the_spool_delivers_in_order() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("outage");
    let pg = mai_fleet_e2e::PrivatePostgres::start(&f.name, f.base_port + 19);
    let (a, b) = (f.id("a"), f.id("b"));
    let load = "SIM_USAGE_PER_MIN: \"1200\"";
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, load), (&b, "a", DEV, load)]));
    let apply = f
        .controller_command(&["apply", spec.to_str().unwrap(), "--settle", "1s"])
        .env("DATABASE_URL", &pg.url)
        .output()
        .unwrap();
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );

    // MAI_FLEET_E2E_RUN=180 MAI_FLEET_E2E_OUTAGE=60 MAI_FLEET_E2E_INTERVAL=5 is the soak.
    let (run, outage) = (
        mai_fleet_e2e::seconds("RUN", 20),
        mai_fleet_e2e::seconds("OUTAGE", 8),
    );
    let interval = format!("{}s", mai_fleet_e2e::seconds("INTERVAL", 1).as_secs());
    let log = f.dir.join("agent.log");
    let agent_proc = Running(
        f.agent_command("a", &["--interval", &interval, "--log-format", "json"])
            .env("DATABASE_URL", &pg.url)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let before = (run - outage) / 2;
    std::thread::sleep(before);
    pg.stop();
    std::thread::sleep(outage);
    let spool = f.dir.join("spool").join(format!("{}-a", f.name));
    let spooled = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert!(
        spooled > 0,
        "batches must wait in the spool while Postgres is away"
    );
    pg.resume();
    std::thread::sleep(run - outage - before);
    drop(agent_proc);

    let names: Vec<String> = [&a, &b].iter().map(|id| format!("mai-{id}")).collect();
    assert!(Command::new("docker")
        .arg("stop")
        .args(&names)
        .output()
        .unwrap()
        .status
        .success());
    let last = &f
        .agent_command("a", &["--once"])
        .env("DATABASE_URL", &pg.url)
        .output()
        .unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    // Every line of the log is one JSON object (--log-format json).
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["database_away"] == true), "{text}");
    // The outage is logged when it starts and when it ends, not once a cycle.
    let warnings = lines.iter().filter(|l| l["level"] == "WARN").count();
    let cycles_away = lines.iter().filter(|l| l["database_away"] == true).count();
    assert!(
        (1..=2).contains(&warnings) && cycles_away > warnings,
        "{warnings} warning(s) in {cycles_away} cycle(s) without the database:\n{text}"
    );
    assert!(lines
        .iter()
        .any(|l| l["message"] == "the fleet database is reachable again"));
    let delivered: usize = lines
        .iter()
        .filter_map(|l| l["unspooled"].as_u64())
        .map(|n| n as usize)
        .sum();
    assert!(
        delivered >= spooled,
        "delivered {delivered} of {spooled} spooled batches:\n{text}"
    );
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "the spool is empty once delivered"
    );
    for id in [&a, &b] {
        let store = store_sums(
            &f.data_root("a").join(id).join("data"),
            &format!("org_{id}"),
        );
        let sql = |q: &str| mai_fleet_e2e::psql(&pg.url, q);
        let fleet = fleet_sums_in(&pg.url, id);
        assert_eq!(
            fleet, store,
            "{id}: fleet and store differ after the outage"
        );
        let gens_store: i64 =
            rusqlite::Connection::open(f.data_root("a").join(id).join("data").join("webui.db"))
                .unwrap()
                .query_row("SELECT count(*) FROM processed_generations", [], |r| {
                    r.get(0)
                })
                .unwrap();
        assert_eq!(
            sql(&format!(
                "SELECT count(*) FROM usage_generations WHERE tenant_id = '{id}'"
            )),
            gens_store.to_string()
        );
    }
}

#[test]
fn day_rollover_does_not_carry_yesterdays_live_counter_into_today() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("midnight");
    let id = f.id("a");
    // The tenant's clock reads 23:59:52 UTC when the spec is written.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let offset = to_midnight as i64 - 8;
    let spec = f
        .spec(&[(&id, "a", DEV, &format!("SIM_CLOCK_OFFSET_S: \"{offset}\""))])
        .replace(
            &format!("    name: Klient {id}\n"),
            &format!("    name: Klient {id}\n    timezone: UTC\n"),
        );
    let started = std::time::Instant::now();
    f.apply_ok(&f.write_spec(&spec), &[]);
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "too slow to stay before the tenant's midnight"
    );
    let before = chat(f.base_port, "anna", "openai/gpt-4o-mini").expect("chat before midnight");
    chat(f.base_port, "anna", "openai/gpt-4o-mini").expect("chat before midnight");
    agent_once_skewed(&f);
    let (day1, live1): (String, String) = {
        let row = f.psql(&format!("SELECT counter_date || '|' || today_tokens FROM usage_live_counters WHERE tenant_id = '{id}'"));
        let (d, t) = row.split_once('|').unwrap();
        (d.to_string(), t.to_string())
    };
    assert_eq!(
        live1,
        (2 * before["usage"]["total_tokens"].as_i64().unwrap()).to_string()
    );

    std::thread::sleep(Duration::from_secs(9).saturating_sub(started.elapsed()));
    let after = chat(f.base_port, "piotr", "deepseek/deepseek-chat").expect("chat after midnight");
    agent_once_skewed(&f);
    let row = f.psql(&format!("SELECT counter_date || '|' || today_tokens || '|' || today_requests FROM usage_live_counters WHERE tenant_id = '{id}'"));
    let parts: Vec<&str> = row.split('|').collect();
    assert_ne!(parts[0], day1, "the live counter moved to the new day");
    assert_eq!(
        parts[1],
        after["usage"]["total_tokens"].to_string(),
        "today's counter holds only today's usage"
    );
    assert_eq!(parts[2], "1");
    let days = f.psql(&format!("SELECT string_agg(usage_date || ':' || total_requests, ',' ORDER BY usage_date) FROM usage_daily WHERE tenant_id = '{id}'"));
    assert_eq!(
        days,
        format!("{day1}:2,{}:1", parts[0]),
        "yesterday stays yesterday's"
    );
    assert_eq!(
        f.psql(&format!(
            "SELECT live_counter_date FROM tenant_health WHERE tenant_id = '{id}'"
        )),
        parts[0]
    );
}

/// One agent cycle for a tenant whose clock the test moved ahead (SIM_CLOCK_OFFSET_S):
/// its stamps are up to a day in the agent's future, which the agent otherwise refuses.
fn agent_once_skewed(f: &Fleet) {
    let out = f
        .agent_command("a", &["--once", "--max-clock-skew", "25h"])
        .output()
        .expect("run agent");
    assert!(
        out.status.success(),
        "agent --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every statement the agent sends is checked against the schema the controller's
/// migrations make: a column renamed in a migration fails here, not in production.
#[test]
fn every_agent_statement_prepares_against_a_freshly_migrated_database() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("agent_statements");
    let migrated = f.controller(&["migrate"]);
    assert_eq!(migrated.code, 0, "{}", migrated.all());
    let statements = mai_fleet_agent::sink::statements();
    assert!(statements.len() >= 12, "{}", statements.len());
    for sql in &statements {
        if let Err(e) = mai_fleet_e2e::try_psql(&f.database_url, &format!("PREPARE s AS {sql}")) {
            panic!("the agent's statement does not prepare: {e}\n{sql}");
        }
    }
    // And the check can fail: a statement naming a column no migration made.
    let wrong = statements[0].replace("unique_users", "unique_visitors");
    assert!(mai_fleet_e2e::try_psql(&f.database_url, &format!("PREPARE s AS {wrong}")).is_err());
}
