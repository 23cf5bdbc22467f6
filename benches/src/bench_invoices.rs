//! Drafting a closed month's invoices for 1,000 tenants (issue 22): the month's
//! billing read, 1,000 FA(3) documents rendered, NIPs and arithmetic checked, all of
//! them validated against the official schema (one xmllint run), numbered and stored
//! in one transaction. The goal: at most 5 s in one run; the time per invoice beside it.
//!
//!     cargo run --release --bin bench-invoices
//!
//! Needs `MAI_FLEET_PG_ADMIN_URL` (scripts/postgres.sh) and xmllint.

use std::collections::HashMap;
use std::time::Instant;

use mai_fleet::invoices::{self, DraftInput};
use mai_fleet_e2e::psql;

fn fail(msg: &str) -> ! {
    eprintln!("bench-invoices: {msg}");
    std::process::exit(1)
}

/// A valid NIP for `i` (nine digits, then the mod-11 check digit; 10 is skipped).
fn nip(i: usize) -> String {
    const W: [u32; 9] = [6, 5, 7, 2, 3, 4, 5, 6, 7];
    (0..)
        .map(|k| format!("{:09}", 123_000_000 + i * 97 + k))
        .find_map(|nine| {
            let sum: u32 = nine
                .chars()
                .zip(W)
                .map(|(c, w)| c.to_digit(10).unwrap_or(0) * w)
                .sum();
            (sum % 11 != 10).then(|| format!("{nine}{}", sum % 11))
        })
        .unwrap_or_else(|| fail("no NIP"))
}

fn main() {
    let admin = std::env::var("MAI_FLEET_PG_ADMIN_URL")
        .unwrap_or_else(|_| fail("MAI_FLEET_PG_ADMIN_URL is not set: . scripts/postgres.sh"));
    let n: usize = std::env::var("BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let url = mai_fleet_e2e::fresh_database(&admin, "mai_fleet_bench_invoices");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let store = rt.block_on(async {
        let store = mai_fleet::store::Store::connect(&url)
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        store
            .migrate()
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        store
    });
    // A closed November: each tenant's frozen line, PLN at a table C rate.
    psql(
        &url,
        &format!(
            "INSERT INTO billing_closes (month, closed_by, rate_table) VALUES ('2026-11-01', 'bench', 'C');
             INSERT INTO billing_closed_lines (month, tenant_id, tokens, requests, raw_cost, client_cost, markup_rate, rate, rate_date, rate_table_no, client_cost_pln)
             SELECT '2026-11-01', 't' || lpad(i::text, 4, '0'), 1000 * i, 10 * i, 0.37 * i, 0.481 * i, 1.3, 3.6412, '2026-11-30', '232/C/NBP/2026', round(0.481 * i * 3.6412, 2)
             FROM generate_series(1, {n}) AS i;"
        ),
    );
    let dir = std::env::temp_dir().join(format!("bench-invoices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&e.to_string()));
    let mut spec = format!(
        "version: 1\nfleet: bench\nhosts:\n  - name: h1\n    docker: unix:///var/run/docker.sock\n    data_root: {}\ntenants:\n",
        dir.display()
    );
    let mut env = HashMap::new();
    for i in 1..=n {
        let key = format!("sk-or-v1-{:064x}", i);
        env.insert(format!("K{i}"), key);
        spec.push_str(&format!(
            "  - id: t{i:04}\n    name: \"Klient {i} Sp. z o.o.\"\n    org_id: org_{i}\n    host: h1\n    image: mai/app:1\n    openrouter: {{ api_key: \"${{env:K{i}}}\" }}\n    billing: {{ nip: \"{}\", address: \"ul. Długa {i}, 00-001 Warszawa\" }}\n    port: {}\n",
            nip(i),
            10000 + i
        ));
    }
    spec.push_str("invoicing:\n  seller: { nip: \"7740001454\", name: \"mAI Sp. z o.o.\", address: \"ul. Przykładowa 1, 00-001 Warszawa\" }\n");
    let path = dir.join("tenants.yaml");
    let spec =
        mai_fleet::spec::load_str(&path, &spec, &env).unwrap_or_else(|e| fail(&format!("{e}")));
    let started = Instant::now();
    let report = rt
        .block_on(invoices::draft(
            &store,
            DraftInput {
                spec: &spec,
                month: "2026-11".parse().unwrap_or_else(|_| fail("month")),
                today: chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap_or_else(|| fail("day")),
                now: chrono::Utc::now(),
                actor: "bench",
                dry_run: false,
            },
        ))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    if report.drafted.len() != n {
        fail(&format!("{} drafted, {n} expected", report.drafted.len()));
    }
    println!(
        "{n} invoices drafted, checked (NIP, arithmetic, FA(3) schema) and stored: {:.2} s, {:.2} ms per invoice (goal: at most 5 s)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / n as f64
    );
}
