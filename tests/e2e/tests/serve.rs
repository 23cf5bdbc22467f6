//! `controller serve` as a supervised daemon (issue 10): a background job that dies is
//! restarted and reported on `/healthz`; `/healthz` answers at once whatever the
//! database does; the log is one JSON object a line and a database outage does not
//! fill it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mai_fleet_e2e::{http_full, require_services, Fleet, Running};
use serde_json::Value;

fn serve(f: &Fleet, port: u16, database_url: &str, log: &Path, env: &[(&str, &str)]) -> Running {
    let mut cmd = f.controller_command(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--no-rate-sync",
        "--log-format",
        "json",
    ]);
    cmd.env("DATABASE_URL", database_url)
        // Evaluation every second, so that its job runs (and can fail) often.
        .env("MAI_FLEET_ALERT_INTERVAL", "1s");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Running(
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("serve"),
    )
}

fn healthz(port: u16) -> Option<(u16, serde_json::Value, Duration)> {
    let started = Instant::now();
    let r = http_full(port, "GET", "/healthz", None, &[])?;
    let body = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    Some((r.status, body, started.elapsed()))
}

/// Every line of the log, each of which must be a JSON object.
fn json_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_job_that_panics_is_restarted_and_reported_on_healthz() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("serve_panic");
    let log = f.dir.join("serve.log");
    let port = f.base_port;
    let _server = serve(
        &f,
        port,
        &f.database_url,
        &log,
        &[("MAI_FLEET_FAULT_PANIC", "alerts")],
    );
    // While the job waits to be restarted, /healthz says so, naming it. (Right at
    // start-up it may also answer 503 for a database not probed yet.)
    let names_the_job = |body: &Value| {
        body["problems"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p.as_str() == Some("job alerts: down after a failure, restarting"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_down = None;
    let mut seen_back = None;
    while Instant::now() < deadline && seen_back.is_none() {
        match healthz(port) {
            Some((503, body, _)) if seen_down.is_none() && names_the_job(&body) => {
                seen_down = Some(body)
            }
            Some((200, body, _)) if body["jobs"]["alerts"]["restarts"] == 1 => {
                seen_back = Some(body)
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let down = seen_down.expect("a 503 naming the job while it was down");
    assert_eq!(down["jobs"]["alerts"]["state"], "backing_off", "{down}");
    let back = seen_back.expect("the job restarted and /healthz ok again");
    assert_eq!(back["ok"], true, "{back}");
    assert_eq!(back["jobs"]["alerts"]["state"], "running");
    assert!(
        back["jobs"]["alerts"]["last_failure_at"].is_string(),
        "{back}"
    );
    assert_eq!(back["jobs"]["database"]["restarts"], 0, "{back}");
    // After the restart it works: evaluation cycles are recorded.
    let cycles = || {
        f.psql("SELECT count(*) FROM alert_evaluations")
            .parse::<u64>()
            .unwrap_or(0)
    };
    let before = cycles();
    std::thread::sleep(Duration::from_secs(3));
    assert!(cycles() > before, "the restarted job evaluates again");
    let lines = json_lines(&log);
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "job failed; restarting")
        .collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    assert_eq!(failed[0]["job"], "alerts");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("panic: fault injected"))),
        "the panic itself is a JSON event"
    );
}

#[test]
fn healthz_answers_at_once_while_the_database_is_away_and_the_log_stays_short() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("serve_outage");
    let pg = mai_fleet_e2e::PrivatePostgres::start(&f.name, f.base_port + 19);
    let log = f.dir.join("serve.log");
    let port = f.base_port;
    let _server = serve(&f, port, &pg.url, &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(port).is_none_or(|(s, _, _)| s != 200) {
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The figure is a 60 s outage: MAI_FLEET_E2E_SERVE_OUTAGE=60.
    let outage = mai_fleet_e2e::seconds("SERVE_OUTAGE", 15);
    let logged_before = json_lines(&log).len();
    pg.stop();
    let stopped = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut last = None;
    while stopped.elapsed() < outage {
        let (status, body, took) = healthz(port).expect("/healthz answers while Postgres is away");
        slowest = slowest.max(took);
        last = Some((status, body));
        std::thread::sleep(Duration::from_millis(250));
    }
    let (status, body) = last.expect("answers");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest /healthz {slowest:?}"
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "unavailable", "{body}");
    assert!(
        body["problems"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == "fleet database: unavailable")),
        "{body}"
    );
    let outage_lines = json_lines(&log).split_off(logged_before);
    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while healthz(port).is_none_or(|(s, _, _)| s != 200) {
        assert!(
            Instant::now() < deadline,
            "healthy again once Postgres is back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each job says once that the database is away, not once a round (the alert
    // evaluation alone ran every second).
    let warnings: Vec<_> = outage_lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .collect();
    eprintln!(
        "{} warning(s) in a {} s outage: {warnings:?}",
        warnings.len(),
        outage.as_secs()
    );
    assert!(
        !warnings.is_empty() && warnings.len() <= 4,
        "{} warnings: {warnings:?}",
        warnings.len()
    );
    assert!(
        outage_lines
            .iter()
            .any(|l| l["message"] == "fleet database unavailable"),
        "{outage_lines:?}"
    );
    // An access line per request, with its latency.
    assert!(outage_lines
        .iter()
        .any(|l| l["target"] == "mai_fleet::access"
            && l["path"] == "/healthz"
            && l["latency_ms"].is_number()));
}
