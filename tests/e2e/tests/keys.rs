//! OpenRouter keys owned by the fleet (issue 12), against a local OpenRouter built
//! from its API reference, real tenant containers and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mai_fleet_e2e::openrouter::{FakeOpenRouter, MANAGEMENT_KEY};
use mai_fleet_e2e::{require_services, Fleet, RunResult};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const DEV: &str = "mai-fleet/tenant:dev";

/// What the controller needs for provisioned keys: the fake's URL, the management
/// key (in an owner-only file) and the master key (32 random bytes, owner-only).
struct Keys {
    or: FakeOpenRouter,
    master: PathBuf,
    mgmt_file: PathBuf,
}

fn owner_only(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Keys {
    fn new(f: &Fleet) -> Self {
        let or = FakeOpenRouter::start(f.base_port + 11);
        let master = f.dir.join("master.key");
        let mut random = [0u8; 32];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut random)
            .unwrap();
        owner_only(&master, &random);
        let mgmt_file = f.dir.join("management.key");
        owner_only(&mgmt_file, format!("{MANAGEMENT_KEY}\n").as_bytes());
        Self {
            or,
            master,
            mgmt_file,
        }
    }

    fn command(&self, f: &Fleet, args: &[&str]) -> Command {
        let mut cmd = f.controller_command(args);
        cmd.env("MAI_FLEET_OPENROUTER_URL", self.or.url())
            .env("MAI_FLEET_OPENROUTER_MANAGEMENT_KEY_FILE", &self.mgmt_file)
            .env("MAI_FLEET_MASTER_KEY_FILE", &self.master);
        cmd
    }

    fn run(&self, f: &Fleet, args: &[&str]) -> RunResult {
        let out: RunResult = self.command(f, args).output().expect("controller").into();
        let mut t = f.transcript.borrow_mut();
        t.push_str(&out.stdout);
        t.push_str(&out.stderr);
        out
    }

    fn apply(&self, f: &Fleet, spec: &Path, extra: &[&str]) -> RunResult {
        let spec = spec.to_str().unwrap();
        let mut args = vec!["apply", spec, "--settle", "1s", "--verify-timeout", "20s"];
        args.extend_from_slice(extra);
        self.run(f, &args)
    }

    /// One `controller alerts evaluate --spec` (polls, the account's round, evaluates,
    /// delivers) with the alerts config `config`.
    fn evaluate(&self, f: &Fleet, spec: &Path, config: &Path) {
        let e = self
            .command(
                f,
                &[
                    "alerts",
                    "evaluate",
                    "--output",
                    "json",
                    "--spec",
                    spec.to_str().unwrap(),
                ],
            )
            .env("MAI_FLEET_ALERTS_CONFIG", config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&e.stderr).into_owned();
        assert!(e.status.success(), "{err}");
        f.transcript.borrow_mut().push_str(&err);
    }

    /// `controller keys ARGS --spec SPEC`.
    fn keys(&self, f: &Fleet, spec: &Path, args: &[&str]) -> RunResult {
        let mut all = vec!["keys"];
        all.extend_from_slice(args);
        all.extend(["--spec", spec.to_str().unwrap()]);
        self.run(f, &all)
    }

    /// Keys at the fake named for `tenant` in this fleet.
    fn named(&self, f: &Fleet, tenant: &str) -> Vec<mai_fleet_e2e::openrouter::FakeKey> {
        let name = format!("mai-fleet/{}/{tenant}", f.name);
        self.or
            .managed_keys()
            .into_iter()
            .filter(|k| k.name == name)
            .collect()
    }
}

/// `Fleet::spec` with every tenant's key provisioned and a monthly limit each.
fn provisioned_spec(f: &Fleet, tenants: &[(&str, &str, &str, &str)], limits: &[u32]) -> String {
    let mut text = f.spec(tenants);
    for (i, (id, ..)) in tenants.iter().enumerate() {
        text = text.replace(
            &format!("openrouter: {{ api_key: \"${{env:E2E_KEY_{i}}}\" }}"),
            "openrouter: { provision: true }",
        );
        text = text.replace(
            &format!("billing: {{ email: faktury@{id}.pl,"),
            &format!(
                "billing: {{ monthly_limit_usd: {}, email: faktury@{id}.pl,",
                limits[i]
            ),
        );
    }
    assert!(
        !text.contains("api_key"),
        "every tenant provisioned:\n{text}"
    );
    text
}

fn container_key(f: &Fleet, tenant: &str) -> String {
    let c = f.inspect(&format!("mai-{tenant}")).expect("container");
    c["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|e| e.strip_prefix("OPENROUTER_API_KEY="))
        .unwrap_or("")
        .to_string()
}

fn container_id(f: &Fleet, tenant: &str) -> String {
    f.inspect(&format!("mai-{tenant}")).expect("container")["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn pg_dump(f: &Fleet) -> String {
    let out = Command::new("pg_dump")
        .arg(&f.database_url)
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn provisioned_keys_are_created_limited_rotated_and_offboarded() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("keys_life");
    let k = Keys::new(&f);
    let (t0, t1, t2) = (f.id("k0"), f.id("k1"), f.id("k2"));
    let tenants = [
        (t0.as_str(), "a", DEV, ""),
        (t1.as_str(), "a", DEV, ""),
        (t2.as_str(), "b", DEV, ""),
    ];
    let spec = f.write_spec(&provisioned_spec(&f, &tenants, &[50, 60, 70]));

    // Without the master and management keys, validate says what is missing.
    let v = f.controller(&["validate", spec.to_str().unwrap()]);
    assert_eq!(v.code, 1, "{}", v.all());
    assert!(
        v.stderr.contains("MAI_FLEET_MASTER_KEY_FILE is not set"),
        "{}",
        v.all()
    );
    assert!(
        v.stderr.contains("neither MAI_FLEET_OPENROUTER_MANAGEMENT_KEY nor MAI_FLEET_OPENROUTER_MANAGEMENT_KEY_FILE is set"),
        "{}",
        v.all()
    );
    assert_eq!(k.run(&f, &["validate", spec.to_str().unwrap()]).code, 0);

    // Provisioned keys are kept in the fleet database: without it, nothing starts.
    let no_db: RunResult = k
        .command(&f, &["apply", spec.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
        .into();
    assert_eq!(no_db.code, 1, "{}", no_db.all());
    assert!(
        no_db.stderr.contains("needs the fleet database"),
        "{}",
        no_db.all()
    );
    assert!(f.containers().is_empty(), "no container without its key");

    // One apply: three keys, named and limited, each in its own container.
    let r = k.apply(&f, &spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let posts: Vec<_> =
        k.or.log()
            .into_iter()
            .filter(|l| l.method == "POST")
            .collect();
    assert_eq!(posts.len(), 3, "{posts:#?}");
    let mut keys = Vec::new();
    for (t, limit) in [(&t0, 50), (&t1, 60), (&t2, 70)] {
        let post = posts
            .iter()
            .find(|p| p.body["name"] == format!("mai-fleet/{}/{t}", f.name))
            .unwrap_or_else(|| panic!("POST /keys for {t}: {posts:#?}"));
        assert_eq!(post.body["limit"], json!(limit), "{post:#?}");
        assert_eq!(post.body["limit_reset"], "monthly");
        let made = k.named(&f, t);
        assert_eq!(made.len(), 1);
        assert_eq!(
            container_key(&f, t),
            made[0].key,
            "{t} runs with its own key"
        );
        keys.push(made[0].clone());
    }
    assert!(keys[0].key != keys[1].key && keys[1].key != keys[2].key);

    // No key, and not the management key, in the database, in any output.
    let dump = pg_dump(&f);
    for secret in keys.iter().map(|k| k.key.as_str()).chain([MANAGEMENT_KEY]) {
        assert!(!dump.contains(secret), "a key is in pg_dump");
        assert!(
            !f.transcript.borrow().contains(secret),
            "a key is in the output"
        );
        let hex = &secret["sk-or-v1-".len()..];
        assert!(!dump.contains(hex), "a key's hex is in pg_dump");
    }
    // What is kept: hash and mask, and the sealed key.
    let kept = f.psql(
        "SELECT count(*) FROM openrouter_keys WHERE status = 'current' AND length(sealed) > 12",
    );
    assert_eq!(kept.trim(), "3");

    // A second apply asks nothing that changes anything and restarts nothing.
    let ids: Vec<String> = [&t0, &t1, &t2]
        .iter()
        .map(|t| container_id(&f, t))
        .collect();
    k.or.clear_log();
    let r = k.apply(&f, &spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(k.or.changes().is_empty(), "{:#?}", k.or.changes());
    let again: Vec<String> = [&t0, &t1, &t2]
        .iter()
        .map(|t| container_id(&f, t))
        .collect();
    assert_eq!(ids, again, "no container was replaced");
    let plan = k.run(&f, &["plan", spec.to_str().unwrap()]);
    assert_eq!(plan.code, 0, "{}", plan.all());

    // The limit changed in the file: exactly one PATCH, at OpenRouter; plan showed it.
    let text = std::fs::read_to_string(&spec).unwrap().replacen(
        "monthly_limit_usd: 50",
        "monthly_limit_usd: 80",
        1,
    );
    std::fs::write(&spec, text).unwrap();
    let plan = k.run(&f, &["plan", spec.to_str().unwrap()]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(plan.stdout.contains("limit $50 -> $80"), "{}", plan.all());
    k.or.clear_log();
    let r = k.apply(&f, &spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let changes = k.or.changes();
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(changes[0].method, "PATCH");
    assert_eq!(changes[0].path, format!("/api/v1/keys/{}", keys[0].hash));
    assert_eq!(changes[0].body["limit"], json!(80));
    assert_eq!(
        k.or.key_by_hash(&keys[0].hash).unwrap().limit,
        Some(Decimal::from(80))
    );
    assert_eq!(container_id(&f, &t0), ids[0], "a limit recreates nothing");

    // OpenRouter stops the key at its limit: budget_100 says the key is stopped.
    k.or.spend(&keys[0].key, Decimal::from(80));
    let config = f.dir.join("alerts.yaml");
    std::fs::write(&config, "rules: {}\n").unwrap();
    k.evaluate(&f, &spec, &config);
    let alerts: Vec<Value> =
        serde_json::from_str(&f.controller(&["alerts", "list", "--output", "json"]).stdout)
            .unwrap();
    let b100 = alerts
        .iter()
        .find(|a| a["rule"] == "budget_100" && a["tenant_id"] == t0.as_str())
        .unwrap_or_else(|| panic!("budget_100 for {t0}: {alerts:#?}"));
    assert!(
        b100["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("the key is stopped"),
        "{b100:#?}"
    );

    // Rotation: the new key serves (a request made with it) before the old one goes.
    k.or.clear_log();
    let r = k.keys(&f, &spec, &["rotate", &t1, "--settle", "1s"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let now = k.named(&f, &t1);
    assert_eq!(now.len(), 1, "one key for {t1}: {now:#?}");
    assert_ne!(now[0].hash, keys[1].hash);
    assert_eq!(container_key(&f, &t1), now[0].key);
    let log = k.or.log();
    let used = log
        .iter()
        .position(|l| l.method == "GET" && l.path == "/api/v1/key" && l.by == now[0].hash)
        .expect("a request made with the new key");
    let deleted = log
        .iter()
        .position(|l| l.method == "DELETE" && l.path.ends_with(&keys[1].hash))
        .expect("the old key deleted");
    assert!(used < deleted, "{log:#?}");
    let rotated = now[0].clone();

    // A rotation whose new container fails verification: the old key serves on and
    // no new key is left behind.
    let good = std::fs::read_to_string(&spec).unwrap();
    let crash = good.replacen(
        &format!("org_id: org_{t1}\n    host: {}-a\n    image: {DEV}", f.name),
        &format!(
            "org_id: org_{t1}\n    host: {}-a\n    image: mai-fleet/tenant:crash",
            f.name
        ),
        1,
    );
    assert_ne!(crash, good);
    std::fs::write(&spec, &crash).unwrap();
    let r = k.keys(
        &f,
        &spec,
        &["rotate", &t1, "--settle", "1s", "--verify-timeout", "10s"],
    );
    assert_eq!(r.code, 3, "{}", r.all());
    std::fs::write(&spec, &good).unwrap();
    let left = k.named(&f, &t1);
    assert_eq!(left.len(), 1, "no new key behind: {left:#?}");
    assert_eq!(left[0].hash, rotated.hash);
    assert_eq!(container_key(&f, &t1), rotated.key, "the old key serves on");
    let state = f.inspect(&format!("mai-{t1}")).unwrap();
    assert_eq!(state["State"]["Status"], "running");

    // A key made by hand at OpenRouter is an orphan in `keys list`.
    let by_hand = k.or.create_by_hand("someone's test key");
    let l = k.keys(&f, &spec, &["list"]);
    assert_eq!(l.code, 3, "{}", l.all());
    assert!(
        l.stdout.contains(&format!("orphan: {}", by_hand.label())),
        "{}",
        l.all()
    );
    let lj = k.keys(&f, &spec, &["list", "--output", "json"]);
    let lj: Value = serde_json::from_str(&lj.stdout).unwrap();
    assert_eq!(lj["orphans"].as_array().unwrap().len(), 1, "{lj:#}");
    assert_eq!(lj["keys"].as_array().unwrap().len(), 3, "{lj:#}");
    assert_eq!(lj["orphans"][0]["hash"], by_hand.hash.as_str());

    // Offboarding: --prune disables the removed tenant's key, --purge-data deletes it.
    let two = f.write_spec(&provisioned_spec(&f, &tenants[..2], &[80, 60]));
    let r = k.apply(&f, &two, &["--prune"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        k.or.key_by_hash(&keys[2].hash).unwrap().disabled,
        "disabled at OpenRouter"
    );
    let r = k.apply(&f, &two, &["--prune", "--purge-data"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        k.or.key_by_hash(&keys[2].hash).is_none(),
        "deleted at OpenRouter"
    );
    assert!(k.named(&f, &t2).is_empty());

    // A key deleted at OpenRouter behind the fleet's back: `keys list` says so.
    k.or.state.lock().unwrap().keys.remove(&keys[0].key);
    let l = k.keys(&f, &two, &["list"]);
    assert_eq!(l.code, 3, "{}", l.all());
    assert!(
        l.stdout.contains(&format!("missing: tenant {t0}")),
        "{}",
        l.all()
    );

    for secret in [&keys[0].key, &keys[2].key, &rotated.key] {
        assert!(!f.transcript.borrow().contains(secret.as_str()));
    }
    assert!(!f.transcript.borrow().contains(MANAGEMENT_KEY));
}

/// An apply killed right after OpenRouter made a key (before it heard the answer):
/// the next apply ends with one key for the tenant and no orphan.
#[test]
fn an_apply_killed_after_post_keys_leaves_no_orphan() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("keys_kill");
    let k = Keys::new(&f);
    let t = f.id("kill");
    let spec = f.write_spec(&provisioned_spec(&f, &[(t.as_str(), "a", DEV, "")], &[40]));
    k.or.state.lock().unwrap().hold_post = Some(Duration::from_secs(30));
    let mut child = k
        .command(&f, &["apply", spec.to_str().unwrap(), "--settle", "1s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while k.named(&f, &t).is_empty() {
        assert!(Instant::now() < until, "no POST /keys within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let orphan = k.named(&f, &t);
    assert_eq!(orphan.len(), 1, "the key exists at OpenRouter, unrecorded");
    assert_eq!(
        f.psql("SELECT count(*) FROM openrouter_keys").trim(),
        "0",
        "killed before it was recorded"
    );
    k.or.state.lock().unwrap().hold_post = None;
    let r = k.apply(&f, &spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.all().contains("swept"), "{}", r.all());
    let left = k.named(&f, &t);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_ne!(left[0].hash, orphan[0].hash);
    assert_eq!(container_key(&f, &t), left[0].key);
    let l = k.keys(&f, &spec, &["list"]);
    assert_eq!(l.code, 0, "no orphan, nothing missing: {}", l.all());
}

/// Webhook bodies about `rule` with `status`.
fn hooks_for(h: &mai_fleet_e2e::fakes::FakeWebhook, rule: &str, status: &str) -> usize {
    h.bodies("/hook")
        .iter()
        .filter(|b| {
            b["alerts"][0]["labels"]["alertname"] == rule && b["alerts"][0]["status"] == status
        })
        .count()
}

/// OpenRouter's daily ledger names the day and the model where it and the store
/// differ; the account's credit warns before every client stops.
#[test]
fn the_daily_ledger_names_day_and_model_and_low_credit_fires_once() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("keys_ledger");
    let k = Keys::new(&f);
    let hook = mai_fleet_e2e::fakes::FakeWebhook::start(f.base_port + 12);
    let t = f.id("ledger");
    let spec = f.write_spec(&provisioned_spec(
        &f,
        &[(
            t.as_str(),
            "a",
            DEV,
            r#"SIM_HISTORY_DAYS: "4", SIM_HISTORY_PER_DAY: "12""#,
        )],
        &[500],
    ));
    let r = k.apply(&f, &spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let key = k.named(&f, &t).remove(0);
    // The store's history reaches the fleet.
    let until = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        f.agent_once("a");
        let rows = f.psql(&format!(
            "SELECT usage_date, model_name, raw_cost FROM usage_model_daily
             WHERE tenant_id = '{t}' AND usage_date = (SELECT max(usage_date) FROM usage_model_daily
                 WHERE tenant_id = '{t}' AND usage_date < (now() AT TIME ZONE 'Europe/Warsaw')::date - 1)
             ORDER BY model_name"
        ));
        if rows.lines().count() >= 2 {
            break rows;
        }
        assert!(Instant::now() < until, "no history shipped: {rows}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let rows: Vec<Vec<String>> = rows
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect();
    let day = rows[0][0].clone();
    let off_model = rows[0][1].clone();
    // OpenRouter charged $0.20 more for one model that day; the rest agrees.
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let recorded: Decimal = r[2].parse().unwrap();
            let usage = if r[1] == off_model {
                recorded + Decimal::new(20, 2)
            } else {
                recorded
            };
            json!({"date": format!("{}T00:00:00Z", r[0]), "model": r[1], "model_permaslug": r[1],
                   "endpoint_id": "ep-1", "provider_name": "Test", "requests": 12,
                   "usage": serde_json::from_str::<Value>(&usage.normalize().to_string()).unwrap(),
                   "byok_usage_inference": 0, "prompt_tokens": 100, "completion_tokens": 50, "reasoning_tokens": 0})
        })
        .collect();
    k.or.set_activity(&key.hash, items);
    // The account spent $10 a day for a week; $50 left covers 5 days.
    let today = chrono::Utc::now().date_naive();
    let week: Vec<Value> = (1..=7)
        .map(|d| json!({"date": (today - chrono::Duration::days(d)).to_string(), "model": "openai/gpt-4o",
                        "endpoint_id": "ep-1", "usage": 10, "requests": 100}))
        .collect();
    k.or.set_activity("*", week);
    k.or.set_credits(Decimal::from(200), Decimal::from(150));

    let config = f.dir.join("alerts.yaml");
    std::fs::write(
        &config,
        format!(
            "rules: {{ capture_gap: {{ for: 0s }} }}\nreceivers:\n  - name: ops\n    webhook: {{ url: \"{}\" }}\n",
            hook.url("/hook")
        ),
    )
    .unwrap();
    let evaluate = || k.evaluate(&f, &spec, &config);
    evaluate();
    let alerts: Vec<Value> =
        serde_json::from_str(&f.controller(&["alerts", "list", "--output", "json"]).stdout)
            .unwrap();
    let gap = alerts
        .iter()
        .find(|a| a["rule"] == "capture_gap" && a["labels"]["window"] == "ledger_day")
        .unwrap_or_else(|| panic!("capture_gap from the ledger: {alerts:#?}"));
    let summary = gap["annotations"]["summary"].as_str().unwrap();
    assert_eq!(gap["tenant_id"], t.as_str());
    assert_eq!(gap["labels"]["day"], day.as_str());
    assert_eq!(gap["labels"]["model"], off_model.as_str());
    assert!(
        summary.contains(&t) && summary.contains(&day) && summary.contains(&off_model),
        "{summary}"
    );
    assert!(
        summary.contains("$0.20 ("),
        "the $0.20 not captured: {summary}"
    );
    let gaps = alerts
        .iter()
        .filter(|a| a["rule"] == "capture_gap" && a["labels"]["window"] == "ledger_day")
        .count();
    assert_eq!(gaps, 1, "only the model that differs: {alerts:#?}");

    // The same, per day, from the command line.
    let month = &day[..7];
    let rec = f.controller(&["reconcile", &t, "--month", month]);
    assert_eq!(rec.code, 3, "{}", rec.all());
    assert!(
        rec.stdout
            .contains(&format!("{day} {off_model}: OpenRouter")),
        "{}",
        rec.all()
    );

    // Low credit: one notification while it lasts, one when credit is added.
    let credit = alerts
        .iter()
        .find(|a| a["rule"] == "account_credit_low")
        .unwrap_or_else(|| panic!("account_credit_low: {alerts:#?}"));
    assert_eq!(credit["state"], "firing");
    let s = credit["annotations"]["summary"].as_str().unwrap();
    assert!(
        s.contains("$50.00 covers 5") && s.contains("$10.00/day"),
        "{s}"
    );
    evaluate();
    evaluate();
    assert_eq!(hooks_for(&hook, "account_credit_low", "firing"), 1);
    k.or.set_credits(Decimal::from(1200), Decimal::from(150));
    evaluate();
    assert_eq!(hooks_for(&hook, "account_credit_low", "resolved"), 1);
    assert_eq!(hooks_for(&hook, "account_credit_low", "firing"), 1);

    // serve follows the account on its own, rotates a key older than rotate_every,
    // and logs no key.
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "openrouter: { provision: true }",
        "openrouter: { provision: true, rotate_every: 1h }",
    );
    std::fs::write(&spec, text).unwrap();
    f.psql(&format!("UPDATE openrouter_keys SET created_at = now() - interval '2 hours' WHERE tenant_id = '{t}'"));
    let log = f.dir.join("serve.log");
    let port = f.base_port + 13;
    let before: i64 = f
        .psql("SELECT count(*) FROM openrouter_credits")
        .trim()
        .parse()
        .unwrap();
    let serve = mai_fleet_e2e::Running(
        k.command(
            &f,
            &[
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--no-rate-sync",
                "--spec",
                spec.to_str().unwrap(),
                "--log-format",
                "json",
            ],
        )
        .env("MAI_FLEET_OPENROUTER_ACCOUNT_INTERVAL", "1s")
        .env("MAI_FLEET_OPENROUTER_POLL_INTERVAL", "1s")
        .env("MAI_FLEET_ALERTS_CONFIG", &config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = f
            .psql("SELECT count(*) FROM openrouter_credits")
            .trim()
            .parse()
            .unwrap();
        let polled: i64 = f
            .psql(&format!("SELECT count(*) FROM openrouter_snapshots WHERE tenant_id = '{t}' AND polled_at > now() - interval '5 seconds'"))
            .trim()
            .parse()
            .unwrap();
        let rotated = k.named(&f, &t).first().is_some_and(|n| n.hash != key.hash);
        if n >= before + 2 && polled > 0 && rotated {
            break;
        }
        assert!(
            Instant::now() < until,
            "serve did not poll the account and the key, or rotate it"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The tenant page shows OpenRouter against recorded for that day.
    f.add_user("ops", "correct horse battery");
    let (_, session) = mai_fleet_e2e::dashboard::login(port, "ops", "correct horse battery");
    let session = session.expect("logged in");
    let page = session.get(&format!("/tenants/{t}?month={month}"));
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("OpenRouter against recorded"),
        "{}",
        page.body
    );
    let row = page
        .body
        .lines()
        .find(|l| l.contains(&format!("<td>{day}</td>")) && l.contains("differs"))
        .unwrap_or_else(|| panic!("the day differs on the page: {}", page.body));
    assert!(row.contains("$0.20"), "{row}");
    drop(serve);
    let new_key = k.named(&f, &t).remove(0);
    assert_eq!(k.named(&f, &t).len(), 1);
    assert_eq!(
        container_key(&f, &t),
        new_key.key,
        "the tenant runs the rotated key"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("scheduled key rotation"), "{text}");
    for secret in [key.key.as_str(), new_key.key.as_str(), MANAGEMENT_KEY] {
        assert!(!text.contains(secret), "a key in serve's log");
    }
    assert!(!f.transcript.borrow().contains(&key.key));
    assert!(!pg_dump(&f).contains(&key.key));
}

/// A key made by hand is adopted (its limit follows the file from then on), and
/// `billing.on_limit: disable` stops it when the client's month reaches its limit.
#[test]
fn an_adopted_key_is_limited_and_disabled_at_the_clients_limit() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("keys_adopt");
    let k = Keys::new(&f);
    let by_hand = k.or.create_by_hand("kancelaria, made by hand");
    owner_only(&f.dir.join("tenant.key"), by_hand.key.as_bytes());
    let t = f.id("adopt");
    let text = f
        .spec(&[(t.as_str(), "a", DEV, r#"SIM_USAGE_PER_MIN: "600""#)])
        .replace("${env:E2E_KEY_0}", "${file:tenant.key}")
        .replace(
            &format!("billing: {{ email: faktury@{t}.pl,"),
            &format!(
                "billing: {{ monthly_limit_usd: 0.01, on_limit: disable, email: faktury@{t}.pl,"
            ),
        );
    assert!(text.contains("on_limit: disable") && text.contains("tenant.key"));
    let spec = f.write_spec(&text);
    let r = k.apply(&f, &spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        k.or.changes().is_empty(),
        "a given key is not the fleet's to change yet"
    );
    assert_eq!(container_key(&f, &t), by_hand.key);

    let l = k.keys(&f, &spec, &["list"]);
    assert_eq!(l.code, 3, "{}", l.all());
    assert!(
        l.stdout.contains(&format!("unmanaged: tenant {t}")),
        "{}",
        l.all()
    );
    assert!(
        l.stdout.contains(&format!("orphan: {}", by_hand.label())),
        "{}",
        l.all()
    );

    // 429 and 5xx are retried with back-off; any other 4xx is not.
    k.or.state.lock().unwrap().fail_next = vec![403];
    k.or.clear_log();
    let l = k.keys(&f, &spec, &["list"]);
    assert_eq!(l.code, 1, "{}", l.all());
    assert!(
        l.stderr.contains("OpenRouter answered 403 to GET /keys"),
        "{}",
        l.all()
    );
    assert_eq!(k.or.log().len(), 1, "a 403 is not asked again");
    k.or.state.lock().unwrap().fail_next = vec![429, 503];
    k.or.clear_log();
    let a = k.keys(&f, &spec, &["adopt", &t]);
    assert_eq!(a.code, 0, "{}", a.all());
    let statuses: Vec<u16> = k.or.log().iter().take(3).map(|l| l.status).collect();
    assert_eq!(statuses, [429, 503, 200], "{:#?}", k.or.log());
    assert!(
        a.stdout.contains("adopted") && a.stdout.contains(&by_hand.hash),
        "{}",
        a.all()
    );
    let patch: Vec<_> = k.or.changes();
    assert_eq!(patch.len(), 1, "{patch:#?}");
    assert_eq!(patch[0].body["limit"], json!(0.01));
    let l = k.keys(&f, &spec, &["list", "--output", "json"]);
    assert_eq!(l.code, 0, "{}", l.all());
    let l: Value = serde_json::from_str(&l.stdout).unwrap();
    assert_eq!(l["keys"][0]["origin"], "adopted");
    assert_eq!(l["keys"][0]["hash"], by_hand.hash.as_str());
    assert!(l["unmanaged"].as_array().unwrap().is_empty(), "{l:#}");

    // The tenant spends past its limit: the fleet disables the key, budget_100 says so.
    let config = f.dir.join("alerts.yaml");
    std::fs::write(&config, "rules: {}\n").unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        f.agent_once("a");
        k.evaluate(&f, &spec, &config);
        if k.or.key_by_hash(&by_hand.hash).unwrap().disabled {
            break;
        }
        assert!(
            Instant::now() < until,
            "the key was not disabled at the limit"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let alerts: Vec<Value> =
        serde_json::from_str(&f.controller(&["alerts", "list", "--output", "json"]).stdout)
            .unwrap();
    let b100 = alerts
        .iter()
        .find(|a| a["rule"] == "budget_100" && a["labels"]["source"] == "monthly_limit")
        .unwrap_or_else(|| panic!("budget_100: {alerts:#?}"));
    let summary = b100["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("is stopped (disabled by the fleet"),
        "{summary}"
    );
    assert!(!f.transcript.borrow().contains(&by_hand.key));
}
