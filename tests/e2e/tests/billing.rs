//! Billing and the dashboard (issue 4) against real tenant containers, the agent,
//! PostgreSQL and the controller's server, with a local fake of the NBP API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{Datelike, Months, NaiveDate, Weekday};
use mai_fleet_e2e::dashboard::{form_value, login, Session};
use mai_fleet_e2e::nbp::FakeNbp;
use mai_fleet_e2e::{chat, http_full, require_services, Fleet, KEYS};
use serde_json::Value;

/// The bearer token `/metrics` is served with here.
const METRICS_TOKEN: &str = "e2e-metrics-token-0123456789";
const DEV: &str = "mai-fleet/tenant:dev";
const PASSWORD: &str = "e2e-password-123";

/// A decimal string as an integer count of 10^-places.
fn units(s: &str, places: u32) -> i128 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let neg = int.starts_with('-');
    let mut frac = frac.to_string();
    assert!(
        frac.len() <= places as usize,
        "{s} has more than {places} places"
    );
    while frac.len() < places as usize {
        frac.push('0');
    }
    let v = int.trim_start_matches('-').parse::<i128>().unwrap() * 10i128.pow(places)
        + frac.parse::<i128>().unwrap_or(0);
    if neg {
        -v
    } else {
        v
    }
}

/// `a / 10^shift` rounded half away from zero.
fn round_shift(a: i128, shift: u32) -> i128 {
    let d = 10i128.pow(shift);
    let q = a.abs() / d;
    let r = a.abs() % d;
    let q = if r * 2 >= d { q + 1 } else { q };
    if a < 0 {
        -q
    } else {
        q
    }
}

/// `1 234,56 zł` from grosze, written independently of the controller.
fn pln_text(grosze: i128) -> String {
    let int = (grosze / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    format!("{grouped},{:02} zł", grosze % 100)
}

/// Per tenant store: (tokens, requests, raw micro-dollars) over the month's days.
fn store_month(data_dir: &Path, first: NaiveDate, last: NaiveDate) -> (i64, i64, i128) {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("webui.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open store");
    let mut stmt = conn
        .prepare("SELECT total_tokens, total_requests, raw_cost FROM client_daily_usage WHERE usage_date BETWEEN ?1 AND ?2")
        .unwrap();
    let rows = stmt
        .query_map([first.to_string(), last.to_string()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, f64>(2)?,
            ))
        })
        .unwrap();
    let (mut t, mut q, mut micros) = (0, 0, 0i128);
    for row in rows {
        let (tokens, requests, raw) = row.unwrap();
        t += tokens;
        q += requests;
        micros += (raw * 1e6).round() as i128;
    }
    (t, q, micros)
}

struct Expected {
    tokens: i64,
    raw_micros: i128,
    client_micros: i128,
    pln_grosze: i128,
}

fn expected(
    data_dir: &Path,
    first: NaiveDate,
    last: NaiveDate,
    markup_e4: i128,
    rate_e4: i128,
) -> Expected {
    let (tokens, _, raw_micros) = store_month(data_dir, first, last);
    let client_e10 = raw_micros * markup_e4;
    Expected {
        tokens,
        raw_micros,
        client_micros: round_shift(client_e10, 4),
        pln_grosze: round_shift(client_e10 * rate_e4, 12),
    }
}

fn tenant_line<'a>(report: &'a Value, tenant: &str) -> &'a Value {
    report["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|t| t["tenant"] == tenant)
        .unwrap_or_else(|| panic!("no line for {tenant} in {report}"))
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn month_billed_from_real_tenants_agrees_everywhere_and_closes() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("billing");
    let (t1, t2, t3) = (f.id("t1"), f.id("t2"), f.id("t3"));
    let history =
        |per_day: u32| format!("SIM_HISTORY_DAYS: \"62\", SIM_HISTORY_PER_DAY: \"{per_day}\"");
    let spec_text = |t1_per_day: u32| {
        f.spec(&[
            (&t1, "a", DEV, &history(t1_per_day)),
            (&t2, "a", DEV, &history(9)),
            (&t3, "b", DEV, &history(7)),
        ])
        .replacen(
            &format!("billing: {{ email: faktury@{t2}.pl, nip: \"5260250274\" }}"),
            &format!("billing: {{ email: faktury@{t2}.pl, nip: \"5260250274\", markup_rate: 1.45, monthly_limit_usd: 40 }}"),
            1,
        )
    };
    let spec = f.write_spec(&spec_text(12));
    f.apply_ok(&spec, &[]);
    for i in 0..3 {
        assert!(
            f.wait_health(f.base_port + i).is_some(),
            "tenant {i} answers"
        );
    }
    chat(f.base_port, "anna", "openai/gpt-4o-mini").expect("chat today");
    f.agent_once("a");
    f.agent_once("b");

    let today = chrono::Utc::now().date_naive();
    let month_first = today.with_day(1).unwrap() - Months::new(1);
    let month_last = today.with_day(1).unwrap() - chrono::Duration::days(1);
    let month = month_first.format("%Y-%m").to_string();
    // A holiday of the fake's inside the month: its second Wednesday.
    let holiday = (8..=14)
        .map(|d| month_first.with_day(d).unwrap())
        .find(|d| d.weekday() == Weekday::Wed)
        .unwrap();
    let nbp = FakeNbp::start(f.base_port + 11, &[holiday]);
    nbp.set_down(true);

    // The dashboard, and a user for it.
    let port = f.base_port + 10;
    f.add_user("admin", PASSWORD);
    let _server = f.serve_dashboard(
        port,
        &[
            ("MAI_FLEET_NBP_URL", &nbp.url()),
            ("MAI_FLEET_METRICS_TOKEN", METRICS_TOKEN),
        ],
    );
    let mut bodies = String::new();

    // Without a session: pages send to the login form, the API answers 401.
    for path in [
        "/",
        "/billing",
        "/hosts",
        &format!("/tenants/{t1}"),
        "/fleet/rows",
        "/alerts",
    ] {
        let r = http_full(port, "GET", path, None, &[]).unwrap();
        assert_eq!(r.status, 303, "{path} without a session");
        assert!(
            r.header("location").unwrap().starts_with("/login"),
            "{path} redirects to login"
        );
    }
    for path in [
        "/api/v1/fleet",
        "/api/v1/hosts",
        "/api/v1/alerts",
        "/api/v1/billing",
        "/billing.csv",
        "/billing.json",
        &format!("/api/v1/tenants/{t1}"),
    ] {
        assert_eq!(
            http_full(port, "GET", path, None, &[]).unwrap().status,
            401,
            "{path} without a session"
        );
    }
    assert_eq!(
        http_full(port, "GET", "/healthz", None, &[])
            .unwrap()
            .status,
        200
    );
    // A wrong password and an unknown user get the same answer.
    let (wrong, none) = login(port, "admin", "not-the-password");
    let (unknown, _) = login(port, "nobody", PASSWORD);
    assert!(none.is_none());
    assert_eq!((wrong.status, unknown.status), (401, 401));
    let error_of = |b: &str| {
        b[b.find("class=\"error\"").expect("error shown")..]
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(error_of(&wrong.body), error_of(&unknown.body));
    assert!(wrong.body.contains("Wrong user name or password."));
    let (ok, session) = login(port, "admin", PASSWORD);
    assert_eq!(ok.status, 303);
    let s: Session = session.expect("session cookie");
    let cookie_line = ok
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("mai_session="))
        .unwrap();
    assert!(
        cookie_line.1.contains("HttpOnly") && cookie_line.1.contains("SameSite=Lax"),
        "{}",
        cookie_line.1
    );

    // NBP down: the sync says so, pages work in USD only.
    let sync_from = (month_first - chrono::Duration::days(10)).to_string();
    let down = f
        .controller_command(&["rates", "sync", "--from", &sync_from])
        .env("MAI_FLEET_NBP_URL", nbp.url())
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("NBP") && err.contains("503"), "{err}");
    let page = s.get(&format!("/billing?month={month}"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("USD only"), "billing page says USD only");
    let fleet_page = s.get("/");
    assert_eq!(fleet_page.status, 200);
    assert!(fleet_page.body.contains("USD only"));
    let usd_only: Value =
        serde_json::from_str(&s.get(&format!("/billing.json?month={month}")).body).unwrap();
    assert!(usd_only["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["client_cost_pln"].is_null()));
    assert!(usd_only["notice"].as_str().unwrap().contains("USD only"));
    bodies.push_str(&page.body);
    bodies.push_str(&fleet_page.body);

    // NBP back: backfill, then the rate of a Saturday is Friday's, of the holiday the day before.
    nbp.set_down(false);
    let sync = f
        .controller_command(&["rates", "sync", "--from", &sync_from])
        .env("MAI_FLEET_NBP_URL", nbp.url())
        .output()
        .unwrap();
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let saturday = (1..=7)
        .map(|d| month_first.with_day(d).unwrap())
        .find(|d| d.weekday() == Weekday::Sat)
        .unwrap();
    let show = |day: NaiveDate| -> Value {
        let out = f.controller(&[
            "rates",
            "show",
            "--date",
            &day.to_string(),
            "--output",
            "json",
        ]);
        serde_json::from_str(&out.stdout).expect("rates show json")
    };
    assert_eq!(
        show(saturday)["rate"]["effective_date"],
        (saturday - chrono::Duration::days(1)).to_string()
    );
    assert_eq!(
        show(holiday)["rate"]["effective_date"],
        (holiday - chrono::Duration::days(1)).to_string()
    );
    assert_eq!(
        show(holiday)["rate"]["rate"],
        mai_fleet_e2e::nbp::ask(holiday - chrono::Duration::days(1))
    );
    let tuesday = holiday - chrono::Duration::days(1);
    assert_eq!(
        show(tuesday)["rate"]["effective_date"],
        tuesday.to_string(),
        "a business day uses its own table"
    );
    assert!(
        show(saturday - chrono::Duration::days(30))
            .get("rate")
            .is_some_and(Value::is_null),
        "no table within 7 days: none"
    );

    // The independent calculation, from the stores themselves.
    let (rate_day, rate, table_no) = nbp
        .rate_for(month_last)
        .expect("a rate for the month's last day");
    let rate_e4 = units(&rate, 4);
    let data = |host: &str, t: &str| f.data_root(host).join(t).join("data");
    let want = [
        (
            t1.clone(),
            expected(&data("a", &t1), month_first, month_last, 13000, rate_e4),
        ),
        (
            t2.clone(),
            expected(&data("a", &t2), month_first, month_last, 14500, rate_e4),
        ),
        (
            t3.clone(),
            expected(&data("b", &t3), month_first, month_last, 13000, rate_e4),
        ),
    ];
    assert!(
        want.iter().all(|(_, e)| e.tokens > 0),
        "a month of history in every store"
    );

    let cli_json: Value = serde_json::from_str(
        &f.controller(&["billing", &month, "--output", "json"])
            .stdout,
    )
    .expect("billing json");
    let web_json: Value =
        serde_json::from_str(&s.get(&format!("/billing.json?month={month}")).body).unwrap();
    let api_json: Value =
        serde_json::from_str(&s.get(&format!("/api/v1/billing?month={month}")).body).unwrap();
    assert_eq!(
        cli_json["tenants"], web_json["tenants"],
        "CLI and page JSON agree"
    );
    assert_eq!(web_json, api_json);
    let cli_csv = csv_rows(&f.controller(&["billing", &month, "--output", "csv"]).stdout);
    let web_csv = s.get(&format!("/billing.csv?month={month}"));
    assert!(web_csv
        .header("content-type")
        .unwrap()
        .starts_with("text/csv"));
    assert_eq!(cli_csv, csv_rows(&web_csv.body), "CLI and page CSV agree");
    let page = s.get(&format!("/billing?month={month}"));
    assert!(!page.body.contains("USD only"));
    assert!(
        page.body.contains(&table_no) && page.body.contains(&rate_day.to_string()),
        "the page names the rate's table and date"
    );
    let header = &cli_csv[0];
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut total_grosze = 0;
    for (tenant, e) in &want {
        let line = tenant_line(&cli_json, tenant);
        assert_eq!(
            line["tokens"].as_i64().unwrap(),
            e.tokens,
            "{tenant} tokens"
        );
        assert_eq!(
            units(line["raw_cost_usd"].as_str().unwrap(), 6),
            e.raw_micros,
            "{tenant} raw"
        );
        assert_eq!(
            units(line["client_cost_usd"].as_str().unwrap(), 6),
            e.client_micros,
            "{tenant} client"
        );
        assert_eq!(
            units(line["profit_usd"].as_str().unwrap(), 6),
            e.client_micros - e.raw_micros,
            "{tenant} profit"
        );
        assert_eq!(
            units(line["client_cost_pln"].as_str().unwrap(), 2),
            e.pln_grosze,
            "{tenant} PLN to the grosz"
        );
        assert_eq!(line["rate_pln"], rate.as_str());
        assert_eq!(line["rate_date"], rate_day.to_string());
        assert_eq!(line["rate_table"], table_no.as_str());
        let row = cli_csv.iter().find(|r| r[1] == *tenant).expect("csv row");
        assert_eq!(
            units(&row[col("client_cost_pln")], 2),
            e.pln_grosze,
            "{tenant} CSV PLN"
        );
        assert!(
            page.body.contains(&pln_text(e.pln_grosze)),
            "{tenant}: page shows {}",
            pln_text(e.pln_grosze)
        );
        total_grosze += e.pln_grosze;
    }
    assert_eq!(tenant_line(&cli_json, &t2)["markup_rate"], "1.45");
    assert_eq!(
        units(cli_json["totals"]["client_cost_pln"].as_str().unwrap(), 2),
        total_grosze
    );
    assert!(page.body.contains(&pln_text(total_grosze)), "total shown");
    bodies.push_str(&page.body);

    // The other pages, in USD and PLN.
    let fleet_page = s.get("/");
    assert_eq!(fleet_page.status, 200);
    for t in [&t1, &t2, &t3] {
        assert!(fleet_page.body.contains(t.as_str()), "fleet page lists {t}");
    }
    assert!(fleet_page.body.contains(" zł"), "fleet page has PLN");
    assert_eq!(s.get("/fleet/rows?sort=month_cost&dir=desc").status, 200);
    let tenant_page = s.get(&format!("/tenants/{t1}?month={month}"));
    assert_eq!(tenant_page.status, 200);
    assert!(
        tenant_page.body.contains("<svg")
            && tenant_page.body.contains("user-0")
            && tenant_page.body.contains("openai/gpt-4o-mini")
    );
    let tenant_api: Value =
        serde_json::from_str(&s.get(&format!("/api/v1/tenants/{t1}?month={month}")).body).unwrap();
    let user_tokens: i64 = tenant_api["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["tokens"].as_i64().unwrap())
        .sum();
    assert_eq!(
        user_tokens, want[0].1.tokens,
        "per-user breakdown adds up to the month"
    );
    assert_eq!(tenant_api["days"].as_array().unwrap().len(), 30);
    assert_eq!(s.get("/alerts").status, 200);
    let hosts = s.get("/hosts");
    assert!(hosts.body.contains(&format!("{}-a", f.name)));
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let metrics = http_full(port, "GET", "/metrics", None, &[("Authorization", &bearer)]).unwrap();
    assert!(
        metrics
            .body
            .contains(&format!("mai_fleet_tenant_tokens_month{{tenant=\"{t1}\"")),
        "{}",
        metrics.body
    );
    assert!(metrics
        .body
        .contains("mai_fleet_agent_heartbeat_age_seconds{host="));
    assert_eq!(s.get(&format!("/tenants/{}-nope", f.name)).status, 404);
    assert_eq!(s.get("/billing?month=2026-13").status, 400);
    for b in [
        &fleet_page.body,
        &tenant_page.body,
        &hosts.body,
        &metrics.body,
    ] {
        bodies.push_str(b);
    }
    bodies.push_str(&tenant_api.to_string());

    if std::env::var_os("MAI_FLEET_SCREENSHOTS").is_some() {
        let out_dir = mai_fleet_e2e::workspace_root().join("target/screenshots");
        let status = Command::new("python3")
            .arg(mai_fleet_e2e::workspace_root().join("scripts/screenshots.py"))
            .args(["--base", &format!("http://127.0.0.1:{port}"), "--out"])
            .arg(&out_dir)
            .args([
                "/login",
                "/",
                &format!("/tenants/{t1}?month={month}"),
                &format!("/billing?month={month}"),
                "/hosts",
                "/alerts",
            ])
            .env("MAI_FLEET_SESSION", &s.cookie)
            .status()
            .expect("run screenshots.py");
        assert!(status.success(), "screenshots");
    }

    // A form without the session's CSRF token is refused; with it, the month closes.
    assert_eq!(
        s.post_form("/billing/close", &format!("csrf=forged&month={month}"))
            .status,
        403
    );
    let open: Value =
        serde_json::from_str(&s.get(&format!("/billing.json?month={month}")).body).unwrap();
    assert!(open["closed"].is_null());
    let closed = f.controller(&["billing", "close", &month, "--output", "json"]);
    assert_eq!(closed.code, 0, "{}", closed.all());
    // The page's data was just read (and kept); the close must show at once.
    std::thread::sleep(Duration::from_millis(200));
    let shown: Value =
        serde_json::from_str(&s.get(&format!("/billing.json?month={month}")).body).unwrap();
    assert!(
        !shown["closed"].is_null(),
        "a change in the database reaches the page at once"
    );
    let again = f.controller(&["billing", "close", &month]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already closed"), "{}", again.stderr);
    let this_month = today.format("%Y-%m").to_string();
    assert!(f
        .controller(&["billing", "close", &this_month])
        .stderr
        .contains("has not ended"));

    // Late usage for the closed month: t1's app records more chats on past days.
    let before = store_month(&data("a", &t1), month_first, month_last);
    f.apply_ok(&f.write_spec(&spec_text(14)), &[]);
    assert!(f.wait_health(f.base_port).is_some());
    f.agent_once("a");
    let after = store_month(&data("a", &t1), month_first, month_last);
    assert!(after.0 > before.0, "late usage landed in the month");
    let late: Value = serde_json::from_str(
        &f.controller(&["billing", &month, "--output", "json"])
            .stdout,
    )
    .unwrap();
    assert!(!late["closed"].is_null());
    let (line, frozen) = (tenant_line(&late, &t1), tenant_line(&cli_json, &t1));
    for k in [
        "tokens",
        "raw_cost_usd",
        "client_cost_usd",
        "client_cost_pln",
    ] {
        assert_eq!(line[k], frozen[k], "closed figure {k} stays");
    }
    assert_eq!(
        line["adjustment"]["tokens"].as_i64().unwrap(),
        after.0 - before.0,
        "the adjustment is the late usage"
    );
    assert_eq!(
        units(line["adjustment"]["raw_cost_usd"].as_str().unwrap(), 6),
        after.2 - before.2
    );
    assert!(
        tenant_line(&late, &t2)["adjustment"].is_null(),
        "untouched tenants have no adjustment"
    );
    let page = s.get(&format!("/billing?month={month}"));
    assert!(
        page.body.contains("Adjustment") && page.body.contains("closed "),
        "the page shows the adjustment"
    );
    bodies.push_str(&page.body);

    // Logging out ends the session.
    let csrf = form_value(&s.get("/").body, "csrf").expect("logout form token");
    assert_eq!(s.post_form("/logout", &format!("csrf={csrf}")).status, 303);
    assert_eq!(s.get("/").status, 303);

    for key in KEYS {
        assert!(
            !bodies.contains(key) && !bodies.contains(&key[9..40]),
            "a key leaked into a page"
        );
    }
    let transcript = f.transcript.borrow();
    for key in KEYS {
        assert!(
            !transcript.contains(&key[9..40]),
            "a key leaked into controller output"
        );
    }
}
