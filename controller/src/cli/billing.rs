//! `controller billing [MONTH]` and `billing close MONTH`: per tenant and month in USD
//! and PLN, as a table, JSON or CSV.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use mai_fleet::billing::money::{format_count, format_pln, format_usd};
use mai_fleet::billing::{self, fleet_today, Month, MonthReport};
use mai_fleet::rates::RateTable;

use super::{out, outln, table, DatabaseArgs, OutputFormat};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BillingArgs {
    #[command(subcommand)]
    pub command: Option<BillingCommand>,
    /// The month, YYYY-MM (default: this month, Warsaw time)
    pub month: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub common: BillingCommon,
}

#[derive(Args)]
pub struct BillingCommon {
    /// NBP table for PLN: C (ask, default) or A (mid)
    #[arg(long, env = "MAI_FLEET_RATE_TABLE", default_value = "C")]
    pub rate_table: String,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

#[derive(Subcommand)]
pub enum BillingCommand {
    /// Freeze a month that has ended: later usage for it shows as an adjustment
    Close {
        month: String,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
        #[command(flatten)]
        common: BillingCommon,
    },
}

pub(super) fn rate_table(text: &str) -> anyhow::Result<RateTable> {
    text.parse().map_err(anyhow::Error::msg)
}

fn month(text: Option<&str>) -> anyhow::Result<Month> {
    Month::parse_or_current(text).map_err(anyhow::Error::msg)
}

pub async fn run(args: BillingArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(BillingCommand::Close {
            month: m,
            output,
            common,
        }) => {
            let store = common.db.migrated().await?;
            let actor = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let report = billing::close_month(
                &store,
                month(Some(&m))?,
                rate_table(&common.rate_table)?,
                fleet_today(),
                &actor,
            )
            .await?;
            eprintln!(
                "{} closed: {} tenant line(s) frozen",
                report.month,
                report.lines.len()
            );
            print_report(&report, output)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let store = args.common.db.connect().await?;
            let report = billing::month_report(
                &store,
                month(args.month.as_deref())?,
                rate_table(&args.common.rate_table)?,
                fleet_today(),
            )
            .await?;
            print_report(&report, args.output)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_report(r: &MonthReport, output: OutputFormat) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&r.to_json())?)?,
        OutputFormat::Csv => out!("{}", r.to_csv())?,
        OutputFormat::Text => {
            let mut rows = vec![[
                "TENANT",
                "TOKENS",
                "REQUESTS",
                "RAW USD",
                "MARKUP",
                "CLIENT USD",
                "PROFIT USD",
                "CLIENT PLN",
                "ADJUSTMENT",
            ]
            .map(String::from)
            .to_vec()];
            for l in &r.lines {
                rows.push(vec![
                    l.tenant.clone(),
                    format_count(l.tokens),
                    format_count(l.requests),
                    format_usd(l.raw_cost_usd()),
                    l.markup_rate.normalize().to_string(),
                    format_usd(l.client_cost_usd()),
                    format_usd(l.profit_usd()),
                    l.client_cost_pln
                        .map(format_pln)
                        .unwrap_or_else(|| "-".into()),
                    l.adjustment
                        .as_ref()
                        .map(|a| format!("{:+} tokens, {}", a.tokens, format_usd(a.client_cost)))
                        .unwrap_or_default(),
                ]);
            }
            let t = r.totals();
            rows.push(vec![
                "TOTAL".into(),
                format_count(t.tokens),
                format_count(t.requests),
                format_usd(t.raw_cost_usd),
                String::new(),
                format_usd(t.client_cost_usd),
                format_usd(t.profit_usd),
                t.client_cost_pln
                    .map(format_pln)
                    .unwrap_or_else(|| "-".into()),
                String::new(),
            ]);
            out!("{}", table(&rows))?;
            match (&r.rate, &r.notice) {
                (Some(rate), _) => outln!(
                    "{}{}: PLN at {} of {} ({}), for {}",
                    r.month,
                    r.closed
                        .as_ref()
                        .map(|c| format!(" (closed {})", c.closed_at.format("%Y-%m-%d")))
                        .unwrap_or_default(),
                    rate.rate,
                    rate.effective_date,
                    rate.table_no,
                    r.rate_day
                )?,
                (None, Some(n)) => outln!("{}: {n}", r.month)?,
                (None, None) => {}
            }
        }
    }
    Ok(())
}
