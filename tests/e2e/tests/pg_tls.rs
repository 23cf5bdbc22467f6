//! The fleet database over TLS (issue 11, item 3): controller and agent reach a
//! PostgreSQL that accepts encrypted connections only, verify its certificate
//! against the CA named in the URL, and never fall back to plain text.

use mai_fleet_e2e::pg_tls::TlsPostgres;
use mai_fleet_e2e::{psql, require_services, Fleet, RunResult};

const DEV: &str = "mai-fleet/tenant:dev";

fn with_db(f: &Fleet, url: &str, args: &[&str]) -> RunResult {
    let out: RunResult = f
        .controller_command(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("controller")
        .into();
    f.transcript.borrow_mut().push_str(&out.all());
    out
}

#[test]
fn the_fleet_database_over_tls_is_verified_and_never_plain() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("pg_tls");
    let pg = TlsPostgres::start(&f.dir.join("pg"), f.base_port + 15);
    psql(
        &pg.admin_url(),
        "CREATE ROLE fleet_owner LOGIN CREATEROLE PASSWORD 'owner-pw'",
    );
    psql(&pg.admin_url(), "CREATE DATABASE fleet OWNER fleet_owner");
    let base = format!(
        "postgres://fleet_owner:owner-pw@127.0.0.1:{}/fleet",
        pg.port
    );
    let verified = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        pg.ca().display()
    );

    // The server refuses plain text; a wrong CA is refused by the client.
    let plain = with_db(&f, &format!("{base}?sslmode=disable"), &["migrate"]);
    assert_eq!(plain.code, 1, "{}", plain.all());
    assert!(
        plain.stderr.contains("no encryption") || plain.stderr.contains("pg_hba.conf"),
        "{}",
        plain.all()
    );
    let rogue = with_db(
        &f,
        &format!(
            "{base}?sslmode=verify-full&sslrootcert={}",
            pg.rogue_ca().display()
        ),
        &["migrate"],
    );
    assert_eq!(rogue.code, 1, "{}", rogue.all());
    assert!(
        rogue.stderr.to_lowercase().contains("certificate"),
        "{}",
        rogue.all()
    );
    // A URL that asks for TLS of a server without it fails: no fall-back to plain text.
    let main = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let sep = if main.contains('?') { '&' } else { '?' };
    let no_tls = with_db(&f, &format!("{main}{sep}sslmode=require"), &["migrate"]);
    assert_eq!(no_tls.code, 1, "{}", no_tls.all());

    let m = with_db(&f, &verified, &["migrate"]);
    assert_eq!(m.code, 0, "{}", m.all());

    // A tenant applied and recorded over TLS; its host's agent ships over TLS with
    // its own credentials, and without TLS it is refused.
    let t = f.id("tls");
    let spec = f.write_spec(&f.spec(&[(
        t.as_str(),
        "a",
        DEV,
        r#"SIM_HISTORY_DAYS: "2", SIM_HISTORY_PER_DAY: "5""#,
    )]));
    let spec_s = spec.to_str().unwrap();
    let a = with_db(&f, &verified, &["apply", spec_s, "--settle", "1s"]);
    assert_eq!(a.code, 0, "{}", a.all());
    let host = format!("{}-a", f.name);
    let add = with_db(&f, &verified, &["host", "add", &host]);
    assert_eq!(add.code, 0, "{}", add.all());
    let agent_url = add
        .stdout
        .trim()
        .strip_prefix("DATABASE_URL=")
        .expect("the agent's URL")
        .to_string();
    assert!(
        agent_url.contains("sslmode=verify-full"),
        "the agent's URL keeps TLS"
    );
    let agent = |url: &str| {
        let mut cmd = f.agent_command("a", &["--once"]);
        cmd.env("DATABASE_URL", url);
        let out = cmd.output().expect("agent");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let plain_url = agent_url.replace("sslmode=verify-full", "sslmode=disable");
    let (_, log) = agent(&plain_url);
    let shipped = psql(
        &format!("{base}?sslmode=require"),
        &format!("SELECT count(*) FROM usage_daily WHERE tenant_id = '{t}'"),
    );
    assert_eq!(shipped.trim(), "0", "nothing arrives without TLS: {log}");
    assert!(
        log.contains("no encryption") || log.contains("pg_hba.conf"),
        "refused: {log}"
    );
    let rogue_url = agent_url.replace(
        &pg.ca().display().to_string(),
        &pg.rogue_ca().display().to_string(),
    );
    assert_ne!(rogue_url, agent_url);
    let (_, log) = agent(&rogue_url);
    assert!(
        log.to_lowercase().contains("certificate"),
        "a wrong CA is refused: {log}"
    );
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, log) = agent(&agent_url);
        assert!(ok, "agent over TLS: {log}");
        let shipped = psql(
            &format!("{base}?sslmode=require"),
            &format!("SELECT count(*) FROM usage_daily WHERE tenant_id = '{t}'"),
        );
        if shipped.trim().parse::<i64>().unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "no usage over TLS: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
