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
    let out = f
        .controller_command(&["alerts", "evaluate"])
        .env("MAI_FLEET_ALERTS_CONFIG", config)
        .output()
        .expect("evaluate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
