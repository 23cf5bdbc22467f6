//! A tenant's data directory and its strings are hostile (issue 19): each attack a
//! tenant on the controller's own engine can make against backup, restore and the
//! quoting of its output, on the real engine and database.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mai_fleet_e2e::{require_services, Fleet, RunResult};
use serde_json::Value;

const DEV: &str = "mai-fleet/tenant:dev";

fn spec_arg(spec: &Path) -> String {
    spec.display().to_string()
}

/// `controller backup TENANT|--all --output json`, killed if it runs past `limit`:
/// its result, or `None` when it had to be killed.
fn backup_within(
    f: &Fleet,
    target: &[&str],
    backups: &Path,
    spec: &Path,
    limit: Duration,
) -> Option<(RunResult, Duration)> {
    let mut args = vec!["backup"];
    args.extend_from_slice(target);
    let (dir, spec) = (backups.display().to_string(), spec_arg(spec));
    args.extend_from_slice(&["--dir", &dir, "--spec", &spec, "--output", "json"]);
    let started = Instant::now();
    let mut child = f
        .controller_command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backup");
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return Some((out.into(), started.elapsed()));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One tenant's backup, which must succeed: its directory.
fn backup_ok(f: &Fleet, tenant: &str, backups: &Path, spec: &Path) -> PathBuf {
    let (out, _) = backup_within(f, &[tenant], backups, spec, Duration::from_secs(120))
        .expect("backup in time");
    assert_eq!(out.code, 0, "{}", out.all());
    let taken: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    PathBuf::from(taken[0]["path"].as_str().unwrap())
}

use mai_fleet_e2e::store_org_tokens as store_tokens;

/// Names in `dir` starting with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The tenant plants `.pre-restore-x/planted.txt`, waits for a backup to copy it,
/// then swaps the folder for a link to a directory of the controller's machine. The
/// restore must write nothing through that link.
#[test]
fn a_planted_keep_aside_folder_never_steers_a_restore() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("planted");
    let a = f.id("a");
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    let data = f.data_root("a").join(&a).join("data");
    let planted = data.join(".pre-restore-x");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(planted.join("planted.txt"), b"written by the tenant").unwrap();
    let backups = f.dir.join("backups");
    let path = backup_ok(&f, &a, &backups, &spec);

    let outside = f.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::remove_dir_all(&planted).unwrap();
    std::os::unix::fs::symlink(&outside, &planted).unwrap();
    let restored = f.restore(&a, &path, &spec, &[]);
    assert_eq!(restored.code, 0, "{}", restored.all());
    assert!(
        !outside.join("planted.txt").exists(),
        "the restore wrote through the tenant's link into {}",
        outside.display()
    );
    let meta = std::fs::symlink_metadata(&planted).unwrap();
    assert!(
        meta.is_dir(),
        "the link was replaced by the backed-up folder"
    );
    assert!(
        named(&data, ".pre-restore-2").is_empty(),
        "what a restore replaces is kept outside the tenant's directory"
    );
    let kept = named(&backups.join(&a), ".pre-restore-");
    assert_eq!(kept.len(), 1, "kept beside the backups: {kept:?}");
    assert_eq!(
        std::fs::metadata(&kept[0]).unwrap().permissions().mode() & 0o7777,
        0o700
    );
}

/// During a restore that fails verification, the tenant swaps whatever was kept
/// aside inside its directory for a link to a directory of the controller's
/// machine: the put-back must not move that directory's files into the tenant's.
#[test]
fn a_swapped_keep_aside_copy_is_never_put_back_through_a_link() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("swapped");
    let a = f.id("a");
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    let org = format!("org_{a}");
    let data = f.data_root("a").join(&a).join("data");
    let backups = f.dir.join("backups");
    let path = backup_ok(&f, &a, &backups, &spec);
    mai_fleet_e2e::chat(f.base_port, "jan", "openai/gpt-4o-mini").unwrap();
    let grown = store_tokens(&data, &org);
    std::fs::write(data.join("notes.txt"), b"the tenant's own").unwrap();

    let outside = f.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"the controller's").unwrap();
    // The attacker: swaps any keep-aside folder that shows up in its directory.
    let watcher = {
        let (data, outside) = (data.clone(), outside.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if let Some(kept) = named(&data, ".pre-restore-").first() {
                    let _ = std::fs::rename(kept, data.join(".moved"));
                    std::os::unix::fs::symlink(&outside, kept).unwrap();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    // A settle period longer than the time allowed: verification cannot pass.
    let restored = f.restore(
        &a,
        &path,
        &spec,
        &["--settle", "20s", "--verify-timeout", "4s"],
    );
    let swapped = watcher.join().unwrap();
    assert_eq!(restored.code, 3, "{}", restored.all());
    assert!(
        outside.join("secret.txt").is_file(),
        "the put-back moved a file of the controller's machine (swapped: {swapped})"
    );
    assert!(!data.join("secret.txt").exists());
    assert!(
        !swapped,
        "nothing of a restore is kept inside the tenant's directory"
    );
    assert_eq!(
        std::fs::read(data.join("notes.txt")).unwrap(),
        b"the tenant's own"
    );
    assert!(
        store_tokens(&data, &org) >= grown,
        "what served before is back"
    );
}

/// Backups hold every client's conversations: the operator's alone, and a tenant's
/// setuid file is never a setuid file of the controller's machine.
#[test]
fn a_backup_is_the_operators_alone_and_keeps_no_setuid_bit() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("modes");
    let a = f.id("a");
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    let data = f.data_root("a").join(&a).join("data");
    std::fs::create_dir_all(data.join("uploads/tools")).unwrap();
    let tool = data.join("uploads/tools/tool");
    std::fs::write(&tool, b"#!/bin/sh\nid\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o6755)).unwrap();
    std::fs::set_permissions(
        data.join("uploads"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    let backups = f.dir.join("backups");
    let path = backup_ok(&f, &a, &backups, &spec);
    assert!(path.join("uploads/tools/tool").is_file());
    let mut seen = 0;
    let mut stack = vec![backups.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}: {mode:o}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}: {mode:o}", p.display());
        }
        seen += 1;
    }
    assert!(seen >= 6, "{seen} entries looked at");
}

/// One tenant's store is a trap (its usage table a recursive view, which never
/// ends): its backup fails with the reason within the budget, the other tenant is
/// backed up in the same run, and `backup_missing` names the trapped one.
#[test]
fn a_hostile_store_fails_its_own_backup_and_the_run_goes_on() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("viewstore");
    let (a, b) = (f.id("a"), f.id("b"));
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, ""), (&b, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    let db = f.data_root("a").join(&a).join("data/webui.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(
        "DROP TABLE client_daily_usage;
         CREATE VIEW client_daily_usage AS
           WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)
           SELECT printf('org-%d', n) AS client_org_id, '2026-01-01' AS usage_date, n AS total_tokens,
                  0.0 AS raw_cost, 0 AS request_count FROM r;",
    )
    .unwrap();
    drop(conn);
    let backups = f.dir.join("backups");
    let (out, took) = backup_within(&f, &["--all"], &backups, &spec, Duration::from_secs(120))
        .expect("backup --all did not finish within 120 s");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_eq!(out.code, 3, "{}", out.all());
    let results: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let of = |t: &str| results.iter().find(|r| r["tenant"] == t).cloned().unwrap();
    let why = of(&a)["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("view"), "{why}");
    assert!(of(&b)["path"].is_string(), "{}", of(&b));
    assert!(
        named(&backups.join(&a), ".").is_empty(),
        "nothing partial is left"
    );
    assert_eq!(
        f.psql("SELECT string_agg(tenant_id || ':' || status, ',' ORDER BY tenant_id) FROM tenant_operations WHERE kind = 'backup'"),
        format!("{a}:failed,{b}:ok")
    );
    let config = f.dir.join("alerts.yaml");
    std::fs::write(
        &config,
        "rules:\n  exchange_rate_missing: { enabled: false }\n",
    )
    .unwrap();
    f.psql("UPDATE tenants SET created_at = now() - interval '2 days'");
    f.evaluate_alerts(&config, Some(&backups));
    let firing = f.psql(
        "SELECT coalesce(string_agg(tenant_id, ','), '') FROM alerts WHERE rule = 'backup_missing' AND state = 'firing'",
    );
    assert_eq!(firing, a);
}

/// A sparse 1 TB file in the tenant's uploads: the backup stops at its size budget
/// with the figures, leaves nothing partial, and the tenant keeps running.
#[test]
fn a_backup_past_its_budget_fails_with_the_figures_and_leaves_nothing() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("budget");
    let a = f.id("a");
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    let data = f.data_root("a").join(&a).join("data");
    std::fs::create_dir_all(data.join("uploads")).unwrap();
    let huge = std::fs::File::create(data.join("uploads/huge.bin")).unwrap();
    huge.set_len(1 << 40).unwrap();
    drop(huge);
    let backups = f.dir.join("backups");
    let result = backup_within(&f, &[&a], &backups, &spec, Duration::from_secs(30));
    let _ = std::fs::remove_file(data.join("uploads/huge.bin"));
    let (out, _) = result.expect("the backup ran past 30 s");
    assert_eq!(out.code, 3, "{}", out.all());
    let results: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let why = results[0]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("budget") && why.contains("1099511627776"),
        "{why}"
    );
    assert!(
        named(&backups.join(&a), "").is_empty(),
        "nothing partial is left"
    );
    let state = &f.inspect(&format!("mai-{a}")).unwrap()["State"];
    assert_eq!(
        (state["Running"].clone(), state["Paused"].clone()),
        (Value::Bool(true), Value::Bool(false))
    );
}

/// A restore puts back only what the fleet backed up: a store changed after the
/// backup, or a backup the fleet never recorded, is refused unless the operator
/// says `--unverified`, and then it says what it did not check.
#[test]
fn a_tampered_or_unrecorded_backup_is_refused() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("tampered");
    let a = f.id("a");
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    let backups = f.dir.join("backups");
    let path = backup_ok(&f, &a, &backups, &spec);
    // An unrecorded copy of a sound backup.
    let forged = f.dir.join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    for name in ["webui.db", "manifest.json"] {
        std::fs::copy(path.join(name), forged.join(name)).unwrap();
    }
    let refused = f.restore(&a, &forged, &spec, &[]);
    assert_ne!(refused.code, 0, "{}", refused.all());
    assert!(
        refused.stderr.contains("not a backup the fleet recorded"),
        "{}",
        refused.all()
    );

    let conn = rusqlite::Connection::open(path.join("webui.db")).unwrap();
    // Any change to the store after the backup: here its header's user version.
    conn.pragma_update(None, "user_version", 4242).unwrap();
    drop(conn);
    let refused = f.restore(&a, &path, &spec, &[]);
    assert_ne!(refused.code, 0, "{}", refused.all());
    assert!(refused.stderr.contains("SHA-256"), "{}", refused.all());
    let ops = f.psql(&format!(
        "SELECT count(*) FROM tenant_operations WHERE tenant_id = '{a}' AND kind = 'restore'"
    ));
    assert_eq!(ops, "0", "nothing was stopped or replaced");

    let forced = f.restore(&a, &forged, &spec, &["--unverified"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    assert!(forced.stderr.contains("not checked"), "{}", forced.all());
}

/// `sslmode=require` checks no certificate, and libpq obeys the last of two
/// `sslmode`s: both refused where an agent's database URL is written.
#[test]
fn agent_database_urls_that_check_no_certificate_are_refused() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("sslmode");
    let a = f.id("a");
    let ca = f.dir.join("db-ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (url, what) in [
        (
            "postgres://db.internal:5432/mai_fleet?sslmode=require",
            "sslmode=require",
        ),
        (
            "postgres://db.internal:5432/mai_fleet?sslmode=verify-full&sslmode=disable",
            "sslmode",
        ),
        (
            "postgres://db.internal:5432/mai_fleet?ssl-mode=disable&sslmode=verify-full",
            "ssl-mode",
        ),
    ] {
        let mut text = f.spec(&[(&a, "a", DEV, "")]);
        text.push_str(&format!(
            "agents: {{ database_url: \"{url}\", ca_file: {} }}\n",
            ca.display()
        ));
        let spec = f.write_spec(&text);
        let out = f.controller(&["validate", &spec_arg(&spec)]);
        assert_eq!(out.code, 1, "{url}: {}", out.all());
        assert!(out.all().contains(what), "{url}: {}", out.all());
        let line = text.lines().count();
        assert!(
            out.all().contains(&format!("tenants.yaml:{line}:")),
            "{url}: {}",
            out.all()
        );
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("process {pid} holds no memory: it has exited"))
}

/// User names of 1.9 MB at the login: refused before they are counted, and the
/// dashboard's memory does not grow with them; the per-user limit still holds.
#[test]
fn huge_user_names_at_the_login_cost_the_dashboard_nothing() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("loginmem");
    f.add_user("admin", "a-long-enough-password");
    let port = f.base_port + 10;
    let server = f.serve_dashboard(port, &[("MAI_FLEET_LOGIN_LIMIT_ADDRESS", "1000/15m")]);
    let pid = server.0.id();
    let before = rss_kb(pid);
    for i in 0..30 {
        let body = format!(
            "name={i}{}&password=wrong&csrf=x&next=/",
            "x".repeat(1_900_000)
        );
        let r = mai_fleet_e2e::http_full(
            port,
            "POST",
            "/login",
            Some(&body),
            &[("Content-Type", "application/x-www-form-urlencoded")],
        );
        // Refused before it is read: 413, or the connection closed on the sender.
        let status = r.map(|r| r.status);
        assert!(matches!(status, None | Some(413)), "{status:?}");
    }
    let grown = rss_kb(pid).saturating_sub(before);
    assert!(
        grown < 20_000,
        "the dashboard grew by {grown} kB for 30 names"
    );
    let (r, session) = mai_fleet_e2e::dashboard::login(port, "admin", "a-long-enough-password");
    assert!(session.is_some(), "{}", r.status);
}

/// A tenant that fails verification prints a 100 kB line with escape sequences and
/// a `${file:}` secret: apply's report and the apply history quote it bounded,
/// without control characters, the secret masked.
#[test]
fn a_failing_tenants_output_is_quoted_bounded_clean_and_masked() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("quote");
    let a = f.id("a");
    let secret_file = f.dir.join("smtp-password");
    let secret = "smtp-Secret-9f8e7d6c5b4a";
    std::fs::write(&secret_file, secret).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env = format!(
        "SMTP_PASSWORD: \"${{file:{}}}\", SIM_LEAK_ENV: SMTP_PASSWORD",
        secret_file.display()
    );
    let spec = f.write_spec(&f.spec(&[(&a, "a", "mai-fleet/tenant:uninit", &env)]));
    let out = f.controller(&[
        "apply",
        &spec_arg(&spec),
        "--settle",
        "1s",
        "--verify-timeout",
        "6s",
    ]);
    assert_eq!(out.code, 3, "{}", out.all());
    let detail = f.psql(&format!(
        "SELECT detail FROM apply_results WHERE tenant_id = '{a}'"
    ));
    for (what, text) in [("apply's output", out.all()), ("the apply history", detail)] {
        assert!(text.contains("AAAA"), "{what} quotes the line: {text:.300}");
        assert!(!text.contains(secret), "{what} shows the secret");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{what} has control characters"
        );
        let longest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(longest < 4_000, "{what}: a line of {longest} characters");
    }
}

/// A network made under the fleet's name by someone else, with inter-container
/// traffic on, would let tenants reach each other's ports: apply refuses to use it.
#[test]
fn a_fleet_network_that_lets_tenants_reach_each_other_is_refused() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("icc");
    let a = f.id("a");
    let network = format!("mai-fleet-net-{}", f.name);
    let made = std::process::Command::new("docker")
        .args(["network", "create", "--driver", "bridge", &network])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let spec = f.write_spec(&f.spec(&[(&a, "a", DEV, "")]));
    let out = f.apply(&spec, &[]);
    let _ = std::process::Command::new("docker")
        .args(["network", "rm", &network])
        .output();
    assert_eq!(out.code, 3, "{}", out.all());
    assert!(out.all().contains("enable_icc=false"), "{}", out.all());
    assert!(
        f.inspect(&format!("mai-{a}")).is_none(),
        "no tenant joined it"
    );
}
