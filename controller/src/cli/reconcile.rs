//! `controller reconcile TENANT [--month]`: OpenRouter's ledger for the tenant's
//! key(s) against what its store recorded, per day, and the models that differ.

use std::process::ExitCode;

use mai_fleet::billing::money::{format_usd, format_usd_or_dash};
use mai_fleet::billing::Month;

use super::{out, outln, table, DatabaseArgs, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    pub tenant: String,
    /// YYYY-MM (default: this month)
    #[arg(long)]
    pub month: Option<String>,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// Exit 0 every day agrees (within a cent), 3 some day differs.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let month = Month::parse_or_current(args.month.as_deref()).map_err(anyhow::Error::msg)?;
    let store = args.db.migrated().await?;
    let days = store
        .reconcile_days(&args.tenant, month.first_day(), month.last_day())
        .await?;
    let cent = rust_decimal::Decimal::new(1, 2);
    let models: Vec<_> = store
        .model_gaps(400, cent)
        .await?
        .into_iter()
        .filter(|g| g.tenant == args.tenant && month.contains(g.day))
        .collect();
    let differs = days.iter().any(|d| d.difference_usd.abs() >= cent);
    if args.output == OutputFormat::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "tenant": args.tenant, "month": month.to_string(), "days": days, "models": models,
            }))?
        )?;
    } else {
        let mut rows = vec![["DAY", "OPENROUTER", "RECORDED", "DIFFERENCE"]
            .map(String::from)
            .to_vec()];
        for d in &days {
            rows.push(vec![
                d.day.to_string(),
                format_usd_or_dash(d.openrouter_usd),
                format_usd_or_dash(d.recorded_usd),
                format_usd(d.difference_usd),
            ]);
        }
        out!("{}", table(&rows))?;
        for g in &models {
            outln!(
                "{} {}: OpenRouter {}, recorded {}",
                g.day,
                g.model,
                format_usd(g.openrouter_usd),
                format_usd(g.recorded_usd)
            )?;
        }
        if days.iter().all(|d| d.openrouter_usd.is_none()) {
            outln!("note: no OpenRouter ledger for this tenant in {month}: its key is not managed by the fleet, or `serve` has not snapshotted /activity yet")?;
        }
    }
    Ok(ExitCode::from(if differs { 3 } else { 0 }))
}
