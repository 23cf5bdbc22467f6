//! `controller usage`: usage per tenant per day as the agents recorded it.

use std::process::ExitCode;

use mai_fleet::store::reports::UsageDay;

use super::{out, outln, table, DatabaseArgs, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    /// First day, YYYY-MM-DD (default: 30 days ago)
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
    /// Last day, YYYY-MM-DD (default: today)
    #[arg(long)]
    pub to: Option<chrono::NaiveDate>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = args.db.connect().await?;
    let to = args.to.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let from = args.from.unwrap_or(to - chrono::Duration::days(30));
    let days = store.usage_by_day(from, to, args.tenant.as_deref()).await?;
    print_usage(&days, args.output)?;
    Ok(ExitCode::SUCCESS)
}

fn print_usage(days: &[UsageDay], output: OutputFormat) -> anyhow::Result<()> {
    if let OutputFormat::Json = output {
        outln!("{}", serde_json::to_string_pretty(days)?)?;
        return Ok(());
    }
    let mut rows = vec![["TENANT", "DATE", "TOKENS", "REQUESTS", "RAW COST (USD)"]
        .map(String::from)
        .to_vec()];
    for d in days {
        rows.push(vec![
            d.tenant.clone(),
            d.date.to_string(),
            d.tokens.to_string(),
            d.requests.to_string(),
            d.raw_cost.to_string(),
        ]);
    }
    out!("{}", table(&rows))?;
    Ok(())
}
