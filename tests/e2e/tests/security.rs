//! Every trust boundary of docs/security.md attacked as an attacker would, against the
//! real PostgreSQL and Docker engine. Each test names the attack it replays.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mai_fleet_e2e::dashboard::login_from;
use mai_fleet_e2e::{chat, http_full, require_services, try_psql, Fleet, Running};

const DEV: &str = "mai-fleet/tenant:dev";

/// `controller host add HOST`: the agent's DATABASE_URL.
fn host_url(f: &Fleet, host: &str) -> String {
    let r = f.controller(&["host", "add", host]);
    assert_eq!(r.code, 0, "host add: {}", r.all());
    r.stdout
        .trim()
        .strip_prefix("DATABASE_URL=")
        .expect("DATABASE_URL=")
        .to_string()
}

fn agent_with(f: &Fleet, url: &str, host: &str) -> std::process::Output {
    f.agent_command(host, &["--once"])
        .env("DATABASE_URL", url)
        .output()
        .expect("agent")
}

/// Attack: host B's agent credentials shadow the RLS helpers' tables with temporary
/// objects (`pg_temp` is searched first) to act as host A, or to run its own function
/// as the helpers' owner; squat rows of a tenant it does not run so that the rightful
/// host's agent is blocked.
#[test]
fn agent_credentials_reach_nothing_beyond_their_own_hosts_rows() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("sec-rls");
    let (a, b, x) = (f.id("a"), f.id("b"), f.id("x"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, "")]));
    f.apply_ok(&spec, &[]);
    chat(f.base_port, "anna", "openai/gpt-4o-mini").expect("chat a");
    chat(f.base_port + 1, "ewa", "openai/gpt-4o-mini").expect("chat b");
    let (host_a, host_b) = (format!("{}-a", f.name), format!("{}-b", f.name));
    let (url_a, url_b) = (host_url(&f, &host_a), host_url(&f, &host_b));
    assert!(agent_with(&f, &url_a, "a").status.success());
    assert!(agent_with(&f, &url_b, "b").status.success());

    // The controller's own role is not a superuser (the whole suite runs this way).
    assert_eq!(
        f.psql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"),
        "f"
    );
    // No definer function is left for a temporary object to hijack.
    assert_eq!(
        f.psql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.prosecdef AND n.nspname = 'public'"),
        "0"
    );

    let see_a = format!("SELECT count(*) FROM usage_daily WHERE tenant_id = '{a}'");
    let claim_a = format!(
        "CREATE TEMP TABLE agent_roles (role_name TEXT, host TEXT); \
         INSERT INTO agent_roles VALUES (session_user, '{host_a}'); {see_a}"
    );
    let refused = try_psql(&url_b, &claim_a).expect_err("B may not create temporary tables");
    assert!(refused.contains("permission denied"), "{refused}");

    // Even where an operator's database grants TEMP to everybody, nothing changes.
    let role_b = f.psql(&format!(
        "SELECT role_name FROM agent_roles WHERE host = '{host_b}'"
    ));
    let db = f.psql("SELECT current_database()");
    f.psql_admin(&format!("GRANT TEMP ON DATABASE {db} TO {role_b}"));
    assert_eq!(
        try_psql(&url_b, &claim_a).expect("temp allowed now"),
        "0",
        "B sees none of A's rows through a temporary agent_roles"
    );
    let write_a = format!(
        "CREATE TEMP TABLE agent_roles (role_name TEXT, host TEXT); \
         INSERT INTO agent_roles VALUES (session_user, '{host_a}'); \
         UPDATE usage_daily SET total_tokens = 0 WHERE tenant_id = '{a}' RETURNING 1"
    );
    assert_eq!(try_psql(&url_b, &write_a), Ok(String::new()));
    // A temporary view over a temporary function: who does the function run as?
    let hijack = format!(
        "CREATE TEMP TABLE seen (who TEXT); \
         CREATE FUNCTION pg_temp.who() RETURNS TEXT LANGUAGE plpgsql VOLATILE AS \
           $$ BEGIN INSERT INTO pg_temp.seen VALUES (current_user); RETURN '{host_a}'; END $$; \
         CREATE TEMP VIEW agent_roles AS SELECT session_user::text AS role_name, pg_temp.who() AS host; \
         CREATE TEMP VIEW tenants AS SELECT '{a}'::text AS id, pg_temp.who() AS host, true AS in_spec; \
         {see_a}; SELECT string_agg(DISTINCT who, ',') FROM pg_temp.seen"
    );
    let out = try_psql(&url_b, &hijack).expect("B's own temporary objects");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "B still sees none of A's rows");
    assert!(
        lines
            .get(1)
            .is_none_or(|who| who.is_empty() || *who == role_b),
        "a pg_temp function ran as another role: {out}"
    );
    assert!(
        f.psql(&see_a).parse::<i64>().unwrap() > 0
            && f.psql(&format!(
                "SELECT min(total_tokens) FROM usage_daily WHERE tenant_id = '{a}'"
            )) != "0",
        "A's rows are intact"
    );

    // Squatting: B writes rows for a tenant the spec does not (yet) place anywhere.
    let today = f.psql("SELECT (now() AT TIME ZONE 'Europe/Warsaw')::date");
    let squat = |host: &str, tokens: i64| {
        format!("INSERT INTO usage_daily (host, tenant_id, usage_date, client_org_id, total_tokens, total_requests, raw_cost, markup_cost, unique_users, source_updated_at) VALUES ('{host}', '{x}', '{today}', 'org_{x}', {tokens}, 1, 0, 0, 0, 0)")
    };
    let err = try_psql(&url_b, &squat(&host_b, 1)).expect_err("no rows for an unknown tenant");
    assert!(err.contains("row-level security"), "{err}");
    let health = format!("INSERT INTO agent_watermarks (host, tenant_id, store_table, updated_at, row_count) VALUES ('{host_b}', '{x}', 'client_daily_usage', 9999999999, 0)");
    assert!(try_psql(&url_b, &health).is_err());

    // A row squatted before this boundary existed (written here as the owner) does
    // not block the tenant's rightful host once the spec places the tenant there.
    f.psql(&squat(&host_b, 1));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, ""), (&x, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    chat(f.base_port + 2, "ola", "openai/gpt-4o-mini").expect("chat x");
    let out = agent_with(&f, &url_a, "a");
    assert!(
        out.status.success(),
        "A's agent is blocked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        f.psql(&format!(
            "SELECT host || ' ' || (total_tokens > 1) FROM usage_daily WHERE tenant_id = '{x}' AND usage_date = '{today}'"
        )),
        format!("{host_a} true"),
        "the rightful host's figures replace the squatted row"
    );
    // And B can no longer see or touch x's rows.
    assert_eq!(
        try_psql(
            &url_b,
            &format!("SELECT count(*) FROM usage_daily WHERE tenant_id = '{x}'")
        ),
        Ok("0".into())
    );
}

/// A store of `tenant`'s data directory, replaced on the host by what `make` builds.
fn sabotage(f: &Fleet, tenant: &str, make: impl FnOnce(&Path)) {
    let db = f.data_root("a").join(tenant).join("data").join("webui.db");
    for _ in 0..50 {
        if db.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&db).expect("remove the store");
    make(&db);
}

fn sqlite(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch(sql).expect("sql");
}

/// The usage schema of the app with its organization row, as a fresh store.
fn fresh_store(db: &Path, org: &str) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch(mai_tenant::store::SCHEMA)
        .expect("schema");
    conn.execute(
        "INSERT INTO client_organizations (id, name, openrouter_api_key, markup_rate, is_active, created_at, updated_at) VALUES (?1, 'x', 'k', 1.3, 1, 1, 1)",
        [org],
    )
    .expect("org");
}

/// Attack: tenants own their containers and so their `webui.db`; each turns it into
/// something that hangs, crashes, leaks or skews the agent.
#[test]
fn hostile_tenant_stores_are_refused_and_the_other_tenants_still_ship() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("sec-stores");
    let names = [
        "good", "fifo", "link", "view", "rows", "text", "values", "future",
    ];
    let ids: Vec<String> = names.iter().map(|n| f.id(n)).collect();
    let tenants: Vec<(&str, &str, &str, &str)> =
        ids.iter().map(|id| (id.as_str(), "a", DEV, "")).collect();
    let spec = f.write_spec(&f.spec(&tenants));
    f.apply_ok(&spec, &[]);
    chat(f.base_port, "anna", "openai/gpt-4o-mini").expect("chat good");
    let id = |n: &str| ids[names.iter().position(|x| *x == n).unwrap()].clone();
    let org = |n: &str| format!("org_{}", id(n));

    sabotage(&f, &id("fifo"), |db| {
        let ok = Command::new("mkfifo").arg(db).status().unwrap();
        assert!(ok.success());
    });
    let good_db = f
        .data_root("a")
        .join(id("good"))
        .join("data")
        .join("webui.db");
    sabotage(&f, &id("link"), |db| {
        std::os::unix::fs::symlink(&good_db, db).unwrap()
    });
    sabotage(&f, &id("view"), |db| {
        let schema = mai_tenant::store::SCHEMA.replace(
            "CREATE TABLE IF NOT EXISTS client_daily_usage",
            "CREATE TABLE IF NOT EXISTS client_daily_usage_real",
        );
        sqlite(db, &schema);
        sqlite(db, "CREATE VIEW client_daily_usage AS WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
             SELECT 'x' AS id, 'o' AS client_org_id, '2026-01-01' AS usage_date, n AS total_tokens, 1 AS total_requests, 0.0 AS raw_cost, \
             0.0 AS markup_cost, NULL AS primary_model, 1 AS unique_users, n AS created_at, n AS updated_at FROM r");
    });
    let now = chrono::Utc::now().timestamp();
    let today = chrono::Utc::now().date_naive().to_string();
    sabotage(&f, &id("rows"), |db| {
        fresh_store(db, &org("rows"));
        sqlite(db, &format!(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000) \
             INSERT INTO client_user_daily_usage (id, client_org_id, user_id, openrouter_user_id, usage_date, total_tokens, total_requests, raw_cost, markup_cost, created_at, updated_at) \
             SELECT 'u' || n, '{}', 'user' || n, 'temp', '{today}', 1, 1, 0.0, 0.0, {now}, {now} FROM r", org("rows")));
    });
    sabotage(&f, &id("text"), |db| {
        fresh_store(db, &org("text"));
        sqlite(db, &format!(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 20) \
             INSERT INTO client_user_daily_usage (id, client_org_id, user_id, openrouter_user_id, usage_date, total_tokens, total_requests, raw_cost, markup_cost, created_at, updated_at) \
             SELECT 'u' || n, '{}', 'user' || n || printf('%.*c', 1000000, 'x'), 'temp', '{today}', 1, 1, 0.0, 0.0, {now}, {now} FROM r", org("text")));
    });
    sabotage(&f, &id("values"), |db| {
        fresh_store(db, &org("values"));
        let o = org("values");
        sqlite(db, &format!(
            "INSERT INTO client_daily_usage (id, client_org_id, usage_date, total_tokens, total_requests, raw_cost, markup_cost, primary_model, unique_users, created_at, updated_at) VALUES \
             ('a', '{o}', '2026-01-01', -5, 1, 0.1, 0.13, 'm', 1, {now}, {now}), \
             ('b', '{o}', '2026-01-02', 5000000000000000000, 1, 0.1, 0.13, 'm', 1, {now}, {now}), \
             ('c', '{o}', '2026-01-03', 10, 1, 1000000000000.0, 0.13, 'm', 1, {now}, {now}), \
             ('d', '{o}', '2026-01-04', 'abc', 1, 0.1, 0.13, 'm', 1, {now}, {now}), \
             ('e', '{o}', '2026-01-05', 100, 2, 0.2, 0.26, 'm', 1, {now}, {now})"));
    });
    sabotage(&f, &id("future"), |db| {
        fresh_store(db, &org("future"));
        let o = org("future");
        sqlite(db, &format!(
            "INSERT INTO client_daily_usage (id, client_org_id, usage_date, total_tokens, total_requests, raw_cost, markup_cost, primary_model, unique_users, created_at, updated_at) VALUES \
             ('a', '{o}', '2026-01-01', 7, 1, 0.1, 0.13, 'm', 1, {now}, 99999999999), \
             ('b', '{o}', '2026-01-02', 8, 1, 0.1, 0.13, 'm', 1, {now}, {now})"));
    });

    let started = Instant::now();
    let mut child = f
        .agent_command("a", &["--once"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        status.is_some(),
        "agent --once still running after 60 s: {log}"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "agent --once took {elapsed:?}: {log}"
    );
    eprintln!(
        "agent --once over {} hostile stores: {elapsed:?}",
        names.len() - 1
    );

    // The good tenant shipped in the same cycle.
    let tokens = f.psql(&format!(
        "SELECT coalesce(sum(total_tokens), 0) FROM usage_daily WHERE tenant_id = '{}'",
        id("good")
    ));
    assert_eq!(
        tokens,
        mai_fleet_e2e::store_tokens(good_db.parent().unwrap()).to_string(),
        "{log}"
    );
    let health = |n: &str| {
        f.psql(&format!(
            "SELECT store_status || ' | ' || array_to_string(reasons, ' / ') FROM tenant_health WHERE tenant_id = '{}'",
            id(n)
        ))
    };
    for (n, words) in [
        ("fifo", "not a regular file"),
        ("link", "symbolic link"),
        ("view", "view"),
        ("rows", "rows"),
        ("text", "too big"),
    ] {
        let h = health(n);
        assert!(!h.starts_with("ok") && h.contains(words), "{n}: {h}\n{log}");
    }
    // Bad rows are refused and named; the good rows of the same store ship.
    let h = health("values");
    assert!(h.contains("4 row(s) refused"), "{h}");
    assert_eq!(
        f.psql(&format!(
            "SELECT string_agg(usage_date || ':' || total_tokens, ',' ORDER BY usage_date) FROM usage_daily WHERE tenant_id = '{}'",
            id("values")
        )),
        "2026-01-05:100"
    );
    let h = health("future");
    assert!(h.contains("in the future"), "{h}");
    assert_eq!(
        f.psql(&format!(
            "SELECT string_agg(usage_date || ':' || total_tokens, ',') FROM usage_daily WHERE tenant_id = '{}'",
            id("future")
        )),
        "2026-01-02:8"
    );
    assert!(
        f.psql(&format!(
            "SELECT max(updated_at) FROM agent_watermarks WHERE tenant_id = '{}'",
            id("future")
        ))
        .parse::<i64>()
        .unwrap()
            <= now + 3600,
        "a future updated_at does not carry the watermark past every real row"
    );
    // Nobody else's store was read through the symbolic link.
    assert_eq!(
        f.psql(&format!(
            "SELECT count(*) FROM usage_daily WHERE tenant_id = '{}'",
            id("link")
        )),
        "0"
    );

    // The pages and the bill answer for everybody.
    let port = f.base_port + 15;
    let _serve = serve(&f, port, &[]);
    let (_, session) = login_from(port, "admin", PASSWORD, None);
    let session = session.expect("login");
    for path in [
        "/".to_string(),
        format!("/tenants/{}", id("values")),
        "/billing".into(),
        "/alerts".into(),
        "/api/v1/fleet".into(),
    ] {
        assert_eq!(session.get(&path).status, 200, "{path}");
    }
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let bill = f.controller(&["billing", &month, "--output", "json"]);
    assert_eq!(bill.code, 0, "{}", bill.all());
    let r = f.controller(&["alerts", "evaluate"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

/// Attack: a corrupt batch in the spool, and SIGTERM in the middle of a cycle.
#[test]
fn a_corrupt_spool_file_is_set_aside_and_sigterm_stops_the_agent_promptly() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("sec-spool");
    let t = f.id("t");
    let spec = f.write_spec(&f.spec(&[(&t, "a", DEV, "SIM_USAGE_PER_MIN: \"600\"")]));
    f.apply_ok(&spec, &[]);
    let spool = f.dir.join("spool").join(format!("{}-a", f.name));
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(
        spool.join(format!("00000000000000000000-{t}.json")),
        b"{not json",
    )
    .unwrap();
    let log = f.agent_once("a");
    assert!(log.contains("set aside"), "{log}");
    assert!(spool
        .join(format!("00000000000000000000-{t}.rejected"))
        .exists());
    f.agent_once("a");

    for round in 0..4 {
        let mut agent = Running(
            f.agent_command("a", &["--interval", "100ms"])
                .stderr(Stdio::null())
                .spawn()
                .expect("agent"),
        );
        std::thread::sleep(Duration::from_millis(300 + 170 * round));
        let pid = agent.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let sent = Instant::now();
        let code = loop {
            if let Some(s) = agent.0.try_wait().unwrap() {
                break s.code();
            }
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "SIGTERM did not stop the agent within 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(code, Some(0), "round {round}");
    }
    // Nothing read was lost: one more cycle and the fleet equals the store.
    let out = Command::new("docker")
        .args(["stop", &format!("mai-{t}")])
        .output()
        .unwrap();
    assert!(out.status.success());
    f.agent_once("a");
    let store = mai_fleet_e2e::store_tokens(&f.data_root("a").join(&t).join("data"));
    assert_eq!(
        f.psql(&format!(
            "SELECT coalesce(sum(total_tokens), 0) FROM usage_daily WHERE tenant_id = '{t}'"
        )),
        store.to_string()
    );
}

/// Attack: containers of this fleet whose tenant label is empty or a path make
/// `--prune --purge-data` delete outside the tenant's own directory.
#[test]
fn purge_deletes_nothing_for_a_container_whose_tenant_label_is_not_a_tenant_id() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("sec-purge");
    let (a, b) = (f.id("a"), f.id("b"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    chat(f.base_port, "anna", "openai/gpt-4o-mini").expect("chat a");
    let outside = f.dir.join("x");
    std::fs::create_dir_all(outside.join("data")).unwrap();
    std::fs::write(outside.join("data").join("keep"), b"precious").unwrap();
    for (name, label) in [("empty", ""), ("dots", "../x")] {
        let out = Command::new("docker")
            .args(["create", "--name", &format!("{}-{name}", f.name)])
            .args(["--label", "mai-fleet.managed=true"])
            .args(["--label", &format!("mai-fleet.tenant={label}")])
            .args(["--label", &format!("mai-fleet.host={}-a", f.name)])
            .args(["--label", &format!("mai-fleet.fleet={}", f.name)])
            .arg(DEV)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    let r = f.apply(&spec, &["--prune", "--purge-data"]);
    assert_ne!(r.code, 0, "{}", r.all());
    let all = r.all();
    for name in ["empty", "dots"] {
        assert!(all.contains(&format!("{}-{name}", f.name)), "{all}");
    }
    let store_a = f.data_root("a").join(&a).join("data").join("webui.db");
    assert!(store_a.exists(), "a's store survives: {all}");
    assert!(mai_fleet_e2e::store_tokens(store_a.parent().unwrap()) > 0);
    assert!(outside.join("data").join("keep").exists(), "{all}");
    assert!(!f.data_root("a").join(&b).exists(), "b, pruned, is purged");
    // The refused containers are still there for a person to look at.
    assert!(f.containers().contains(&format!("{}-empty", f.name)));
}

const PASSWORD: &str = "correct-horse-battery-staple";

fn serve(f: &Fleet, port: u16, env: &[(&str, &str)]) -> Running {
    f.add_user("admin", PASSWORD);
    f.serve_dashboard(port, env)
}

/// Attack: guessing passwords, reading every client's money off `/metrics`.
#[test]
fn the_dashboard_throttles_guessing_and_metrics_need_a_token() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("sec-web");
    assert_eq!(f.controller(&["migrate"]).code, 0);
    let port = f.base_port;
    let token = "metrics-token-0123456789abcdef";
    let token_file = f.dir.join("metrics.token");
    std::fs::write(&token_file, token).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _serve = serve(
        &f,
        port,
        &[("MAI_FLEET_METRICS_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    let attacker = "127.0.0.3".parse().unwrap();
    let mut limited_at = None;
    for i in 1..=30 {
        let (r, session) = login_from(port, "admin", "wrong guess", Some(attacker));
        assert!(session.is_none());
        if r.status == 429 {
            assert!(r.header("retry-after").is_some(), "429 says when");
            limited_at = Some(i);
            break;
        }
        assert_eq!(r.status, 401);
    }
    assert!(
        limited_at.is_some_and(|i| i < 30),
        "30 wrong passwords from one address were all tried"
    );
    let (r, _) = login_from(port, "admin", PASSWORD, Some(attacker));
    assert_eq!(r.status, 429, "the limited address stays limited");
    let (r, session) = login_from(port, "admin", PASSWORD, Some("127.0.0.4".parse().unwrap()));
    assert_eq!(r.status, 303, "the right password from another address");
    assert!(session.is_some());

    assert_eq!(
        http_full(port, "GET", "/metrics", None, &[])
            .unwrap()
            .status,
        401
    );
    let wrong = http_full(
        port,
        "GET",
        "/metrics",
        None,
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(wrong.unwrap().status, 401);
    let bearer = format!("Bearer {token}");
    let ok = http_full(port, "GET", "/metrics", None, &[("Authorization", &bearer)]).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("mai_fleet_"));
}

/// Attack: from inside tenant A's container, reach tenant B's app; gain privileges.
#[test]
fn tenant_containers_are_confined_and_cannot_reach_each_other() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("sec-box");
    let (a, b) = (f.id("a"), f.id("b"));
    let mut spec = f.spec(&[(&a, "a", DEV, ""), (&b, "a", DEV, "")]);
    // No resources in the spec: the fleet's defaults still apply.
    spec = spec.replace("  resources: { memory: 128m, cpus: 0.5 }\n", "");
    let spec = f.write_spec(&spec);
    f.apply_ok(&spec, &[]);
    let i = f.inspect(&format!("mai-{a}")).expect("inspect a");
    let hc = &i["HostConfig"];
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]), "{hc}");
    assert!(
        hc["SecurityOpt"]
            .as_array()
            .is_some_and(|o| o.iter().any(|v| v == "no-new-privileges")),
        "{hc}"
    );
    assert!(hc["PidsLimit"].as_i64().unwrap_or(0) > 0, "{hc}");
    assert!(hc["Memory"].as_i64().unwrap_or(0) > 0, "{hc}");
    assert!(hc["NanoCpus"].as_i64().unwrap_or(0) > 0, "{hc}");
    assert_eq!(
        hc["PortBindings"]["8080/tcp"][0]["HostIp"], "127.0.0.1",
        "{hc}"
    );
    assert!(f.wait_health(f.base_port).is_some(), "a still serves");

    let ib = f.inspect(&format!("mai-{b}")).expect("inspect b");
    let b_ips: Vec<String> = ib["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n["IPAddress"].as_str())
        .filter(|ip| !ip.is_empty())
        .map(str::to_string)
        .collect();
    assert!(!b_ips.is_empty(), "{ib}");
    let gateway = ib["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n["Gateway"].as_str())
        .find(|g| !g.is_empty())
        .unwrap_or("172.17.0.1")
        .to_string();
    let mut targets: Vec<String> = b_ips.iter().map(|ip| format!("{ip}:8080")).collect();
    targets.push(format!("{gateway}:{}", f.base_port + 1));
    for target in targets {
        let out = Command::new("docker")
            .args([
                "exec",
                &format!("mai-{a}"),
                "/mai-tenant",
                "connect",
                &target,
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "tenant a reached {target}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
