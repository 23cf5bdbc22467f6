//! Command-line arguments and the human and JSON renderings of results.

pub mod alerts;
pub mod apply;
pub mod billing;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use mai_fleet::apply::{FleetError, FleetPlan};
use mai_fleet::plan::Action;
use mai_fleet::spec::{FleetSpec, SpecError};
use mai_fleet::store::reports::{TenantStatus, UsageDay};

#[derive(Parser)]
#[command(
    name = "controller",
    version,
    about = "mai-fleet controller: tenant containers of the mAI app on Docker hosts"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check a fleet spec: every error at once, each with file:line:col (exit 0 valid, 1 invalid, 2 unreadable)
    Validate {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show what apply would change (exit 0 nothing to change, 2 changes pending, 1 error)
    Plan {
        file: PathBuf,
        /// Plan removal of managed containers that are not in the spec
        #[arg(long)]
        prune: bool,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Create, update and verify tenant containers (exit 0 ok, 3 some tenants failed, 1 error)
    Apply(apply::ApplyArgs),
    /// Create or upgrade the fleet database schema
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Agent credentials of a host: `host add NAME` prints them once
    #[command(subcommand)]
    Host(HostCommand),
    /// Usage per tenant per day as the agents recorded it
    Usage {
        /// First day, YYYY-MM-DD (default: 30 days ago)
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Last day, YYYY-MM-DD (default: today)
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Billing per tenant for a month in USD and PLN; `billing close MONTH` freezes it
    Billing(billing::BillingArgs),
    /// NBP exchange rates: `rates sync --from D` backfills, `rates show` tells a day's rate
    #[command(subcommand)]
    Rates(billing::RatesCommand),
    /// Alerts: `list`, `silence`, `unsilence`, `evaluate` (one cycle), `deliveries`
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Dashboard users: `user add NAME --password-stdin`
    #[command(subcommand)]
    User(billing::UserCommand),
    /// The fleet dashboard, JSON API and /metrics over HTTP; fetches NBP rates on a schedule
    Serve(serve::ServeArgs),
    /// Every tenant's tracking (active/inactive and why), data age and agent (exit 0 all active, 3 not all, 1 error)
    Status {
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

pub fn print_usage(days: &[UsageDay], output: OutputFormat) -> anyhow::Result<()> {
    if let OutputFormat::Json = output {
        println!("{}", serde_json::to_string_pretty(days)?);
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
    print!("{}", table(&rows));
    Ok(())
}

pub fn print_status(tenants: &[TenantStatus], output: OutputFormat) -> anyhow::Result<()> {
    if let OutputFormat::Json = output {
        println!("{}", serde_json::to_string_pretty(tenants)?);
        return Ok(());
    }
    let age = |s: Option<i64>| s.map_or("-".to_string(), |s| format!("{s}s"));
    let mut rows = vec![[
        "TENANT",
        "HOST",
        "CONTAINER",
        "STATE",
        "TRACKING",
        "IN SPEC",
        "DATA AGE",
        "AGENT AGE",
        "REASONS",
    ]
    .map(String::from)
    .to_vec()];
    for t in tenants {
        rows.push(vec![
            t.tenant.clone(),
            t.host.clone().unwrap_or_default(),
            t.container.clone().unwrap_or_default(),
            t.container_state.clone().unwrap_or_default(),
            t.tracking.to_string(),
            if t.in_spec { "yes" } else { "NO" }.to_string(),
            age(t.last_data_age_s),
            age(t.agent_age_s),
            t.reasons.join("; "),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// Create the database role of NAME's agent (confined to NAME's tenants) and print its DATABASE_URL once
    Add {
        name: String,
        /// Give an existing host's agent a new password (the old one stops working)
        #[arg(long)]
        rotate: bool,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

/// The controller's database URL with the agent's role and password in place of its
/// own credentials.
pub fn agent_url(controller_url: &str, role: &str, password: &str) -> String {
    let (scheme, rest) = controller_url
        .split_once("://")
        .unwrap_or(("postgres", controller_url));
    let location = rest.rsplit_once('@').map_or(rest, |(_, l)| l);
    format!("{scheme}://{role}:{password}@{location}")
}

pub fn report_spec_error(file: &Path, e: &SpecError, output: OutputFormat) {
    match (e, output) {
        (SpecError::Invalid { diagnostics, .. }, OutputFormat::Json) => println!(
            "{}",
            serde_json::json!({"valid": false, "file": file.display().to_string(), "errors": diagnostics})
        ),
        (SpecError::Invalid { diagnostics, .. }, OutputFormat::Text) => {
            for d in diagnostics {
                eprintln!("{d}");
            }
            eprintln!(
                "{}: {} error(s); nothing was changed",
                file.display(),
                diagnostics.len()
            );
        }
        (SpecError::Unreadable { .. }, OutputFormat::Json) => println!(
            "{}",
            serde_json::json!({"valid": false, "file": file.display().to_string(), "unreadable": e.to_string()})
        ),
        (SpecError::Unreadable { .. }, OutputFormat::Text) => eprintln!("controller: {e}"),
    }
}

pub fn report_fleet_errors(errors: &[FleetError]) -> ExitCode {
    for e in errors {
        eprintln!("controller: error: {}", chain(e));
    }
    eprintln!(
        "controller: {} host(s) could not be planned; nothing was changed",
        errors.len()
    );
    ExitCode::from(1)
}

/// An error and its causes on one line, as `a: b: c`, skipping causes already
/// spelled out by the level above.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

pub fn describe(action: &Action) -> String {
    match action {
        Action::Create { desired, .. } => {
            format!("new container {} from {}", desired.name, desired.image)
        }
        Action::Update {
            desired, previous, ..
        } => {
            if previous.image != desired.image {
                format!("image {} -> {}", previous.image, desired.image)
            } else {
                format!(
                    "spec changed ({} -> {})",
                    previous.spec_hash(),
                    desired.hash_label()
                )
            }
        }
        Action::Start { current, .. } => format!("{} is {}; start it", current.name, current.state),
        Action::Unchanged { current, .. } => format!("{} running", current.name),
        Action::RemoveLeftover { container, .. } => {
            format!("leftover {} of an interrupted apply", container.name)
        }
        Action::Remove { container, .. } => {
            format!("{} is not in the spec (data kept)", container.name)
        }
        Action::Orphan { container, .. } => format!(
            "{} is not in the spec; kept (--prune removes it)",
            container.name
        ),
        Action::Blocked { reason, .. } => reason.clone(),
    }
}

pub fn print_plan(spec: &FleetSpec, plan: &FleetPlan, output: OutputFormat) -> anyhow::Result<()> {
    if let OutputFormat::Json = output {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan.to_json(&spec.fleet))?
        );
        return Ok(());
    }
    let mut rows = vec![vec![
        "HOST".into(),
        "TENANT".into(),
        "ACTION".into(),
        "DETAIL".into(),
    ]];
    for h in &plan.hosts {
        for a in &h.actions {
            rows.push(vec![
                h.engine.host.name.clone(),
                a.tenant().to_string(),
                a.verb().to_string(),
                describe(a),
            ]);
        }
    }
    print!("{}", table(&rows));
    println!(
        "fleet `{}`: {} change(s) pending",
        spec.fleet,
        plan.changes()
    );
    Ok(())
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let last = r.len().saturating_sub(1);
        for (i, cell) in r.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_url_replaces_credentials() {
        assert_eq!(
            agent_url(
                "postgres://admin:pw@db.example:5432/fleet?sslmode=require",
                "mai_agent_a",
                "s3"
            ),
            "postgres://mai_agent_a:s3@db.example:5432/fleet?sslmode=require"
        );
        assert_eq!(
            agent_url("postgres://127.0.0.1/fleet", "r", "p"),
            "postgres://r:p@127.0.0.1/fleet"
        );
    }
}
