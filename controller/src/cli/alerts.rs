//! `controller alerts list|silence|unsilence|evaluate|deliveries`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use mai_fleet::alerts::config::AlertsConfig;
use mai_fleet::alerts::{evaluate, Rule};
use mai_fleet::rates::RateTable;

use super::{out, outln, table, DatabaseArgs, OutputFormat};

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// Pending and firing alerts (`--all`: resolved ones too)
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Keep a tenant's alerts, a rule's, or a rule's for one tenant quiet for a while
    Silence {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        /// How long, e.g. 30m, 2h (default 2h)
        #[arg(long = "for", default_value = "2h", value_parser = mai_fleet::duration::parse)]
        duration: std::time::Duration,
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// End a silence now
    Unsilence {
        id: i64,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// One evaluation cycle now, then one delivery attempt per receiver (cron or tests)
    Evaluate {
        /// Poll OpenRouter for the keys of this spec first
        #[arg(long)]
        spec: Option<PathBuf>,
        #[arg(long, env = "MAI_FLEET_RATE_TABLE", default_value = "C")]
        rate_table: String,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// The delivery log: every notification, its receiver, attempts and last error
    Deliveries {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

fn actor() -> String {
    std::env::var("MAI_FLEET_ACTOR")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn run(cmd: AlertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AlertsCommand::List { all, output, db } => list(all, output, db).await,
        AlertsCommand::Silence {
            tenant,
            rule,
            duration,
            comment,
            output,
            db,
        } => silence(tenant, rule, duration, comment, output, db).await,
        AlertsCommand::Unsilence { id, db } => unsilence(id, db).await,
        AlertsCommand::Evaluate {
            spec,
            rate_table,
            output,
            db,
        } => evaluate_once(spec, rate_table, output, db).await,
        AlertsCommand::Deliveries { limit, output, db } => deliveries(limit, output, db).await,
    }
}

async fn list(all: bool, output: OutputFormat, db: DatabaseArgs) -> anyhow::Result<ExitCode> {
    let store = db.connect().await?;
    let alerts = store.alerts_listed(all).await?;
    if let OutputFormat::Json = output {
        outln!("{}", serde_json::to_string_pretty(&alerts)?)?;
    } else {
        let mut rows = vec![["STATE", "RULE", "TENANT", "SINCE", "SUMMARY"]
            .map(String::from)
            .to_vec()];
        for a in &alerts {
            rows.push(vec![
                a.state.clone(),
                a.rule.clone(),
                a.tenant_id.clone().unwrap_or_else(|| "-".into()),
                a.fired_at
                    .unwrap_or(a.active_since)
                    .format("%Y-%m-%d %H:%M UTC")
                    .to_string(),
                a.annotations["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ]);
        }
        out!("{}", table(&rows))?;
    }
    let firing = alerts.iter().any(|a| a.state == "firing");
    Ok(ExitCode::from(if firing { 3 } else { 0 }))
}

async fn silence(
    tenant: Option<String>,
    rule: Option<String>,
    duration: std::time::Duration,
    comment: String,
    output: OutputFormat,
    db: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        tenant.is_some() || rule.is_some(),
        "say what to silence: --tenant T, --rule R, or both"
    );
    let rule = rule
        .map(|r| r.parse::<Rule>())
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let store = db.migrated().await?;
    let s = store
        .add_silence(
            tenant.as_deref(),
            rule,
            duration.as_secs() as i64,
            &actor(),
            &comment,
        )
        .await?;
    match output {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&s)?)?,
        _ => outln!(
            "silence #{} until {} ({}{})",
            s.id,
            s.expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
            s.tenant_id
                .as_deref()
                .map(|t| format!("tenant {t}"))
                .unwrap_or_default(),
            s.rule
                .as_deref()
                .map(|r| format!(" rule {r}"))
                .unwrap_or_default()
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn unsilence(id: i64, db: DatabaseArgs) -> anyhow::Result<ExitCode> {
    let store = db.connect().await?;
    anyhow::ensure!(store.end_silence(id).await?, "no active silence #{id}");
    eprintln!("silence #{id} ended");
    Ok(ExitCode::SUCCESS)
}

async fn evaluate_once(
    spec: Option<PathBuf>,
    rate_table: String,
    output: OutputFormat,
    db: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let config = AlertsConfig::from_env()?;
    let table: RateTable = rate_table.parse().map_err(anyhow::Error::msg)?;
    let store = db.migrated().await?;
    let spec = match spec {
        Some(path) => Some(
            mai_fleet::spec::load(&path)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("loading the spec for its keys")?,
        ),
        None => None,
    };
    let round = evaluate::round(&store, &config, table, spec).await?;
    if let Some(e) = &round.account_error {
        eprintln!("alerts: OpenRouter account: {e}");
    }
    let (polled, report, sent) = (round.polled, &round.cycle, round.sent);
    match output {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::json!({"snapshots": polled, "duration_ms": report.duration.as_millis() as u64, "queries": report.queries,
                "findings": report.candidates, "changes": report.transitions, "queued": report.notifications,
                "silenced": report.silenced, "sent": sent})
        )?,
        _ => eprintln!(
            "alerts: {} snapshot(s); cycle {} ms, {} queries: {} finding(s), {} change(s), {} queued, {} silenced, {} sent",
            polled,
            report.duration.as_millis(),
            report.queries,
            report.candidates,
            report.transitions,
            report.notifications,
            report.silenced,
            sent
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn deliveries(
    limit: i64,
    output: OutputFormat,
    db: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let store = db.connect().await?;
    let log = store.deliveries(limit).await?;
    if let OutputFormat::Json = output {
        outln!("{}", serde_json::to_string_pretty(&log)?)?;
    } else {
        let mut rows = vec![[
            "ID",
            "RECEIVER",
            "STATUS",
            "STATE",
            "ATTEMPTS",
            "CREATED",
            "LAST ERROR",
        ]
        .map(String::from)
        .to_vec()];
        for d in &log {
            rows.push(vec![
                d.id.to_string(),
                d.receiver.clone(),
                d.status.clone(),
                d.state.clone(),
                d.attempts.to_string(),
                d.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                d.last_error.clone().unwrap_or_default(),
            ]);
        }
        out!("{}", table(&rows))?;
    }
    Ok(ExitCode::SUCCESS)
}
