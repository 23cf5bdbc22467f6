//! `controller billing`, `controller rates`, `controller user` and `controller serve`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Subcommand, ValueEnum};

use mai_fleet::billing::money::{format_count, format_pln, format_usd};
use mai_fleet::billing::{self, fleet_today, Month, MonthReport};
use mai_fleet::rates::nbp::NbpClient;
use mai_fleet::rates::{schedule, RateTable};
use mai_fleet::store::Store;

use super::table;

#[derive(Clone, Copy, ValueEnum, Default)]
pub enum BillingOutput {
    #[default]
    Table,
    Json,
    Csv,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BillingArgs {
    #[command(subcommand)]
    pub command: Option<BillingCommand>,
    /// The month, YYYY-MM (default: this month, Warsaw time)
    pub month: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: BillingOutput,
    #[command(flatten)]
    pub common: BillingCommon,
}

#[derive(Args)]
pub struct BillingCommon {
    /// NBP table for PLN: C (ask, default) or A (mid)
    #[arg(long, env = "MAI_FLEET_RATE_TABLE", default_value = "C")]
    pub rate_table: String,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Subcommand)]
pub enum BillingCommand {
    /// Freeze a month that has ended: later usage for it shows as an adjustment
    Close {
        month: String,
        #[arg(long, value_enum, default_value_t)]
        output: BillingOutput,
        #[command(flatten)]
        common: BillingCommon,
    },
}

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
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// The rate a day uses (its table or the last before it, 7 days back at most)
    Show {
        /// The day (default: today, Warsaw)
        #[arg(long)]
        date: Option<NaiveDate>,
        #[arg(long, env = "MAI_FLEET_RATE_TABLE", default_value = "C")]
        table: String,
        #[arg(long, value_enum, default_value_t)]
        output: super::OutputFormat,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a dashboard user, or set a new password (ends their sessions)
    Add {
        name: String,
        /// Read the password from standard input (first line), never from the command line
        #[arg(long, required = true)]
        password_stdin: bool,
        /// viewer reads; admin also closes months, silences alerts and manages users
        #[arg(long, value_parser = ["viewer", "admin"], default_value = "admin")]
        role: String,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// The dashboard's users, their roles and live sessions
    List {
        #[arg(long, value_enum, default_value_t)]
        output: super::OutputFormat,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Remove a user; their sessions end at once
    Remove {
        name: String,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

pub(super) fn rate_table(text: &str) -> anyhow::Result<RateTable> {
    text.parse().map_err(anyhow::Error::msg)
}

fn month(text: Option<&str>) -> anyhow::Result<Month> {
    Month::parse_or_current(text).map_err(anyhow::Error::msg)
}

pub async fn billing(args: BillingArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(BillingCommand::Close {
            month: m,
            output,
            common,
        }) => {
            let store = Store::connect(&common.database_url).await?;
            store.migrate().await?;
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
            let store = Store::connect(&args.common.database_url).await?;
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

fn print_report(r: &MonthReport, output: BillingOutput) -> anyhow::Result<()> {
    match output {
        BillingOutput::Json => println!("{}", serde_json::to_string_pretty(&r.to_json())?),
        BillingOutput::Csv => print!("{}", r.to_csv()),
        BillingOutput::Table => {
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
            print!("{}", table(&rows));
            match (&r.rate, &r.notice) {
                (Some(rate), _) => println!(
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
                ),
                (None, Some(n)) => println!("{}: {n}", r.month),
                (None, None) => {}
            }
        }
    }
    Ok(())
}

pub async fn rates(cmd: RatesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RatesCommand::Sync {
            from,
            to,
            table,
            database_url,
        } => {
            let table = rate_table(&table)?;
            let to = to.unwrap_or_else(fleet_today);
            anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
            let store = Store::connect(&database_url).await?;
            store.migrate().await?;
            let nbp = NbpClient::from_env();
            let n = schedule::sync_range(&store, &nbp, table, from, to)
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
            database_url,
        } => {
            let table = rate_table(&table)?;
            let day = date.unwrap_or_else(fleet_today);
            let store = Store::connect(&database_url).await?;
            let rate = store.rate_on(table, day).await?;
            match output {
                super::OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"date": day, "table": table.code(), "rate": rate})
                ),
                super::OutputFormat::Text => match &rate {
                    Some(r) => println!(
                        "{day}: {} PLN/USD ({}, table {} of {})",
                        r.rate,
                        table.describe(),
                        r.table_no,
                        r.effective_date
                    ),
                    None => println!(
                        "{day}: no {} rate for this day or the 7 days before it",
                        table.describe()
                    ),
                },
            }
            Ok(ExitCode::from(if rate.is_some() { 0 } else { 3 }))
        }
    }
}

pub async fn user(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let (name, role, database_url) = match cmd {
        UserCommand::Add {
            name,
            password_stdin: _,
            role,
            database_url,
        } => (name, role, database_url),
        UserCommand::List {
            output,
            database_url,
        } => {
            let store = Store::connect(&database_url).await?;
            store.migrate().await?;
            let users = store.users().await?;
            match output {
                super::OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&users)?),
                _ => {
                    println!("{:<24} {:<7} {:<20} SESSIONS", "USER", "ROLE", "CREATED");
                    for u in &users {
                        println!(
                            "{:<24} {:<7} {:<20} {}",
                            u.name,
                            u.role,
                            u.created_at.format("%Y-%m-%d %H:%M UTC"),
                            u.sessions
                        );
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        UserCommand::Remove { name, database_url } => {
            let store = Store::connect(&database_url).await?;
            store.migrate().await?;
            anyhow::ensure!(store.remove_user(&name).await?, "no dashboard user {name}");
            println!("dashboard user {name} removed; their sessions ended");
            return Ok(ExitCode::SUCCESS);
        }
    };
    mai_fleet::spec::name_label(&name)
        .map_err(|hint| anyhow::anyhow!("user name `{name}` is not valid: {hint}"))?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the password from standard input")?;
    let password = input.lines().next().unwrap_or("").to_string();
    anyhow::ensure!(
        password.chars().count() >= 12,
        "the password must have at least 12 characters"
    );
    let hash = mai_fleet::web::hash_password(&password).map_err(anyhow::Error::msg)?;
    let store = Store::connect(&database_url).await?;
    store.migrate().await?;
    let created = store.put_user(&name, &hash).await?;
    store.set_user_role(&name, &role).await?;
    eprintln!(
        "dashboard user {name} ({role}) {}",
        if created {
            "created"
        } else {
            "has a new password; their sessions ended"
        }
    );
    Ok(ExitCode::SUCCESS)
}
