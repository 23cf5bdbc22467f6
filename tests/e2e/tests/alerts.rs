//! Alerts (issue 5) against real tenant containers, the agent and PostgreSQL, with
//! local fakes of OpenRouter, a webhook receiver and an SMTP server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mai_fleet_e2e::fakes::{FakeOpenRouter, FakeSmtp, FakeWebhook};
use mai_fleet_e2e::{chat, require_services, Fleet, Running, KEY_A, KEY_B};
use serde_json::Value;

const DEV: &str = "mai-fleet/tenant:dev";

fn write(f: &Fleet, name: &str, text: &str) -> PathBuf {
    let p = f.dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// One `controller alerts evaluate` (poll, evaluate, deliver) with this config.
fn evaluate(f: &Fleet, config: &Path, spec: Option<&Path>, or: Option<&FakeOpenRouter>) -> Value {
    let mut args = vec!["alerts", "evaluate", "--output", "json"];
    let spec_s;
    if let Some(s) = spec {
        spec_s = s.display().to_string();
        args.extend(["--spec", &spec_s]);
    }
    let mut cmd = f.controller_command(&args);
    cmd.env("MAI_FLEET_ALERTS_CONFIG", config);
    if let Some(or) = or {
        cmd.env("MAI_FLEET_OPENROUTER_URL", or.url());
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "alerts evaluate: {stderr}");
    f.transcript.borrow_mut().push_str(&stderr);
    serde_json::from_slice(&out.stdout).expect("evaluate json")
}

fn alerts(f: &Fleet) -> Vec<Value> {
    let out = f.controller(&["alerts", "list", "--all", "--output", "json"]);
    serde_json::from_str(&out.stdout).expect("alerts list json")
}

fn state_of(f: &Fleet, rule: &str, tenant: &str) -> Option<String> {
    alerts(f)
        .into_iter()
        .find(|a| a["rule"] == rule && a["tenant_id"] == tenant)
        .map(|a| a["state"].as_str().unwrap().to_string())
}

/// Webhook bodies (Alertmanager's shape) about `rule` for `tenant` with `status`.
fn hooks(h: &FakeWebhook, path: &str, rule: &str, tenant: &str, status: &str) -> Vec<Value> {
    h.bodies(path)
        .into_iter()
        .filter(|b| {
            let a = &b["alerts"][0];
            a["labels"]["alertname"] == rule
                && a["labels"]["tenant"] == tenant
                && a["status"] == status
        })
        .collect()
}

fn slacks(h: &FakeWebhook, rule: &str, tenant: &str, status: &str) -> usize {
    h.bodies("/slack")
        .iter()
        .filter(|b| {
            let t = b["text"].as_str().unwrap_or("");
            t.contains(&format!("[{}] {rule}", status.to_uppercase())) && t.contains(tenant)
        })
        .count()
}

fn mails(s: &FakeSmtp, rule: &str, tenant: &str, status: &str) -> usize {
    s.texts()
        .iter()
        .filter(|t| {
            t.contains(&format!("[{}] {rule}", status.to_uppercase())) && t.contains(tenant)
        })
        .count()
}

fn store_raw(data: &Path) -> f64 {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("webui.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT coalesce(sum(raw_cost), 0) FROM client_daily_usage",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn receivers_yaml(hook: &FakeWebhook, smtp: &FakeSmtp) -> String {
    format!(
        "receivers:\n  - name: ops\n    webhook: {{ url: \"{}\" }}\n  - name: chat\n    slack: {{ url: \"{}\" }}\n  - name: mail\n    email: {{ smtp: \"{}\", from: alerts@mai.example, to: [ops@mai.example] }}\n",
        hook.url("/hook"),
        hook.url("/slack"),
        smtp.url()
    )
}

#[test]
fn seeds_incident_fires_once_per_receiver_and_resolves_once_and_capture_gap_is_seen() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("alerts");
    let (t1, t2) = (f.id("t1"), f.id("t2"));
    let or = FakeOpenRouter::start(f.base_port + 11);
    let hook = FakeWebhook::start(f.base_port + 12);
    let smtp = FakeSmtp::start(f.base_port + 13);
    let config = write(&f, "alerts.yaml", &format!(
            "repeat_interval: 1h\nrules:\n  capture_gap: {{ for: 0s }}\n  exchange_rate_missing: {{ enabled: false }}\n{}",
            receivers_yaml(&hook, &smtp)
        ));
    let spec = f.write_spec(&f.spec(&[(&t1, "a", DEV, ""), (&t2, "a", DEV, "")]));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some() && f.wait_health(f.base_port + 1).is_some());
    or.set(KEY_A, "10.000000");
    or.set(KEY_B, "5.000000");
    chat(f.base_port + 1, "ewa", "openai/gpt-4o-mini").unwrap();
    f.agent_once("a");
    let first = evaluate(&f, &config, Some(&spec), Some(&or));
    assert_eq!(first["snapshots"], 2, "both keys polled");
    assert!(
        alerts(&f).is_empty(),
        "a healthy fleet has no alerts: {:?}",
        alerts(&f)
    );

    // The seeds' incident: t1's container started by hand without OPENROUTER_EXTERNAL_USER.
    let name = format!("mai-{t1}");
    assert!(Command::new("docker")
        .args(["rm", "-f", &name])
        .output()
        .unwrap()
        .status
        .success());
    f.start_by_hand(
        &t1,
        "a",
        Some(f.base_port),
        &[
            "ORGANIZATION_NAME=Klient".into(),
            format!("OPENROUTER_API_KEY={KEY_A}"),
            "TZ=Europe/Warsaw".into(),
        ],
    );
    assert!(f.wait_health(f.base_port).is_some());
    for _ in 0..3 {
        chat(f.base_port, "jan", "anthropic/claude-3.5-sonnet").unwrap();
    }
    or.set(KEY_A, "10.500000"); // OpenRouter charged for those chats; the store recorded nothing.

    // t2 records half of what its key spends (the streaming loss).
    let t2_data = f.data_root("a").join(&t2).join("data");
    let before = store_raw(&t2_data);
    for _ in 0..300 {
        chat(f.base_port + 1, "ewa", "anthropic/claude-3.5-sonnet").unwrap();
    }
    let recorded = store_raw(&t2_data) - before;
    assert!(recorded > 0.05, "t2 recorded {recorded}");
    or.set(KEY_B, &format!("{:.6}", 5.0 + 2.0 * recorded));
    f.agent_once("a");

    let mut cycles = 0;
    while cycles < 2 && state_of(&f, "tracking_inactive", &t1).as_deref() != Some("firing") {
        evaluate(&f, &config, Some(&spec), Some(&or));
        cycles += 1;
    }
    assert_eq!(
        state_of(&f, "tracking_inactive", &t1).as_deref(),
        Some("firing"),
        "fired within two evaluation cycles"
    );
    let fired = hooks(&hook, "/hook", "tracking_inactive", &t1, "firing");
    assert_eq!(fired.len(), 1, "one webhook notification");
    assert_eq!(
        slacks(&hook, "tracking_inactive", &t1, "firing"),
        1,
        "one Slack notification"
    );
    assert_eq!(
        mails(&smtp, "tracking_inactive", &t1, "firing"),
        1,
        "one e-mail"
    );
    let summary = fired[0]["alerts"][0]["annotations"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        summary.contains("OPENROUTER_EXTERNAL_USER"),
        "names the variable: {summary}"
    );
    assert!(
        summary.contains("$0.50"),
        "names the uncaptured spend: {summary}"
    );
    assert!(
        summary.contains("$0.65"),
        "and what it would have been billed at 1.3x: {summary}"
    );
    let body = &fired[0];
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert!(body["alerts"][0]["startsAt"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(!body["alerts"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .is_empty());

    let gap = hooks(&hook, "/hook", "capture_gap", &t2, "firing");
    assert!(!gap.is_empty(), "capture_gap for the tenant recording half");
    let gap_summary = gap[0]["alerts"][0]["annotations"]["summary"]
        .as_str()
        .unwrap();
    assert!(
        gap_summary.contains(&t2) && gap_summary.contains("not captured"),
        "{gap_summary}"
    );
    assert!(state_of(&f, "capture_gap", &t1).is_none() || cycles > 0);

    // More cycles of the same condition: nothing new.
    for _ in 0..3 {
        evaluate(&f, &config, Some(&spec), Some(&or));
    }
    assert_eq!(
        hooks(&hook, "/hook", "tracking_inactive", &t1, "firing").len(),
        1
    );
    assert_eq!(mails(&smtp, "tracking_inactive", &t1, "firing"), 1);

    // Fixed by apply: one resolved notification per receiver.
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    f.agent_once("a");
    evaluate(&f, &config, Some(&spec), Some(&or));
    evaluate(&f, &config, Some(&spec), Some(&or));
    assert_eq!(
        state_of(&f, "tracking_inactive", &t1).as_deref(),
        Some("resolved")
    );
    let resolved = hooks(&hook, "/hook", "tracking_inactive", &t1, "resolved");
    assert_eq!(resolved.len(), 1, "one resolved webhook");
    assert_ne!(resolved[0]["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(slacks(&hook, "tracking_inactive", &t1, "resolved"), 1);
    assert_eq!(mails(&smtp, "tracking_inactive", &t1, "resolved"), 1);

    let transcript = f.transcript.borrow();
    for key in [KEY_A, KEY_B] {
        assert!(
            !transcript.contains(&key[9..40]),
            "a key leaked into controller output"
        );
        for (_, b, _) in hook.received.lock().unwrap().iter() {
            assert!(
                !b.to_string().contains(&key[9..40]),
                "a key leaked into a notification"
            );
        }
        assert!(
            !smtp.texts().iter().any(|t| t.contains(&key[9..40])),
            "a key leaked into an e-mail"
        );
    }
}

#[test]
fn repeats_wait_for_the_interval_silences_suppress_and_budgets_fire_once_a_month() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("alerts2");
    let t = f.id("t3");
    let hook = FakeWebhook::start(f.base_port + 12);
    let receivers = format!(
        "receivers:\n  - name: ops\n    webhook: {{ url: \"{}\" }}\n",
        hook.url("/hook")
    );
    let rules =
        "rules:\n  container_down: { for: 0s }\n  exchange_rate_missing: { enabled: false }\n";
    let steady = write(
        &f,
        "steady.yaml",
        &format!("repeat_interval: 1h\n{rules}{receivers}"),
    );
    let quick = write(
        &f,
        "quick.yaml",
        &format!("repeat_interval: 2s\n{rules}{receivers}"),
    );
    let spec_with = |limit: Option<String>| {
        let s = f.spec(&[(&t, "a", DEV, "")]);
        match limit {
            Some(l) => s.replacen(
                "nip: \"5260250274\" }",
                &format!("nip: \"5260250274\", monthly_limit_usd: {l} }}"),
                1,
            ),
            None => s,
        }
    };
    let spec = f.write_spec(&spec_with(None));
    f.apply_ok(&spec, &[]);
    assert!(f.wait_health(f.base_port).is_some());
    for _ in 0..300 {
        chat(f.base_port, "ola", "anthropic/claude-3.5-sonnet").unwrap();
    }
    f.agent_once("a");
    let month = f.psql("SELECT to_char(now() AT TIME ZONE 'Europe/Warsaw', 'YYYY-MM')");
    let billing: Value = serde_json::from_str(
        &f.controller(&["billing", &month, "--output", "json"])
            .stdout,
    )
    .unwrap();
    let line = billing["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["tenant"] == t.as_str())
        .unwrap()
        .clone();
    let mtd: f64 = line["client_cost_usd"].as_str().unwrap().parse().unwrap();
    assert!(mtd >= 0.08, "month to date {mtd}");

    // 80–90 % of the limit (limits are kept in cents): budget_80 once, however many cycles.
    let limit80 = ((mtd / 0.9) * 100.0).ceil() / 100.0;
    assert!((0.8..1.0).contains(&(mtd / limit80)), "{mtd} of {limit80}");
    f.apply_ok(
        &f.write_spec(&spec_with(Some(format!("{limit80:.2}")))),
        &[],
    );
    for _ in 0..10 {
        evaluate(&f, &steady, None, None);
    }
    assert_eq!(hooks(&hook, "/hook", "budget_80", &t, "firing").len(), 1);
    assert!(hooks(&hook, "/hook", "budget_100", &t, "firing").is_empty());
    // Over the limit: budget_100 once; budget_80 still once.
    let limit100 = (mtd * 100.0).floor() / 100.0;
    f.apply_ok(
        &f.write_spec(&spec_with(Some(format!("{limit100:.2}")))),
        &[],
    );
    for _ in 0..10 {
        evaluate(&f, &steady, None, None);
    }
    let b100 = hooks(&hook, "/hook", "budget_100", &t, "firing");
    assert_eq!(b100.len(), 1);
    assert_eq!(b100[0]["alerts"][0]["labels"]["month"], month.as_str());
    assert_eq!(hooks(&hook, "/hook", "budget_80", &t, "firing").len(), 1);

    // A steady firing alert: 30 cycles within the repeat interval send it once.
    assert!(Command::new("docker")
        .args(["stop", "-t", "1", &format!("mai-{t}")])
        .output()
        .unwrap()
        .status
        .success());
    f.agent_once("a");
    for _ in 0..30 {
        evaluate(&f, &steady, None, None);
    }
    assert_eq!(
        hooks(&hook, "/hook", "container_down", &t, "firing").len(),
        1,
        "no duplicate in 30 cycles"
    );

    // Repeat every 2 s, but silenced for 4 s: nothing until the silence expires.
    let silence = f.controller(&[
        "alerts",
        "silence",
        "--tenant",
        &t,
        "--rule",
        "container_down",
        "--for",
        "4s",
        "--output",
        "json",
    ]);
    assert_eq!(silence.code, 0, "{}", silence.all());
    let silenced_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2100));
    while silenced_at.elapsed() < Duration::from_millis(3700) {
        let r = evaluate(&f, &quick, None, None);
        assert!(r["silenced"].as_i64().unwrap() >= 1, "{r}");
    }
    assert_eq!(
        hooks(&hook, "/hook", "container_down", &t, "firing").len(),
        1,
        "silenced: nothing sent"
    );
    while silenced_at.elapsed() < Duration::from_millis(4300) {
        std::thread::sleep(Duration::from_millis(100));
    }
    evaluate(&f, &quick, None, None);
    assert_eq!(
        hooks(&hook, "/hook", "container_down", &t, "firing").len(),
        2,
        "the silence expired: notified again"
    );
    // Unsilence by id works and unknown ids are refused.
    assert_eq!(f.controller(&["alerts", "unsilence", "999999"]).code, 1);
}

#[test]
fn webhook_down_for_two_minutes_gets_the_notification_after_and_email_is_not_delayed() {
    if !require_services() {
        return;
    }
    let outage = mai_fleet_e2e::seconds("WEBHOOK_OUTAGE", 120);
    let f = Fleet::new("alerts3");
    assert_eq!(f.controller(&["migrate"]).code, 0);
    let hook = FakeWebhook::start(f.base_port + 12);
    let smtp = FakeSmtp::start(f.base_port + 13);
    let down_until = Instant::now() + outage;
    *hook.fail_until.lock().unwrap() = Some(down_until);
    let config = write(
        &f,
        "alerts.yaml",
        &format!(
            "retry_max: 5s\nreceivers:\n  - name: ops\n    webhook: {{ url: \"{}\" }}\n  - name: mail\n    email: {{ smtp: \"{}\", from: alerts@mai.example, to: [ops@mai.example] }}\n",
            hook.url("/hook"),
            smtp.url()
        ),
    );
    // No NBP table was ever fetched: exchange_rate_missing fires at the first cycle.
    let _serve = Running(
        f.controller_command(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", f.base_port + 10),
            "--no-rate-sync",
        ])
        .env("MAI_FLEET_ALERTS_CONFIG", &config)
        .env("MAI_FLEET_ALERT_INTERVAL", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let started = Instant::now();
    while smtp.texts().is_empty() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mail_after = started.elapsed();
    assert!(!smtp.texts().is_empty(), "the e-mail arrived");
    assert!(
        Instant::now() < down_until,
        "the e-mail came while the webhook was still down ({mail_after:?})"
    );
    assert!(smtp.texts()[0].contains("exchange_rate_missing"));
    while hook.bodies("/hook").is_empty() && Instant::now() < down_until + Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = hook.received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "the webhook got the notification once");
    assert!(got[0].2 >= down_until, "after its outage");
    assert!(
        got[0].2 < down_until + Duration::from_secs(7),
        "within the retry cap of its recovery"
    );
    assert_eq!(
        got[0].1["alerts"][0]["labels"]["alertname"],
        "exchange_rate_missing"
    );
    let attempts = *hook.attempts.lock().unwrap();
    assert!(attempts >= 3, "retried with back-off ({attempts} attempts)");
    assert_eq!(
        smtp.texts().len(),
        1,
        "one e-mail, not one per webhook retry"
    );
    let log: Vec<Value> = serde_json::from_str(
        &f.controller(&["alerts", "deliveries", "--output", "json"])
            .stdout,
    )
    .unwrap();
    let webhook = log.iter().find(|d| d["receiver"] == "ops").unwrap();
    assert_eq!(webhook["state"], "sent");
    assert!(webhook["attempts"].as_i64().unwrap() >= 3);
}
