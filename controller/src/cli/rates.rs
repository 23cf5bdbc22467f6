//! `controller rates sync --from D [--to D]` and `rates show [--date D]`: NBP tables.

use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use clap::Subcommand;

use mai_fleet::billing::fleet_today;
use mai_fleet::jobs::rates as rate_jobs;
use mai_fleet::rates::nbp::NbpClient;

use super::billing::rate_table;
use super::{outln, DatabaseArgs, OutputFormat};

#[derive(Subcommand)]
pub enum RatesCommand {
    /// Fetch NBP tables for a range of days (any length; 93 days per request)
    Sync {
        #[arg(long)]
        from: NaiveDate,
        /// Last day (default: today)
        #[arg(long)]
        to: Option<NaiveDate>,
        #[arg(long, env = "MAI_FLEET_RATE_TABLE", default_value = "C")]
        table: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// The rate a day uses (its table or the last before it, 7 days back at most)
    Show {
        /// The day (default: today, Warsaw)
        #[arg(long)]
        date: Option<NaiveDate>,
        #[arg(long, env = "MAI_FLEET_RATE_TABLE", default_value = "C")]
        table: String,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

pub async fn run(cmd: RatesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RatesCommand::Sync {
            from,
            to,
            table,
            db,
        } => {
            let table = rate_table(&table)?;
            let to = to.unwrap_or_else(fleet_today);
            anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
            let store = db.migrated().await?;
            let nbp = NbpClient::from_env();
            let n = rate_jobs::sync_range(&store, &nbp, table, from, to)
                .await
                .with_context(|| format!("NBP table {table} from {from} to {to}"))?;
            eprintln!(
                "NBP table {table}: {n} rate(s) from {from} to {to} stored (from {})",
                nbp.base_url()
            );
            Ok(ExitCode::SUCCESS)
        }
        RatesCommand::Show {
            date,
            table,
            output,
            db,
        } => {
            let table = rate_table(&table)?;
            let day = date.unwrap_or_else(fleet_today);
            let store = db.connect().await?;
            let rate = store.rate_on(table, day).await?;
            match output {
                OutputFormat::Json => outln!(
                    "{}",
                    serde_json::json!({"date": day, "table": table.code(), "rate": rate})
                )?,
                _ => match &rate {
                    Some(r) => outln!(
                        "{day}: {} PLN/USD ({}, table {} of {})",
                        r.rate,
                        table.describe(),
                        r.table_no,
                        r.effective_date
                    )?,
                    None => outln!(
                        "{day}: no {} rate for this day or the 7 days before it",
                        table.describe()
                    )?,
                },
            }
            Ok(ExitCode::from(if rate.is_some() { 0 } else { 3 }))
        }
    }
}
