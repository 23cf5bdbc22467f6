//! `controller apply` against the real Docker engine and PostgreSQL (issue 2).

use std::time::Duration;

use mai_fleet_e2e::{chat, require_services, store_tokens, Fleet, KEYS};

const DEV: &str = "mai-fleet/tenant:dev";

fn container(f: &Fleet, id: &str) -> serde_json::Value {
    f.inspect(&format!("mai-{id}"))
        .unwrap_or_else(|| panic!("container mai-{id} is missing"))
}

fn id_and_start(f: &Fleet, id: &str) -> (String, String) {
    let c = container(f, id);
    (
        c["Id"].as_str().unwrap_or_default().to_string(),
        c["State"]["StartedAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn three_tenants_on_two_hosts_come_up_verified_and_recorded() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("up");
    let (a, b, c) = (f.id("a"), f.id("b"), f.id("c"));
    let spec = f.write_spec(&f.spec(&[
        (&a, "a", DEV, ""),
        (&b, "a", DEV, "EXTRA_FLAG: \"on\""),
        (&c, "b", DEV, ""),
    ]));
    let r = f.apply(&spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("3 ok, 0 rolled back, 0 failed"),
        "{}",
        r.stdout
    );

    for (i, (id, host)) in [(&a, "a"), (&b, "a"), (&c, "b")].into_iter().enumerate() {
        let info = container(&f, id);
        let env: Vec<&str> = info["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for want in [
            format!("OPENROUTER_API_KEY={}", KEYS[i]),
            format!("OPENROUTER_EXTERNAL_USER=org_{id}"),
            format!("ORGANIZATION_NAME=Klient {id}"),
            "TZ=Europe/Warsaw".to_string(),
            "DEFAULT_MARKUP_RATE=1.3".to_string(),
            "LOG_LEVEL=INFO".to_string(),
        ] {
            assert!(env.contains(&want.as_str()), "{id}: {want} not in {env:?}");
        }
        assert_eq!(
            env.contains(&"EXTRA_FLAG=on"),
            id == &b,
            "{id}: extras go only where asked"
        );
        let labels = &info["Config"]["Labels"];
        assert_eq!(labels["mai-fleet.managed"], "true");
        assert_eq!(labels["mai-fleet.tenant"], id.as_str());
        assert_eq!(labels["mai-fleet.host"], format!("{}-{host}", f.name));
        assert_eq!(labels["mai-fleet.fleet"], f.name.as_str());
        assert!(labels["mai-fleet.spec-hash"]
            .as_str()
            .unwrap()
            .starts_with("v2-"));
        let hc = &info["HostConfig"];
        let data_dir = f.data_root(host).join(id).join("data");
        assert_eq!(
            hc["Binds"][0],
            format!("{}:/app/backend/data", data_dir.display())
        );
        assert_eq!(hc["Memory"], 128 << 20);
        assert_eq!(hc["NanoCpus"], 500_000_000);
        assert_eq!(hc["RestartPolicy"]["Name"], "unless-stopped");
        let port = f.base_port + i as u16;
        assert_eq!(
            hc["PortBindings"]["8080/tcp"][0]["HostPort"],
            port.to_string()
        );
        assert_eq!(info["State"]["Running"], true);
        let health = f.health(port).expect("health answers");
        assert_eq!(health["initialized"], true, "{id}: {health}");
        assert_eq!(health["client_org_id"], format!("org_{id}"));
        assert!(
            data_dir.join("webui.db").exists(),
            "{id}: no webui.db in {}",
            data_dir.display()
        );
    }

    assert_eq!(
        f.psql("SELECT count(*) || ' ' || min(status) || ' ' || min(actor) FROM apply_runs"),
        "1 succeeded e2e@test"
    );
    assert_eq!(
        f.psql("SELECT count(*) FROM apply_results WHERE action = 'create' AND status = 'ok'"),
        "3"
    );
    assert_eq!(
        f.psql("SELECT string_agg(id || ':' || host, ',' ORDER BY id) FROM tenants"),
        format!("{a}:{0}-a,{b}:{0}-a,{c}:{0}-b", f.name)
    );
}

#[test]
fn second_apply_changes_nothing_and_restarts_nothing() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("noop");
    let (a, b) = (f.id("a"), f.id("b"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, "")]));
    f.apply_ok(&spec, &[]);
    let before = [id_and_start(&f, &a), id_and_start(&f, &b)];

    let plan = f.controller(&["plan", spec.to_str().unwrap()]);
    assert_eq!(
        plan.code,
        0,
        "plan exit 0 = nothing to change: {}",
        plan.all()
    );
    assert!(
        plan.stdout.contains("0 change(s) pending"),
        "{}",
        plan.stdout
    );
    let again = f.apply(&spec, &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(
        again.stdout.matches("unchanged  ok").count(),
        2,
        "{}",
        again.stdout
    );
    assert_eq!(
        [id_and_start(&f, &a), id_and_start(&f, &b)],
        before,
        "a container was replaced or restarted"
    );
    assert_eq!(container(&f, &a)["RestartCount"], 0);
}

#[test]
fn env_change_replaces_only_that_tenant_and_keeps_its_usage() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("envchg");
    let (a, b) = (f.id("a"), f.id("b"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    let port_b = f.base_port + 1;
    for user in ["anna", "piotr", "anna"] {
        chat(port_b, user, "openai/gpt-4o-mini").expect("tenant b answers");
    }
    let b_data = f.data_root("a").join(&b).join("data");
    let tokens_before = store_tokens(&b_data);
    assert!(tokens_before > 0);
    let (a_before, b_before) = (id_and_start(&f, &a), id_and_start(&f, &b));

    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "a", DEV, "LOG_LEVEL: DEBUG")]));
    let plan = f.controller(&["plan", spec.to_str().unwrap()]);
    assert_eq!(
        plan.code,
        2,
        "plan exit 2 = changes pending: {}",
        plan.all()
    );
    assert!(
        plan.stdout
            .lines()
            .any(|l| l.contains(&b) && l.contains("update")),
        "{}",
        plan.stdout
    );
    let r = f.apply(&spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());

    assert_eq!(
        id_and_start(&f, &a),
        a_before,
        "tenant a must not be touched"
    );
    assert_ne!(
        id_and_start(&f, &b).0,
        b_before.0,
        "tenant b must be replaced"
    );
    let env = container(&f, &b)["Config"]["Env"].to_string();
    assert!(env.contains("LOG_LEVEL=DEBUG"), "{env}");
    assert_eq!(
        store_tokens(&b_data),
        tokens_before,
        "usage rows must survive the replacement"
    );
    chat(port_b, "anna", "openai/gpt-4o-mini").expect("new container answers");
    assert!(
        store_tokens(&b_data) > tokens_before,
        "the new container records into the same store"
    );
}

#[test]
fn dropped_tenant_is_kept_then_pruned_with_its_data() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("prune");
    let (a, b) = (f.id("a"), f.id("b"));
    let both = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, "")]));
    f.apply_ok(&both, &[]);
    let only_a = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    let r = f.apply(&only_a, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains(&b) && l.contains("orphan") && l.contains("--prune")),
        "{}",
        r.stdout
    );
    assert!(
        f.inspect(&format!("mai-{b}")).is_some(),
        "without --prune the container stays"
    );

    let r = f.apply(&only_a, &["--prune"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains(&b) && l.contains("remove") && l.contains("data kept")),
        "{}",
        r.stdout
    );
    assert_eq!(f.containers(), vec![format!("mai-{a}")]);
    let b_db = f.data_root("b").join(&b).join("data").join("webui.db");
    assert!(
        b_db.exists(),
        "pruning must keep the data: {}",
        b_db.display()
    );
    assert_eq!(
        f.psql(&format!("SELECT in_spec FROM tenants WHERE id = '{b}'")),
        "f"
    );
}

#[test]
fn failing_new_image_is_rolled_back_and_the_rest_applies() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("rollback");
    let (a, b, c) = (f.id("a"), f.id("b"), f.id("c"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "a", DEV, ""), (&c, "b", DEV, "")]));
    f.apply_ok(&spec, &[]);
    let (a0, b0, c0) = (
        id_and_start(&f, &a).0,
        id_and_start(&f, &b).0,
        id_and_start(&f, &c).0,
    );

    let spec = f.write_spec(&f.spec(&[
        (&a, "a", "mai-fleet/tenant:dev2", ""),
        (&b, "a", "mai-fleet/tenant:crash", ""),
        (&c, "b", "mai-fleet/tenant:uninit", ""),
    ]));
    let r = f.apply(&spec, &[]);
    assert_eq!(r.code, 3, "exit 3 = some tenants failed: {}", r.all());
    assert_eq!(r.stdout.matches("ROLLED BACK").count(), 2, "{}", r.stdout);
    assert!(
        r.stdout.contains("simulated start-up failure"),
        "the failing container's logs are shown: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("usage tracking is not initialized"),
        "{}",
        r.stdout
    );

    assert_ne!(id_and_start(&f, &a).0, a0, "the good update went through");
    assert_eq!(
        container(&f, &a)["Config"]["Image"],
        "mai-fleet/tenant:dev2"
    );
    for (id, old, port) in [(&b, &b0, f.base_port + 1), (&c, &c0, f.base_port + 2)] {
        assert_eq!(
            &id_and_start(&f, id).0,
            old,
            "{id}: the previous container is back"
        );
        assert_eq!(container(&f, id)["State"]["Running"], true);
        let health = f.wait_health(port);
        assert_eq!(
            health.expect("previous container serves")["initialized"],
            true
        );
    }
    assert_eq!(
        f.containers().len(),
        3,
        "no leftover containers: {:?}",
        f.containers()
    );
    assert_eq!(
        f.psql("SELECT status FROM apply_runs ORDER BY id DESC LIMIT 1"),
        "partial"
    );
    assert_eq!(
        f.psql("SELECT count(*) FROM apply_results WHERE status = 'rolled_back'"),
        "2"
    );
}

#[test]
fn spec_with_many_mistakes_is_reported_whole_and_changes_nothing() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("badspec");
    let good = f.spec(&[(&f.id("a"), "a", DEV, ""), (&f.id("b"), "b", DEV, "")]);
    let bad = good
        .replace("markup_rate: 1.3", "markup_rate: 7")
        .replace(
            "timezone: Europe/Warsaw",
            "timezone: Europe/Warszawa\n  colour: blue",
        )
        .replacen("org_id: org_", "org_id: dup", 2)
        .replace("E2E_KEY_1", "E2E_UNSET_KEY")
        .replace("nip: \"5260250274\"", "nip: \"1234567890\"")
        .replace("email: faktury@", "email: faktury.")
        .replace(
            &format!("port: {}", f.base_port),
            &format!("port: {}\n    colour: red", f.base_port),
        )
        .replace("LOG_LEVEL: INFO", "LOG_LEVEL: INFO, OPENROUTER_API_KEY: x")
        .replace(&format!("id: {}", f.id("b")), "id: B")
        .replace("image: mai-fleet/tenant:dev", "image: Mai/Tenant:dev");
    let spec = f.write_spec(&bad);
    let r = f.controller(&["validate", spec.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.all());
    let prefix = format!("{}:", spec.display());
    let located: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| {
            l.strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    assert!(
        located.len() >= 12,
        "expected a dozen located errors, got {}:\n{}",
        located.len(),
        r.stderr
    );
    for l in &located {
        let rest = &l[spec.display().to_string().len() + 1..];
        let mut parts = rest.splitn(3, ':');
        let (line, col) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            line.parse::<u32>().is_ok() && col.parse::<u32>().is_ok(),
            "not file:line:col: {l}"
        );
    }
    let json = f.controller(&["validate", spec.to_str().unwrap(), "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json output");
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), located.len());

    let r = f.apply(&spec, &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("nothing was changed"), "{}", r.stderr);
    assert!(f.containers().is_empty(), "{:?}", f.containers());
    assert_eq!(
        f.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'apply_runs'"),
        "0",
        "not even the database was touched"
    );

    let syntax = f.write_spec("version: 1\nhosts:\n  - name: a\n   docker: [\n");
    let r = f.controller(&["validate", syntax.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!("{}:4:", syntax.display()))
            && r.stderr.contains("YAML syntax error"),
        "{}",
        r.stderr
    );
    let empty = f.write_spec("");
    let r = f.controller(&["validate", empty.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("the file is empty"), "{}", r.stderr);
    let r = f.controller(&["validate", "/nonexistent/tenants.yaml"]);
    assert_eq!(r.code, 2, "unreadable = exit 2: {}", r.all());
}

#[test]
fn no_key_appears_in_any_output_or_database_row() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("secrets");
    let (a, b) = (f.id("a"), f.id("b"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, "")]));
    let p = spec.to_str().unwrap();
    f.controller(&["validate", p, "--output", "json"]);
    f.controller(&["plan", p, "--output", "json"]);
    assert_eq!(f.apply(&spec, &["--output", "json"]).code, 0);
    let failing =
        f.write_spec(&f.spec(&[(&a, "a", "mai-fleet/tenant:crash", ""), (&b, "b", DEV, "")]));
    assert_eq!(f.apply(&failing, &[]).code, 3);
    let wrong_key = f.write_spec(
        &f.spec(&[(&a, "a", DEV, "")])
            .replace("E2E_KEY_0", "E2E_KEY_1")
            .replace(
                "api_key: \"${env:E2E_KEY_1}\"",
                "api_key: \"sk-or-v1-a1a1\"",
            ),
    );
    f.controller(&["validate", wrong_key.to_str().unwrap()]);

    let dump = std::process::Command::new("pg_dump")
        .arg(&f.database_url)
        .output()
        .expect("pg_dump");
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("apply_results"),
        "the dump covers the apply record"
    );
    let transcript = f.transcript.borrow();
    for key in &KEYS[..2] {
        let body = &key["sk-or-v1-".len()..];
        assert!(
            !transcript.contains(body),
            "a key leaked into the controller's output"
        );
        assert!(!dump.contains(body), "a key leaked into the database");
    }
    assert!(
        dump.contains("sk-or-v1-…1a1"),
        "the masked form is what is kept"
    );
}

#[test]
fn apply_killed_at_random_moments_converges() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("kill");
    let (a, b) = (f.id("a"), f.id("b"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, "")]));
    f.apply_ok(&spec, &[]);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    for round in 0..5u32 {
        // Every round changes both tenants, so each kill lands inside an update.
        let spec = f.write_spec(&f.spec(&[
            (&a, "a", DEV, &format!("ROUND: \"{round}\"")),
            (&b, "b", DEV, &format!("ROUND: \"{round}\"")),
        ]));
        let p = spec.to_str().unwrap();
        let mut child = f
            .controller_command(&["apply", p, "--settle", "1s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn apply");
        let delay = (seed.wrapping_mul(2_654_435_761).rotate_left(round * 7) % 2_500) as u64;
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL: no chance to clean up
        let _ = child.wait();
        eprintln!(
            "round {round}: killed after {delay} ms; containers: {:?}",
            f.containers()
        );
    }
    let spec = f.write_spec(&f.spec(&[
        (&a, "a", DEV, "ROUND: \"final\""),
        (&b, "b", DEV, "ROUND: \"final\""),
    ]));
    let r = f.apply(&spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        f.containers(),
        vec![format!("mai-{a}"), format!("mai-{b}")],
        "no duplicates, no leftovers"
    );
    for (id, port) in [(&a, f.base_port), (&b, f.base_port + 1)] {
        assert!(container(&f, id)["Config"]["Env"]
            .to_string()
            .contains("ROUND=final"));
        assert_eq!(f.health(port).expect("serves")["initialized"], true);
    }
    let plan = f.controller(&["plan", spec.to_str().unwrap()]);
    assert_eq!(plan.code, 0, "converged: {}", plan.all());
    assert_eq!(
        f.psql("SELECT count(*) FROM apply_runs WHERE status = 'running'"),
        "0"
    );
}

#[test]
fn failure_budget_stops_a_bad_release_after_the_first_failure() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("budget");
    let ids = [f.id("a"), f.id("b"), f.id("c")];
    let tenants = |image: &'static str| -> Vec<(&str, &str, &str, &str)> {
        ids.iter().map(|id| (id.as_str(), "a", image, "")).collect()
    };
    f.apply_ok(&f.write_spec(&f.spec(&tenants(DEV))), &[]);
    let before: Vec<String> = ids.iter().map(|id| id_and_start(&f, id).0).collect();

    let bad = f.write_spec(&f.spec(&tenants("mai-fleet/tenant:crash")));
    let r = f.apply(&bad, &["--parallel", "1", "--max-failures", "1"]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(
        r.stdout.matches("ROLLED BACK").count(),
        1,
        "one tenant tried: {}",
        r.stdout
    );
    assert_eq!(
        r.stdout.matches("skipped").count(),
        2 + 1,
        "two tenants skipped (plus the summary line): {}",
        r.stdout
    );
    let after: Vec<String> = ids.iter().map(|id| id_and_start(&f, id).0).collect();
    assert_eq!(
        after, before,
        "every tenant still runs its previous container"
    );
    assert_eq!(
        f.psql("SELECT count(*) FROM apply_results WHERE status = 'skipped'"),
        "2"
    );
}

#[test]
fn missing_image_fails_its_tenants_with_the_reason_and_the_rest_applies() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("noimage");
    let (a, b, c) = (f.id("a"), f.id("b"), f.id("c"));
    // A registry on a closed loopback port: the pull is refused at once.
    let missing = "127.0.0.1:1/mai/open-webui:none";
    let spec = f.write_spec(&f.spec(&[
        (&a, "a", DEV, ""),
        (&b, "a", missing, ""),
        (&c, "a", missing, ""),
    ]));
    let r = f.apply(&spec, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(
        r.stderr.matches(&format!("pulling {missing}")).count(),
        1,
        "pulled once per host, not per tenant: {}",
        r.stderr
    );
    for id in [&b, &c] {
        assert!(
            r.stdout.lines().any(|l| l.contains(id.as_str())
                && l.contains("FAILED")
                && l.contains("is not on host")
                && l.contains("pulling it failed")),
            "{}",
            r.stdout
        );
    }
    assert_eq!(f.containers(), vec![format!("mai-{a}")]);
}

/// Bug: after an apply was killed with the old container parked (stopped, renamed),
/// a failing release rolled back to it but left it stopped: the tenant served and
/// tracked nothing.
#[test]
fn rollback_after_an_interrupted_apply_leaves_the_tenant_running() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("parked");
    let id = f.id("a");
    f.apply_ok(&f.write_spec(&f.spec(&[(&id, "a", DEV, "")])), &[]);
    // What a kill between parking and creating leaves behind.
    let docker = |args: &[&str]| {
        assert!(std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap()
            .status
            .success())
    };
    docker(&["stop", &format!("mai-{id}")]);
    docker(&[
        "rename",
        &format!("mai-{id}"),
        &format!("mai-{id}.prev-0123456789ab"),
    ]);

    let bad = f.write_spec(&f.spec(&[(&id, "a", "mai-fleet/tenant:crash", "")]));
    let r = f.apply(&bad, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stdout.contains("ROLLED BACK"), "{}", r.stdout);
    assert_eq!(
        container(&f, &id)["State"]["Running"],
        true,
        "the previous container serves again"
    );
    let health = f.wait_health(f.base_port);
    assert_eq!(health.expect("serves")["initialized"], true);
    assert_eq!(f.containers(), vec![format!("mai-{id}")]);
}
