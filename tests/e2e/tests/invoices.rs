//! KSeF invoices (issue 22) from a month billed by real tenant containers, the agent
//! and PostgreSQL, with local fakes of NBP and of the KSeF 2.0 API; every draft
//! checked against the official FA(3) schema with xmllint.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{Datelike, Months, NaiveDate};
use mai_fleet_e2e::dashboard::{form_value, login};
use mai_fleet_e2e::ksef::FakeKsef;
use mai_fleet_e2e::nbp::FakeNbp;
use mai_fleet_e2e::{require_services, workspace_root, Fleet, RunResult};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;

const DEV: &str = "mai-fleet/tenant:dev";
const PASSWORD: &str = "e2e-password-123";
const SELLER_NIP: &str = "7740001454";
const TOKEN: &str = "20261207-EC-KSEFTOKEN-e2e-5f1d9c0b7a2e4d6f8a9c1b3e5d7f9a1c";

/// The FA(3) schema the tests judge by: the copies `scripts/test.sh` took from the
/// published package (`MAI_FLEET_E2E_FA3_SCHEMAS`), else the controller's own.
fn schemas() -> PathBuf {
    std::env::var_os("MAI_FLEET_E2E_FA3_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("controller/schemas/fa3"))
}

/// The fake KSeF of a test, its token and seller the tests' own.
fn fake_ksef(f: &Fleet) -> FakeKsef {
    FakeKsef::start(
        f.base_port + 12,
        &f.dir.join("ksef"),
        TOKEN,
        SELLER_NIP,
        &schemas(),
    )
}

fn xmllint_ok(dir: &Path, name: &str, xml: &str) {
    let file = dir.join(format!("{}.xml", name.replace('/', "_")));
    std::fs::write(&file, xml).unwrap();
    let out = Command::new("xmllint")
        .args(["--noout", "--nonet", "--schema"])
        .arg(schemas().join("schemat_FA(3)_v1-0E.xsd"))
        .arg(&file)
        .output()
        .expect("xmllint");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("{v}")).parse().unwrap()
}

fn element(xml: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no {name}")) + open.len();
    xml[start..start + xml[start..].find('<').unwrap()].to_string()
}

fn last_month() -> (NaiveDate, NaiveDate, String) {
    let today = chrono::Utc::now().date_naive();
    let first = today.with_day(1).unwrap() - Months::new(1);
    let last = today.with_day(1).unwrap() - chrono::Duration::days(1);
    (first, last, first.format("%Y-%m").to_string())
}

struct Run<'a> {
    f: &'a Fleet,
    env: Vec<(String, String)>,
    spec: PathBuf,
}

impl Run<'_> {
    fn run(&self, args: &[&str]) -> RunResult {
        let mut cmd = self.f.controller_command(args);
        cmd.env("MAI_FLEET_SPEC", &self.spec);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out: RunResult = cmd.output().expect("controller").into();
        let mut t = self.f.transcript.borrow_mut();
        t.push_str(&out.stdout);
        t.push_str(&out.stderr);
        out
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.run(&a);
        assert_eq!(out.code, 0, "{args:?}: {}", out.all());
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }
}

/// A spec of `tenants` (id, host, history per day, NIP) with an `invoicing:` section.
fn spec(f: &Fleet, tenants: &[(&str, &str, u32, Option<&str>)], currency: &str) -> PathBuf {
    let rows: Vec<(&str, &str, &str, String)> = tenants
        .iter()
        .map(|(id, host, per_day, _)| {
            (
                *id,
                *host,
                DEV,
                format!("SIM_HISTORY_DAYS: \"62\", SIM_HISTORY_PER_DAY: \"{per_day}\""),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|(a, b, c, d)| (*a, *b, *c, d.as_str()))
        .collect();
    let mut text = f.spec(&refs);
    for (id, _, _, nip) in tenants {
        let default = format!("billing: {{ email: faktury@{id}.pl, nip: \"5260250274\" }}");
        let mine = match nip {
            Some(n) => format!("billing: {{ email: faktury@{id}.pl, nip: \"{n}\", address: \"ul. Długa 5, 80-001 Gdańsk\" }}"),
            None => format!("billing: {{ email: faktury@{id}.pl }}"),
        };
        text = text.replacen(&default, &mine, 1);
    }
    let token_file = f.dir.join("ksef-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    text.push_str(&format!(
        "invoicing:\n  seller: {{ nip: \"{SELLER_NIP}\", name: \"mAI Sp. z o.o.\", address: \"ul. Przykładowa 1, 00-001 Warszawa\" }}\n  number: \"FV/{{yyyy}}/{{mm}}/{{seq}}\"\n  currency: {currency}\n  vat_rate: 23\n  line: \"Dostęp do modeli AI — {{month}}\"\n  ksef: {{ environment: test, token: \"${{file:ksef-token}}\" }}\n"
    ));
    f.write_spec(&text)
}

fn start_tenants(f: &Fleet, spec: &Path, n: u16, hosts: &[&str]) {
    f.apply_ok(spec, &[]);
    for i in 0..n {
        assert!(
            f.wait_health(f.base_port + i).is_some(),
            "tenant {i} answers"
        );
    }
    for h in hosts {
        f.agent_once(h);
    }
}

fn round2(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

fn invoice<'a>(list: &'a Value, number: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["number"] == number)
        .unwrap_or_else(|| panic!("no {number} in {list}"))
}

fn unsent_alert(r: &Run) -> Option<Value> {
    unsent_alert_of(r, None)
}

/// The `invoice_unsent` alert (of `month` when given).
fn unsent_alert_of(r: &Run, month: Option<&str>) -> Option<Value> {
    // `alerts list` exits 3 while something fires: read its JSON either way.
    let out = r.run(&["alerts", "list", "--all", "--output", "json"]);
    let all: Value = serde_json::from_str(&out.stdout).expect("alerts list json");
    all.as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "invoice_unsent" && month.is_none_or(|m| a["labels"]["month"] == m))
        .cloned()
}

#[test]
fn closed_month_becomes_checked_invoices_sent_once_with_receipts_and_corrections() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("invoices");
    let (t1, t2, t3) = (f.id("t1"), f.id("t2"), f.id("t3"));
    let tenants = |t1_per_day: u32| {
        [
            (t1.as_str(), "a", t1_per_day, Some("1234563218")),
            (t2.as_str(), "a", 9, Some("5213017228")),
            (t3.as_str(), "b", 7, None),
        ]
    };
    let spec_path = spec(&f, &tenants(12), "PLN");
    start_tenants(&f, &spec_path, 3, &["a", "b"]);
    let (first, last, month) = last_month();
    let nbp = FakeNbp::start(f.base_port + 11, &[]);
    let ksef = fake_ksef(&f);
    let r = Run {
        f: &f,
        env: vec![
            ("MAI_FLEET_NBP_URL".into(), nbp.url()),
            ("MAI_FLEET_KSEF_URL".into(), ksef.url()),
        ],
        spec: spec_path.clone(),
    };
    let yyyy_mm = first.format("%Y/%m").to_string();
    let n = |seq: u32| format!("FV/{yyyy_mm}/{seq}");

    // A month that is not closed is refused.
    let open = r.run(&["invoices", "draft", &month]);
    assert_eq!(open.code, 1, "{}", open.all());
    assert!(open.stderr.contains("is not closed"), "{}", open.stderr);
    let from = (first - chrono::Duration::days(10)).to_string();
    assert_eq!(r.run(&["rates", "sync", "--from", &from]).code, 0);
    assert_eq!(r.run(&["billing", "close", &month]).code, 0);
    let billing = r.json(&["billing", &month]);

    // A dry run shows the drafts and takes no number.
    let dry = r.run(&["invoices", "draft", &month, "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(
        dry.stdout.contains("NOT stored (--dry-run)")
            && dry.stdout.contains(&n(1))
            && dry.stdout.contains(&n(2)),
        "{}",
        dry.stdout
    );
    assert_eq!(r.json(&["invoices", "list", &month]), serde_json::json!([]));

    // Two drafts, numbered in order, totals equal to billing to the grosz; t3 named.
    let drafted = r.json(&["invoices", "draft", &month]);
    let rows = drafted["drafted"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{drafted}");
    assert_eq!(
        (
            rows[0]["number"].as_str().unwrap(),
            rows[0]["tenant_id"].as_str().unwrap()
        ),
        (n(1).as_str(), t1.as_str())
    );
    assert_eq!(
        (
            rows[1]["number"].as_str().unwrap(),
            rows[1]["tenant_id"].as_str().unwrap()
        ),
        (n(2).as_str(), t2.as_str())
    );
    let skipped = drafted["skipped"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|s| s["tenant"] == t3.as_str()
                && s["reason"].as_str().unwrap().contains("billing.nip")),
        "{drafted}"
    );
    let text = r.run(&["invoices", "draft", &month]);
    assert!(
        text.stdout.contains("no new invoice")
            && text.stdout.contains(&format!("not invoiced: {t3}")),
        "{}",
        text.stdout
    );
    let mut pln_total = Decimal::ZERO;
    for (row, tenant) in rows.iter().zip([&t1, &t2]) {
        let line = billing["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["tenant"] == tenant.as_str())
            .unwrap();
        let net = dec(&row["net"]);
        assert_eq!(
            net,
            dec(&line["client_cost_pln"]),
            "{tenant}: net is the month's PLN billing"
        );
        assert!(net > Decimal::ZERO);
        assert_eq!(dec(&row["vat"]), round2(net * Decimal::new(23, 2)));
        assert_eq!(dec(&row["gross"]), net + dec(&row["vat"]));
        pln_total += net;
        let number = row["number"].as_str().unwrap();
        let xml = r.run(&["invoices", "show", number, "--xml"]).stdout;
        xmllint_ok(&f.dir, number, &xml);
        assert_eq!(element(&xml, "P_13_1"), format!("{net:.2}"));
        assert_eq!(element(&xml, "P_15"), format!("{:.2}", dec(&row["gross"])));
        assert_eq!(element(&xml, "P_6_Od"), first.to_string());
        assert_eq!(element(&xml, "P_6_Do"), last.to_string());
        assert!(xml.contains(&format!("<NIP>{SELLER_NIP}</NIP>")));
        let shown = r.run(&["invoices", "show", number]);
        assert!(
            shown.stdout.contains("Faktura VAT")
                && shown.stdout.contains(&format!("tenant {tenant}")),
            "{}",
            shown.stdout
        );
    }
    let billed: Decimal = billing["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["tenant"] != t3.as_str())
        .map(|l| dec(&l["client_cost_pln"]))
        .sum();
    assert_eq!(pln_total, billed);

    // Unsent N (here 0) days after the close: invoice_unsent names both tenants.
    let alerts = f.dir.join("alerts.yaml");
    std::fs::write(
        &alerts,
        "evaluation_interval: 1m\nrules:\n  invoice_unsent: { days: 0 }\n",
    )
    .unwrap();
    f.evaluate_alerts(&alerts, None);
    let fired = unsent_alert(&r).expect("invoice_unsent");
    assert_eq!(fired["state"], "firing", "{fired}");
    assert!(
        fired.to_string().contains(&t1) && fired.to_string().contains(&t2),
        "{fired}"
    );

    // One sender at a time: while another holds the lock, send refuses and sends nothing.
    let mut holder = Command::new("psql")
        .arg(&f.database_url)
        .args([
            "-q",
            "-c",
            "SELECT pg_advisory_lock(hashtext('mai-fleet.invoices'), 0)",
            "-c",
            "SELECT pg_sleep(120)",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let mine = "FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let held = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        f.psql(&format!("SELECT count(*) {mine}")) == "1"
    });
    assert!(held, "the other sender's lock was never taken");
    let busy = r.run(&["invoices", "send", &month]);
    assert_eq!(busy.code, 1, "{}", busy.all());
    assert!(
        busy.stderr
            .contains("another `controller invoices send` is running"),
        "{}",
        busy.all()
    );
    assert_eq!(ksef.sends(), 0);
    f.psql(&format!("SELECT pg_terminate_backend(pid) {mine}"));
    let _ = holder.wait();

    // 429 then 200 for the first; 450 for the second: one accepted, the other
    // reported with KSeF's code and text.
    {
        let mut s = ksef.state.lock().unwrap();
        s.throttle = 1;
        s.reject = vec![n(2)];
    }
    let sent = r.run(&["invoices", "send", &month]);
    assert_eq!(sent.code, 3, "{}", sent.all());
    assert!(
        sent.stdout
            .contains(&format!("{} ({t1}): accepted as {SELLER_NIP}-", n(1))),
        "{}",
        sent.stdout
    );
    assert!(
        sent.stdout.contains(&format!(
            "{} ({t2}): REJECTED by KSeF: 450 Błąd weryfikacji semantyki",
            n(2)
        )),
        "{}",
        sent.stdout
    );
    let posts = ksef
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|q| q.starts_with("POST") && q.ends_with("/invoices"))
        .count();
    assert_eq!(
        (posts, ksef.received(&n(1)), ksef.received(&n(2))),
        (3, 1, 1),
        "one 429 waited out, each invoice received once"
    );
    // A re-run leaves the refused one alone and says so.
    let again = r.run(&["invoices", "send", &month]);
    assert_eq!(again.code, 3, "{}", again.all());
    assert!(
        again
            .stdout
            .contains(&format!("not sent again (--retry-rejected): {}", n(2))),
        "{}",
        again.stdout
    );
    assert_eq!(ksef.sends(), 2);
    {
        // The access token expires mid-session this time: renewed, not fatal.
        let mut s = ksef.state.lock().unwrap();
        s.reject.clear();
        s.expire_access = true;
    }
    let retried = r.run(&["invoices", "send", &month, "--retry-rejected"]);
    assert_eq!(retried.code, 0, "{}", retried.all());
    assert_eq!(ksef.received(&n(2)), 2);
    assert!(ksef
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .any(|q| q == "POST /v2/auth/token/refresh"));

    // Sent twice more: nothing reaches KSeF again.
    let before = ksef.sends();
    let twice = r.run(&["invoices", "send", &month]);
    assert_eq!(twice.code, 0, "{}", twice.all());
    assert!(
        twice.stdout.contains("2 accepted before"),
        "{}",
        twice.stdout
    );
    assert_eq!(ksef.sends(), before);
    let list = r.json(&["invoices", "list", &month]);
    for seq in [1, 2] {
        let i = invoice(&list, &n(seq));
        assert_eq!(i["state"], "accepted");
        assert_eq!(i["has_upo"], true);
        let number = i["ksef_number"].as_str().unwrap();
        assert_eq!(number.len(), 35, "{number}");
        let upo = r.run(&["invoices", "show", &n(seq), "--upo"]).stdout;
        assert!(upo.contains(number) && upo.contains(&n(seq)), "{upo}");
    }
    f.evaluate_alerts(&alerts, None);
    assert_eq!(unsent_alert(&r).unwrap()["state"], "resolved");
    // A later month closed and never drafted, once the fleet invoices: named too.
    // (This month cannot be closed yet: its close is written as a later one would be.)
    let next = (last + chrono::Duration::days(1))
        .format("%Y-%m")
        .to_string();
    f.psql(&format!(
        "INSERT INTO billing_closes (month, closed_at, closed_by, rate_table) VALUES ('{next}-01', now() - interval '6 days', 'e2e', 'C');
         INSERT INTO billing_closed_lines (month, tenant_id, tokens, requests, raw_cost, client_cost, markup_rate)
         VALUES ('{next}-01', '{t2}', 10, 1, 0.1, 0.13, 1.3)"
    ));
    f.evaluate_alerts(&alerts, None);
    let undrafted =
        unsent_alert_of(&r, Some(&next)).expect("invoice_unsent for the undrafted month");
    assert_eq!(undrafted["state"], "firing", "{undrafted}");
    assert!(
        undrafted.to_string().contains("no invoices drafted")
            && undrafted.to_string().contains(&t2),
        "{undrafted}"
    );
    f.psql(&format!(
        "DELETE FROM billing_closed_lines WHERE month = '{next}-01'; DELETE FROM billing_closes WHERE month = '{next}-01'"
    ));
    f.evaluate_alerts(&alerts, None);
    assert_eq!(
        unsent_alert_of(&r, Some(&next)).unwrap()["state"],
        "resolved"
    );

    // The record of an accepted invoice lost: the resend is answered 440 and
    // recorded as the invoice KSeF holds.
    let first_number = invoice(&list, &n(1))["ksef_number"]
        .as_str()
        .unwrap()
        .to_string();
    f.psql(&format!("UPDATE invoices SET state = 'draft', ksef_number = NULL, upo = NULL, ksef_session = NULL WHERE number = '{}'", n(1)));
    let dup = r.run(&["invoices", "send", &month]);
    assert_eq!(dup.code, 0, "{}", dup.all());
    assert!(
        dup.stdout.contains(&format!("duplicate as {first_number}")),
        "{}",
        dup.stdout
    );
    let list = r.json(&["invoices", "list", &month]);
    assert_eq!(invoice(&list, &n(1))["ksef_number"], first_number.as_str());
    assert_eq!(invoice(&list, &n(1))["has_upo"], true);

    // Late usage for t1 after the close: a correction next run, the original untouched.
    let original = invoice(&list, &n(1)).clone();
    f.apply_ok(&spec(&f, &tenants(14), "PLN"), &[]);
    assert!(f.wait_health(f.base_port).is_some());
    f.agent_once("a");
    let late = r.json(&["billing", &month]);
    let adj = late["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["tenant"] == t1.as_str())
        .unwrap()["adjustment"]
        .clone();
    let kor = r.json(&["invoices", "draft", &month]);
    let kor = &kor["drafted"].as_array().unwrap()[..];
    assert_eq!(kor.len(), 1, "{kor:?}");
    assert_eq!(
        (
            kor[0]["number"].as_str().unwrap(),
            kor[0]["kind"].as_str().unwrap()
        ),
        (n(3).as_str(), "KOR")
    );
    assert_eq!(
        dec(&kor[0]["net"]),
        dec(&adj["client_cost_pln"]),
        "the correction is the late usage in PLN"
    );
    let xml = r.run(&["invoices", "show", &n(3), "--xml"]).stdout;
    xmllint_ok(&f.dir, &n(3), &xml);
    assert_eq!(element(&xml, "RodzajFaktury"), "KOR");
    assert_eq!(element(&xml, "NrFaKorygowanej"), n(1));
    assert_eq!(element(&xml, "NrKSeFFaKorygowanej"), first_number);
    let list = r.json(&["invoices", "list", &month]);
    for k in ["net", "gross", "xml_sha256", "ksef_number", "created_at"] {
        assert_eq!(
            invoice(&list, &n(1))[k],
            original[k],
            "original's {k} untouched"
        );
    }
    // The dashboard: a viewer reads, an admin sends.
    let port = f.base_port + 13;
    f.add_user("admin", PASSWORD);
    let mut viewer = f.controller_command(&[
        "user",
        "add",
        "viewer",
        "--role",
        "viewer",
        "--password-stdin",
    ]);
    let mut child = viewer.stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{PASSWORD}\n").as_bytes(),
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let spec_env = spec_path.display().to_string();
    let _server = f.serve_dashboard(
        port,
        &[
            ("MAI_FLEET_SPEC", &spec_env),
            ("MAI_FLEET_KSEF_URL", &ksef.url()),
        ],
    );
    let v = login(port, "viewer", PASSWORD).1.expect("viewer session");
    let page = v.get(&format!("/invoices?month={month}"));
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&n(1))
            && page.body.contains(&n(3))
            && page.body.contains("Only an admin may send"),
        "{}",
        page.body
    );
    let csrf = form_value(&page.body, "csrf").expect("csrf");
    assert_eq!(
        v.post_form("/invoices/send", &format!("csrf={csrf}&month={month}"))
            .status,
        403
    );
    assert_eq!(ksef.received(&n(3)), 0);
    let a = login(port, "admin", PASSWORD).1.expect("admin session");
    let page = a.get(&format!("/invoices?month={month}"));
    assert!(
        page.body.contains("Send 1 invoice(s) to KSeF"),
        "{}",
        page.body
    );
    let shown = a.get(&format!(
        "/invoices/view?number={}",
        n(3).replace('/', "%2F")
    ));
    assert_eq!(shown.status, 200);
    assert!(
        shown.body.contains("Faktura korygująca")
            && shown
                .body
                .contains("&#60;RodzajFaktury&#62;KOR&#60;/RodzajFaktury&#62;"),
        "{}",
        shown.body
    );
    let csrf = form_value(&page.body, "csrf").expect("csrf");
    assert_eq!(
        a.post_form("/invoices/send", &format!("csrf={csrf}&month={month}"))
            .status,
        303
    );
    assert_eq!(ksef.received(&n(3)), 1);
    let page = a.get(&format!("/invoices?month={month}"));
    assert!(
        !page.body.contains("Send 1 invoice") && page.body.matches("UPO</a>").count() == 3,
        "{}",
        page.body
    );
    let upo = a.get(&format!(
        "/invoices/upo?number={}",
        n(3).replace('/', "%2F")
    ));
    assert_eq!(upo.status, 200);
    assert!(upo.body.contains(&n(3)));
    assert_eq!(r.run(&["invoices", "send", &month]).code, 0);
    assert_eq!(ksef.received(&n(3)), 1);

    // The token: in no output, and not in the database.
    let dump = Command::new("/usr/lib/postgresql/15/bin/pg_dump")
        .arg(&f.database_url)
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains(&n(1)), "the dump holds the invoices");
    assert!(
        !dump.contains(TOKEN) && !f.transcript.borrow().contains(TOKEN),
        "the KSeF token leaked"
    );
}

#[test]
fn usd_invoices_convert_vat_at_table_a_of_the_last_business_day_before_the_tax_point() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("invoices-usd");
    let t1 = f.id("u1");
    let spec_path = spec(&f, &[(t1.as_str(), "a", 10, Some("1181653484"))], "USD");
    start_tenants(&f, &spec_path, 1, &["a"]);
    let (first, last, month) = last_month();
    let nbp = FakeNbp::start(f.base_port + 11, &[]);
    let r = Run {
        f: &f,
        env: vec![("MAI_FLEET_NBP_URL".into(), nbp.url())],
        spec: spec_path,
    };
    let from = (first - chrono::Duration::days(10)).to_string();
    assert_eq!(r.run(&["rates", "sync", "--from", &from]).code, 0);
    assert_eq!(r.run(&["billing", "close", &month]).code, 0);
    let billing = r.json(&["billing", &month]);
    let drafted = r.json(&["invoices", "draft", &month]);
    let row = &drafted["drafted"][0];
    // Art. 31a: the last day NBP published table A before the month's last day.
    let (day, _, _) = nbp.rate_for(last - chrono::Duration::days(1)).unwrap();
    let mid: Decimal = mai_fleet_e2e::nbp::mid(day).parse().unwrap();
    assert_eq!(row["rate_date"], day.to_string(), "{row}");
    assert_eq!(dec(&row["rate"]), mid);
    let net = dec(&row["net"]);
    assert_eq!(net, round2(dec(&billing["tenants"][0]["client_cost_usd"])));
    let vat = round2(net * Decimal::new(23, 2));
    assert_eq!(dec(&row["vat"]), vat);
    assert_eq!(
        dec(&row["vat_pln"]),
        round2(vat * mid),
        "P_14_1W = VAT × rate, rounded once"
    );
    let number = row["number"].as_str().unwrap();
    let xml = r.run(&["invoices", "show", number, "--xml"]).stdout;
    xmllint_ok(&f.dir, number, &xml);
    assert_eq!(element(&xml, "KodWaluty"), "USD");
    assert_eq!(element(&xml, "KursWaluty").parse::<Decimal>().unwrap(), mid);
    assert_eq!(
        element(&xml, "P_14_1W"),
        format!("{:.2}", round2(vat * mid))
    );
    assert_eq!(element(&xml, "P_15"), format!("{:.2}", net + vat));

    // KSeF's answers are a remote host's words: a refusal text with terminal escapes
    // and 200,000 characters is shown and kept cleaned and bounded; a KSeF number
    // that is not one (a path, no checksum) is refused, never stored nor put in a URL.
    let ksef = fake_ksef(&f);
    let r = Run {
        env: vec![("MAI_FLEET_KSEF_URL".into(), ksef.url())],
        ..r
    };
    {
        let mut s = ksef.state.lock().unwrap();
        s.reject = vec![number.to_string()];
        s.hostile_text = Some(format!(
            "\u{1b}]0;pwned\u{7}\u{1b}[2J{}",
            "Ż".repeat(200_000)
        ));
    }
    let refused = r.run(&["invoices", "send"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        !refused.all().contains('\u{1b}') && !refused.all().contains('\u{7}'),
        "terminal escapes passed through"
    );
    assert!(
        refused.stdout.len() < 4_000,
        "{} bytes of KSeF's text shown",
        refused.stdout.len()
    );
    let kept = f.psql(&format!(
        "SELECT length(ksef_text) FROM invoices WHERE number = '{number}'"
    ));
    assert!(
        kept.parse::<usize>().unwrap() <= 2_001,
        "{kept} characters kept"
    );
    {
        let mut s = ksef.state.lock().unwrap();
        s.reject.clear();
        s.hostile_number = Some("../../../auth/token/refresh".into());
    }
    let bad = r.run(&["invoices", "send", "--retry-rejected"]);
    assert_eq!(bad.code, 1, "{}", bad.all());
    assert!(bad.stderr.contains("is not a KSeF number"), "{}", bad.all());
    assert!(
        !ksef
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .any(|q| q.contains("..")),
        "a KSeF-made path was requested"
    );
    assert_eq!(f.psql(&format!("SELECT state || ' ' || coalesce(ksef_number, '-') FROM invoices WHERE number = '{number}'")), "sending -");
}
