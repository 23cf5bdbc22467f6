//! `controller invoices draft|list|show|send`: KSeF FA(3) invoices of closed months.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{Days, Utc};
use clap::Subcommand;

use mai_fleet::billing::money::{format_in, format_pln};
use mai_fleet::billing::{fleet_today, Month};
use mai_fleet::invoices::ksef::{self, Ksef};
use mai_fleet::invoices::send::{self as sending, SendOptions};
use mai_fleet::invoices::{self, DraftInput};
use mai_fleet::jobs::rates as rate_jobs;
use mai_fleet::rates::nbp::NbpClient;
use mai_fleet::rates::RateTable;
use mai_fleet::spec::InvoiceCurrency;
use mai_fleet::store::invoices::InvoiceRow;

use super::{actor, outln, table, DatabaseArgs, OutputFormat, SpecArgs};

#[derive(Subcommand)]
pub enum InvoicesCommand {
    /// Draft a closed month's invoices (and corrections of late usage), checked and stored
    Draft {
        /// The month, YYYY-MM (closed with `billing close`)
        month: String,
        /// Check and show the drafts, store nothing (no number is taken)
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        spec: SpecArgs,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// The invoices of a month (every month without one) and their KSeF state
    List {
        month: Option<String>,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// One invoice, readable; `--xml` its FA(3) document, `--upo` KSeF's receipt
    Show {
        number: String,
        #[arg(long, conflicts_with = "upo")]
        xml: bool,
        #[arg(long)]
        upo: bool,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Send drafts to KSeF, keep KSeF numbers and receipts (exit 0 all accepted, 3 not all)
    Send {
        /// Only this month's, YYYY-MM (default: every unsent invoice)
        month: Option<String>,
        #[command(flatten)]
        spec: SpecArgs,
        /// Send again what KSeF refused before (after the cause was fixed on its side)
        #[arg(long)]
        retry_rejected: bool,
        /// How long one invoice's status and receipt are awaited
        #[arg(long, default_value = "120s", value_parser = mai_fleet::duration::parse)]
        wait: Duration,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

fn month(text: &str) -> anyhow::Result<Month> {
    text.parse().map_err(anyhow::Error::msg)
}

fn rows_table(rows: &[InvoiceRow]) -> String {
    let mut t = vec![[
        "NUMBER",
        "KIND",
        "TENANT",
        "BUYER NIP",
        "NET",
        "VAT",
        "GROSS",
        "STATE",
        "KSEF NUMBER",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        let state = match (r.state.as_str(), r.ksef_code) {
            ("rejected", Some(c)) => format!("rejected ({c})"),
            (s, _) => s.to_string(),
        };
        t.push(vec![
            r.number.clone(),
            r.kind.clone(),
            r.tenant_id.clone(),
            r.buyer_nip.clone(),
            format_in(&r.currency, r.net),
            format_in(&r.currency, r.vat),
            format_in(&r.currency, r.gross),
            state,
            r.ksef_number.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&t)
}

pub async fn run(cmd: InvoicesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        InvoicesCommand::Draft {
            month,
            dry_run,
            spec,
            output,
            db,
        } => draft(month, dry_run, spec, output, db).await,
        InvoicesCommand::List { month, output, db } => list(month, output, db).await,
        InvoicesCommand::Show {
            number,
            xml,
            upo,
            output,
            db,
        } => show(number, xml, upo, output, db).await,
        InvoicesCommand::Send {
            month,
            spec,
            retry_rejected,
            wait,
            output,
            db,
        } => send(month, spec, retry_rejected, wait, output, db).await,
    }
}

async fn draft(
    m: String,
    dry_run: bool,
    spec: SpecArgs,
    output: OutputFormat,
    db: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let month = month(&m)?;
    let spec = spec.load()?;
    let store = db.migrated().await?;
    if spec
        .invoicing
        .as_ref()
        .is_some_and(|i| i.currency == InvoiceCurrency::Usd)
    {
        // The table A rates art. 31a needs, fetched if NBP answers; a rate
        // already stored is enough when it does not.
        let to = invoices::rate_day(month);
        let nbp = NbpClient::from_env();
        if let Err(e) =
            rate_jobs::sync_range(&store, &nbp, RateTable::A, to - Days::new(10), to).await
        {
            eprintln!("warning: NBP table A not fetched ({e}); using the rates stored");
        }
    }
    let report = invoices::draft(
        &store,
        DraftInput {
            spec: &spec,
            month,
            today: fleet_today(),
            now: Utc::now(),
            actor: &actor(),
            dry_run,
        },
    )
    .await?;
    if output == OutputFormat::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if report.drafted.is_empty() {
        outln!(
            "{month}: no new invoice ({} drafted before)",
            report.existing
        )?;
    } else {
        outln!(
            "{month}: {} invoice(s) drafted, checked against the FA(3) schema and {}",
            report.drafted.len(),
            if dry_run {
                "NOT stored (--dry-run)"
            } else {
                "stored"
            }
        )?;
        outln!("{}", rows_table(&report.drafted))?;
    }
    for s in &report.skipped {
        outln!("not invoiced: {}: {}", s.tenant, s.reason)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(
    m: Option<String>,
    output: OutputFormat,
    db: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let month = m.as_deref().map(month).transpose()?;
    let store = db.connect().await?;
    let rows = store.invoices(month.map(Month::first_day)).await?;
    match output {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&rows)?)?,
        _ if rows.is_empty() => outln!("no invoices")?,
        _ => outln!("{}", rows_table(&rows))?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(
    number: String,
    xml: bool,
    upo: bool,
    output: OutputFormat,
    db: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let store = db.connect().await?;
    let (row, doc, receipt) = store
        .invoice(&number)
        .await?
        .with_context(|| format!("no invoice numbered {number}"))?;
    if xml {
        outln!("{doc}")?;
    } else if upo {
        match receipt {
            Some(u) => outln!("{u}")?,
            None => anyhow::bail!("{number} has no KSeF receipt (state: {})", row.state),
        }
    } else if output == OutputFormat::Json {
        outln!("{}", serde_json::to_string_pretty(&row)?)?;
    } else {
        outln!("{}", readable(&row))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn send(
    m: Option<String>,
    spec: SpecArgs,
    retry_rejected: bool,
    wait: Duration,
    output: OutputFormat,
    db: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let month = m.as_deref().map(month).transpose()?;
    let spec = spec.load()?;
    let env = spec
        .invoicing
        .as_ref()
        .and_then(|i| i.ksef.as_ref())
        .map(|k| k.environment)
        .context("the spec's `invoicing:` has no `ksef:` (environment and token)")?;
    let store = db.migrated().await?;
    let client = Ksef::new(ksef::base_url(env));
    let report = sending::send(
        &store,
        &spec,
        &client,
        &SendOptions {
            month,
            retry_rejected,
            wait,
        },
    )
    .await?;
    if output == OutputFormat::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for o in &report.outcomes {
            let what = match o.result {
                "accepted" | "duplicate" => format!(
                    "{} as {}{}{}",
                    o.result,
                    o.ksef_number.as_deref().unwrap_or("-"),
                    if o.result == "duplicate" {
                        " (KSeF already had it: recorded, not resent)"
                    } else {
                        ""
                    },
                    if o.upo {
                        ", receipt kept"
                    } else {
                        ", receipt not yet made: `invoices send` again fetches it"
                    }
                ),
                "pending" => {
                    "sent; KSeF has not finished: `invoices send` again reads its status".into()
                }
                _ => format!(
                    "REJECTED by KSeF: {} {}",
                    o.code.map(|c| c.to_string()).unwrap_or_default(),
                    o.text.as_deref().unwrap_or("")
                ),
            };
            outln!("{} ({}): {what}", o.number, o.tenant)?;
        }
        if !report.rejected_before.is_empty() {
            outln!(
                "refused by KSeF before, not sent again (--retry-rejected): {}",
                report.rejected_before.join(", ")
            )?;
        }
        outln!(
            "{} sent or checked, {} accepted before",
            report.outcomes.len(),
            report.already_accepted
        )?;
    }
    Ok(if report.failed() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// An invoice as a person reads it: parties, period, amounts, KSeF.
pub fn readable(r: &InvoiceRow) -> String {
    let mut s = format!(
        "{} {} ({}), issued {}\n  buyer:  {} (NIP {}), tenant {}\n  period: {}\n  net {}  VAT {} % {}  gross {}\n",
        if r.kind == "KOR" { "Faktura korygująca" } else { "Faktura VAT" },
        r.number,
        r.currency,
        r.issue_date,
        r.buyer_name,
        r.buyer_nip,
        r.tenant_id,
        Month::of(r.month),
        format_in(&r.currency, r.net),
        r.vat_rate,
        format_in(&r.currency, r.vat),
        format_in(&r.currency, r.gross),
    );
    if let (Some(rate), Some(date), Some(no), Some(pln)) =
        (r.rate, r.rate_date, &r.rate_table_no, r.vat_pln)
    {
        s.push_str(&format!(
            "  rate:   {rate} PLN/USD, NBP table {no} of {date}; VAT in PLN {}\n",
            format_pln(pln)
        ));
    }
    s.push_str(&format!(
        "  KSeF:   {}{}{}\n  XML SHA-256 {}",
        r.state,
        r.ksef_number
            .as_ref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default(),
        r.ksef_text
            .as_ref()
            .filter(|_| r.state == "rejected")
            .map(|t| format!(" ({} {t})", r.ksef_code.unwrap_or_default()))
            .unwrap_or_default(),
        r.xml_sha256
    ));
    s
}
