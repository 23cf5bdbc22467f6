//! Day-2 operations (issue 13) against the real engine and database: drift that
//! `plan` sees and `apply` fixes, and a plan that says what changes.

use std::path::Path;
use std::process::Command;

use mai_fleet_e2e::{require_services, Fleet};
use serde_json::Value;

const DEV: &str = "mai-fleet/tenant:dev";

fn docker_json(args: &[&str]) -> Value {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("docker json")
}

/// The update actions of a `plan --output json`.
fn updates(plan: &Value) -> Vec<Value> {
    plan["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["actions"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["action"] == "update")
        .collect()
}

fn alert_state(f: &Fleet, rule: &str, tenant: &str) -> Option<String> {
    let out = f.controller(&["alerts", "list", "--all", "--output", "json"]);
    let list: Vec<Value> = serde_json::from_str(&out.stdout).expect("alerts json");
    list.into_iter()
        .find(|a| a["rule"] == rule && a["tenant_id"] == tenant)
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

fn evaluate(f: &Fleet, config: &Path) {
    f.evaluate_alerts(config, None);
}

/// Issue 13's reproduction: the container is replaced by hand the way a hurried
/// operator would, every label copied (spec hash included), every setting the
/// same, but OPENROUTER_EXTERNAL_USER left out. Before, `plan` said nothing to
/// change and `apply` left the tenant untracked.
#[test]
fn a_container_replaced_by_hand_with_copied_labels_is_drift_that_apply_fixes() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("drift");
    let id = f.id("t1");
    let spec = f.write_spec(&f.spec(&[(&id, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    let config = f.dir.join("alerts.yaml");
    std::fs::write(
        &config,
        "rules:\n  exchange_rate_missing: { enabled: false }\n",
    )
    .unwrap();

    let name = format!("mai-{id}");
    let old = &docker_json(&["inspect", &name])[0];
    let labels = old["Config"]["Labels"].as_object().expect("labels").clone();
    let env: Vec<String> = old["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(Value::as_str)
        .filter(|kv| !kv.starts_with("OPENROUTER_EXTERNAL_USER="))
        .map(str::to_string)
        .collect();
    let host = &old["HostConfig"];
    let bind = host["Binds"][0].as_str().expect("bind").to_string();
    let network = host["NetworkMode"].as_str().expect("network").to_string();
    assert!(Command::new("docker")
        .args(["rm", "-f", &name])
        .output()
        .unwrap()
        .status
        .success());
    let mut run = Command::new("docker");
    run.args(["run", "-d", "--name", &name, "--network", &network])
        .args([
            "-p",
            &format!("127.0.0.1:{}:8080", f.base_port),
            "-v",
            &bind,
        ])
        .args(["--memory", "128m", "--cpus", "0.5", "--pids-limit", "512"])
        .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
        .args(["--restart", "unless-stopped"]);
    for (k, v) in &labels {
        run.args([
            "--label",
            &format!("{k}={}", v.as_str().unwrap_or_default()),
        ]);
    }
    for e in &env {
        run.args(["-e", e]);
    }
    let started = run.arg(DEV).output().unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(f.wait_health(f.base_port).is_some());

    // The agent sees what the label hides; the alert fires.
    f.agent_once("a");
    for _ in 0..2 {
        evaluate(&f, &config);
    }
    assert_eq!(
        alert_state(&f, "tracking_inactive", &id).as_deref(),
        Some("firing")
    );

    let plan = f.controller(&["plan", spec.to_str().unwrap()]);
    assert_eq!(plan.code, 2, "drift is a change pending: {}", plan.all());
    assert!(
        plan.stdout.contains("drift") && plan.stdout.contains("env OPENROUTER_EXTERNAL_USER added"),
        "{}",
        plan.stdout
    );
    let json: Value = serde_json::from_str(
        &f.controller(&["plan", spec.to_str().unwrap(), "--output", "json"])
            .stdout,
    )
    .unwrap();
    let ups = updates(&json);
    assert_eq!(ups.len(), 1, "{json}");
    assert_eq!(ups[0]["drift"], true);
    assert_eq!(
        ups[0]["changes"],
        serde_json::json!([{"field": "env", "name": "OPENROUTER_EXTERNAL_USER", "change": "added", "to": format!("org_{id}")}]),
        "only what differs: {json}"
    );

    let applied = f.apply(&spec, &[]);
    assert_eq!(applied.code, 0, "{}", applied.all());
    let fixed = &docker_json(&["inspect", &name])[0];
    assert!(fixed["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e.as_str() == Some(&format!("OPENROUTER_EXTERNAL_USER=org_{id}"))));
    assert!(f.wait_health(f.base_port).is_some());
    f.agent_once("a");
    evaluate(&f, &config);
    assert_eq!(
        alert_state(&f, "tracking_inactive", &id).as_deref(),
        Some("resolved")
    );
    assert_eq!(f.controller(&["plan", spec.to_str().unwrap()]).code, 0);
}

/// An env change: the plan names each variable and says `changed`; a secret's
/// value (old or new) appears nowhere; JSON lists each field change.
#[test]
fn an_env_change_is_planned_by_name_and_a_secret_value_is_never_shown() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("envdiff");
    let id = f.id("t1");
    let (old_secret, new_secret) = ("old-smtp-password-1234", "new-smtp-password-5678");
    let env = |level: &str| format!("LOG_LEVEL: {level}, SMTP_PASSWORD: \"${{env:E2E_SMTP}}\"");
    let spec = f.write_spec(&f.spec(&[(&id, "a", DEV, &env("INFO"))]));
    let run = |args: &[&str], secret: &str| {
        let out: mai_fleet_e2e::RunResult = f
            .controller_command(args)
            .env("E2E_SMTP", secret)
            .output()
            .unwrap()
            .into();
        out
    };
    let first = run(
        &["apply", spec.to_str().unwrap(), "--settle", "1s"],
        old_secret,
    );
    assert_eq!(first.code, 0, "{}", first.all());
    f.write_spec(&f.spec(&[(&id, "a", DEV, &env("DEBUG"))]));

    let plan = run(&["plan", spec.to_str().unwrap()], new_secret);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout.contains("env LOG_LEVEL changed (-> DEBUG)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("env SMTP_PASSWORD changed (secret)"),
        "{}",
        plan.stdout
    );
    let json_out = run(
        &["plan", spec.to_str().unwrap(), "--output", "json"],
        new_secret,
    );
    let json: Value = serde_json::from_str(&json_out.stdout).unwrap();
    let ups = updates(&json);
    assert_eq!(
        ups[0]["changes"],
        serde_json::json!([
            {"field": "env", "name": "LOG_LEVEL", "change": "changed", "to": "DEBUG"},
            {"field": "env", "name": "SMTP_PASSWORD", "change": "changed", "secret": true},
        ]),
        "{json}"
    );
    for out in [&plan, &json_out] {
        let all = out.all();
        assert!(
            !all.contains(old_secret) && !all.contains(new_secret),
            "a secret leaked: {all}"
        );
        assert!(
            !all.contains(&mai_fleet_e2e::key(0)),
            "the key leaked: {all}"
        );
    }
}

fn spec_arg(spec: &Path) -> String {
    spec.display().to_string()
}

/// `logs -f` follows, masking the key the app prints; `exec` runs and is recorded;
/// a new image that verifies but is bad is rolled back with `rollback`, verified and
/// recorded, and `plan` shows the tenant differing from the file.
#[test]
fn logs_follow_exec_is_recorded_and_a_bad_image_is_rolled_back() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("tenantops");
    let id = f.id("t1");
    let spec = f.write_spec(&f.spec(&[(&id, "a", DEV, "LOG_LEVEL: DEBUG")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());

    // logs -f: a chat made after it started shows up, with the key masked.
    let mut follow = f
        .controller_command(&["logs", &id, "-f", "--tail", "0", "--spec", &spec_arg(&spec)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    mai_fleet_e2e::chat(f.base_port, "zofia", "openai/gpt-4o-mini").expect("chat");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline
        && !seen
            .iter()
            .any(|l: &String| l.contains("DEBUG: called OpenRouter"))
    {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.iter().any(|l| l.contains("user=zofia")),
        "followed: {seen:?}"
    );
    let key_line = seen
        .iter()
        .find(|l| l.contains("DEBUG: called OpenRouter"))
        .expect("the key line");
    assert!(
        key_line.contains("•••") && !key_line.contains(&mai_fleet_e2e::key(0)),
        "{key_line}"
    );

    // exec, recorded with who and what.
    let exec = f.controller(&[
        "exec",
        &id,
        "--spec",
        &spec_arg(&spec),
        "--",
        "/mai-tenant",
        "connect",
        "127.0.0.1:8080",
    ]);
    assert_eq!(exec.code, 0, "{}", exec.all());
    assert!(
        exec.stdout.contains("connected to 127.0.0.1:8080"),
        "{}",
        exec.stdout
    );
    let failing = f.controller(&[
        "exec",
        &id,
        "--spec",
        &spec_arg(&spec),
        "--",
        "/mai-tenant",
        "connect",
        "127.0.0.1:1",
    ]);
    assert_eq!(
        failing.code,
        1,
        "the command's own exit code: {}",
        failing.all()
    );
    assert_eq!(
        f.psql(&format!("SELECT string_agg(actor || ' ' || array_to_string(command, ' ') || ' -> ' || exit_code, ' | ' ORDER BY id) FROM tenant_operations WHERE tenant_id = '{id}' AND kind = 'exec'")),
        "e2e@test /mai-tenant connect 127.0.0.1:8080 -> 0 | e2e@test /mai-tenant connect 127.0.0.1:1 -> 1"
    );

    // A new image that passes verification (the "bad" release), then the rollback.
    let first_run = f.psql("SELECT max(id) FROM apply_runs");
    f.write_spec(&f.spec(&[(&id, "a", "mai-fleet/tenant:dev2", "LOG_LEVEL: DEBUG")]));
    f.apply_ok(&spec, &[]);
    let image = || {
        docker_json(&["inspect", &format!("mai-{id}")])[0]["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(image(), "mai-fleet/tenant:dev2");
    let rollback = f.controller(&[
        "rollback",
        &id,
        "--spec",
        &spec_arg(&spec),
        "--settle",
        "1s",
    ]);
    assert_eq!(rollback.code, 0, "{}", rollback.all());
    assert!(
        rollback
            .stderr
            .contains(&format!("rollback to run #{first_run}")),
        "{}",
        rollback.stderr
    );
    assert_eq!(image(), DEV, "the previous image runs again");
    assert!(f.wait_health(f.base_port).is_some(), "and serves");
    let history: Vec<Value> =
        serde_json::from_str(&f.controller(&["history", &id, "--output", "json"]).stdout).unwrap();
    let kinds: Vec<String> = history
        .iter()
        .map(|h| {
            format!(
                "{} {} {}",
                h["kind"].as_str().unwrap_or(""),
                h["image"].as_str().unwrap_or("-"),
                h["status"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(kinds[0], format!("rollback {DEV} ok"), "{kinds:?}");
    assert!(
        kinds.contains(&"apply mai-fleet/tenant:dev2 ok".to_string()),
        "{kinds:?}"
    );
    assert!(kinds.contains(&format!("apply {DEV} ok")), "{kinds:?}");
    // The file is still the truth: plan shows the way back to it, and why.
    let plan = f.controller(&["plan", &spec_arg(&spec)]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout
            .contains(&format!("image {DEV} -> mai-fleet/tenant:dev2")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!(
            "note: {id} runs the revision of apply run #{first_run}"
        )),
        "{}",
        plan.stdout
    );
    // A rollback to a run that never launched the tenant says which runs did.
    let wrong = f.controller(&["rollback", &id, "--to", "99999", "--spec", &spec_arg(&spec)]);
    assert_eq!(wrong.code, 1);
    assert!(
        wrong
            .stderr
            .contains("run #99999 did not launch this tenant"),
        "{}",
        wrong.stderr
    );
}

use mai_fleet_e2e::store_org_tokens as store_tokens;

/// One `controller backup TENANT --output json`: where the backup went, its
/// manifest, and the store's tokens just before and just after it.
struct Taken {
    path: std::path::PathBuf,
    manifest: Value,
    before: i64,
    after: i64,
}

fn take_backup(
    f: &Fleet,
    tenant: &str,
    org: &str,
    data: &Path,
    backups: &Path,
    spec: &Path,
) -> Taken {
    let before = store_tokens(data, org);
    let out = f.controller(&[
        "backup",
        tenant,
        "--dir",
        &backups.display().to_string(),
        "--spec",
        &spec_arg(spec),
        "--output",
        "json",
    ]);
    let after = store_tokens(data, org);
    assert_eq!(out.code, 0, "{}", out.all());
    let taken: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    Taken {
        path: std::path::PathBuf::from(taken[0]["path"].as_str().unwrap()),
        manifest: taken[0]["manifest"].clone(),
        before,
        after,
    }
}

fn fleet_tokens(f: &Fleet, tenant: &str) -> i64 {
    f.psql(&format!(
        "SELECT coalesce(sum(total_tokens), 0) FROM usage_daily WHERE tenant_id = '{tenant}'"
    ))
    .parse()
    .unwrap()
}

/// A backup taken while the tenant writes under load is a sound SQLite file holding
/// the store's sums of that moment; a restore then raises no `store_regression` and
/// leaves the fleet's history as it was (a store reset by hand does raise it); a
/// tenant never backed up raises `backup_missing`.
#[test]
fn a_backup_under_load_restores_without_a_regression_alert_and_missing_backups_alert() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("backup");
    let (a, b) = (f.id("a"), f.id("b"));
    let load = "SIM_USAGE_PER_MIN: \"1200\"";
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, load), (&b, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    let data = f.data_root("a").join(&a).join("data");
    std::fs::create_dir_all(data.join("uploads/chat-1")).unwrap();
    std::fs::write(
        data.join("uploads/chat-1/report.pdf"),
        b"%PDF-1.4 client file",
    )
    .unwrap();
    // The directory is the tenant's: a link out of it and a FIFO (which blocks
    // whoever opens it) must be neither followed nor read.
    std::os::unix::fs::symlink("/etc", data.join("uploads/escape")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(data.join("uploads/pipe"))
        .status()
        .unwrap()
        .success());
    std::fs::create_dir_all(data.join("cache/embeddings")).unwrap();
    std::fs::write(data.join("cache/embeddings/x.bin"), vec![0u8; 4096]).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    f.agent_once("a");
    let backups = f.dir.join("backups");

    let org = format!("org_{a}");
    let Taken {
        path,
        manifest,
        before,
        after,
    } = take_backup(&f, &a, &org, &data, &backups, &spec);
    let manifest = &manifest;
    assert!(
        after > before,
        "the tenant was writing during the backup ({before} -> {after})"
    );
    let tokens = manifest["tokens"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&tokens),
        "{before} <= {tokens} <= {after}"
    );
    assert_eq!(mai_fleet_e2e::store_integrity(&path), "ok");
    assert_eq!(
        store_tokens(&path, &org),
        tokens,
        "the manifest's sums are the copy's"
    );
    assert!(
        path.join("uploads/chat-1/report.pdf").is_file(),
        "uploads are kept"
    );
    assert!(!path.join("cache").exists(), "caches are left out");
    assert!(
        std::fs::symlink_metadata(path.join("uploads/escape")).is_err()
            && std::fs::symlink_metadata(path.join("uploads/pipe")).is_err(),
        "neither the link out of the tenant's directory nor the FIFO is copied"
    );

    // More usage, then the restore: the store goes back to the backup.
    std::thread::sleep(std::time::Duration::from_secs(2));
    f.agent_once("a");
    let fleet_before = fleet_tokens(&f, &a);
    assert!(fleet_before > tokens);
    let restored = f.restore(&a, &path, &spec, &[]);
    assert_eq!(restored.code, 0, "{}", restored.all());
    assert!(f.wait_health(f.base_port).is_some());
    // b's store is reset by hand: that one is a regression to be told about.
    let b_db = f.data_root("a").join(&b).join("data").join("webui.db");
    mai_fleet_e2e::chat(f.base_port + 1, "jan", "openai/gpt-4o-mini").unwrap();
    f.agent_once("a");
    let conn = rusqlite::Connection::open(&b_db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute_batch("DELETE FROM client_daily_usage; DELETE FROM client_user_daily_usage; DELETE FROM client_model_daily_usage;").unwrap();
    drop(conn);
    f.agent_once("a");
    assert!(
        fleet_tokens(&f, &a) >= fleet_before,
        "the fleet keeps its history"
    );
    let regressions = f.psql(&format!(
        "SELECT count(*) FROM store_regressions WHERE tenant_id = '{a}'"
    ));
    assert_ne!(regressions, "0", "the agent did see the store go back");
    let config = f.dir.join("alerts.yaml");
    std::fs::write(
        &config,
        "rules:\n  exchange_rate_missing: { enabled: false }\n",
    )
    .unwrap();
    // Both tenants were applied two days ago, as far as the rule can tell.
    f.psql("UPDATE tenants SET created_at = now() - interval '2 days'");
    f.evaluate_alerts(&config, Some(&backups));
    assert_eq!(
        alert_state(&f, "store_regression", &a),
        None,
        "restored on purpose"
    );
    assert_eq!(
        alert_state(&f, "store_regression", &b).as_deref(),
        Some("firing"),
        "reset by hand"
    );
    assert_eq!(
        alert_state(&f, "backup_missing", &b).as_deref(),
        Some("firing"),
        "never backed up"
    );
    assert_eq!(
        alert_state(&f, "backup_missing", &a),
        None,
        "backed up a minute ago"
    );
    let restores = f.psql(&format!(
        "SELECT count(*) FROM tenant_restores WHERE tenant_id = '{a}'"
    ));
    assert_eq!(restores, "1");
}

/// A tenant on a remote host (the local engine behind a TLS endpoint: to the
/// controller a remote one, its data directory out of reach) is backed up and
/// restored through its engine: paused for the copy and resumed, a sound copy of
/// that moment; the restore puts it back with nothing of the replaced store's
/// journals replayed onto it.
#[test]
fn a_remote_hosts_tenant_is_backed_up_and_restored_through_its_engine() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("remotebackup");
    let certs = f.dir.join("tls");
    mai_fleet_e2e::tls::make_certs(&certs);
    let port = f.base_port + 15;
    let _proxy = mai_fleet_e2e::tls::start_proxy(&certs, port);
    let a = f.id("a");
    let load = "SIM_USAGE_PER_MIN: \"1200\"";
    let spec = f.write_spec(&mai_fleet_e2e::tls::over_tls(
        &f.spec(&[(&a, "a", DEV, load)]),
        &certs,
        port,
        "client",
    ));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    // The test can look at the directory; the controller goes through the engine.
    let data = f.data_root("a").join(&a).join("data");
    std::fs::create_dir_all(data.join("uploads")).unwrap();
    std::fs::write(data.join("uploads/offer.txt"), b"oferta").unwrap();
    std::fs::create_dir_all(data.join("cache")).unwrap();
    std::fs::write(data.join("cache/tmp.bin"), b"cache").unwrap();
    std::os::unix::fs::symlink("/etc", data.join("uploads/etc")).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let backups = f.dir.join("backups");
    let org = format!("org_{a}");
    let Taken {
        path,
        manifest,
        before,
        after,
    } = take_backup(&f, &a, &org, &data, &backups, &spec);
    let tokens = manifest["tokens"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&tokens),
        "{before} <= {tokens} <= {after}"
    );
    assert_eq!(manifest["integrity"], "ok");
    assert_eq!(store_tokens(&path, &org), tokens);
    assert!(path.join("uploads/offer.txt").is_file() && !path.join("cache").exists());
    // The engine's archive names the link; the backup counts it and leaves it out.
    assert_eq!(manifest["skipped"]["links"], 1, "{manifest}");
    assert!(std::fs::symlink_metadata(path.join("uploads/etc")).is_err());
    let state = &docker_json(&["inspect", &format!("mai-{a}")])[0]["State"];
    assert_eq!(state["Paused"], false, "resumed after the copy");
    assert_eq!(state["Running"], true);

    std::thread::sleep(std::time::Duration::from_secs(2));
    let grown = store_tokens(&data, &org);
    assert!(grown > tokens);
    let restored = f.restore(&a, &path, &spec, &[]);
    assert_eq!(restored.code, 0, "{}", restored.all());
    let now = store_tokens(&data, &org);
    assert!(
        now >= tokens && now < grown,
        "the store went back to the backup: {tokens} <= {now} < {grown}"
    );
    assert_eq!(mai_fleet_e2e::store_integrity(&data), "ok");
    assert!(
        std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(".pre-restore-")),
        "what was replaced is kept beside the backups"
    );
    assert_eq!(
        f.psql(&format!("SELECT string_agg(kind || ':' || status, ',' ORDER BY id) FROM tenant_operations WHERE tenant_id = '{a}'")),
        "backup:ok,restore:ok"
    );
}

/// `restart` restarts the tenant's container, verifies it as a launch is, and records
/// who did it and how it ended.
#[test]
fn a_restart_is_verified_and_recorded() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("restart");
    let a = f.id("a");
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    let started = |f: &Fleet| f.inspect(&format!("mai-{a}")).unwrap()["State"]["StartedAt"].clone();
    let before = started(&f);
    let out = f.controller(&["restart", &a, "--spec", &spec_arg(&spec), "--settle", "1s"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr.contains("usage tracking initialized"),
        "{}",
        out.all()
    );
    assert_ne!(started(&f), before, "the container was restarted");
    assert_eq!(
        f.psql(&format!("SELECT kind || ':' || status || ':' || actor FROM tenant_operations WHERE tenant_id = '{a}'")),
        "restart:ok:e2e@test"
    );
}
