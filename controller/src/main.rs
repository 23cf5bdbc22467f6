//! `controller`: validate, plan and apply a fleet spec; migrate the fleet database.
//!
//! Exit codes (docs/cli.md):
//! - validate: 0 valid, 1 invalid, 2 unreadable
//! - plan: 0 nothing to change, 2 changes pending, 1 error (Terraform's detailed codes)
//! - apply: 0 applied and verified, 3 one or more tenants failed or were rolled back
//!   (the rest applied), 1 error before anything changed
//! - migrate, usage: 0 done, 1 error
//! - status: 0 every tenant's tracking is active, 3 not all are, 1 error
//! - billing, rates sync, user add: 0 done, 1 error; rates show: 0 rate found, 3 none
//! - alerts list: 0 nothing firing, 3 something firing; other alerts commands 0/1
//! - serve: runs until SIGINT/SIGTERM

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command, OutputFormat};
use mai_fleet::spec::{self, SpecError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = match &cli.command {
        Command::Serve(args) => args.log.clone(),
        // Commands print for their user; the library's own events are warnings only.
        _ => mai_fleet_core::log::LogArgs {
            log_format: mai_fleet_core::log::LogFormat::Text,
            filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        },
    };
    if let Err(e) = mai_fleet_core::log::init(&log) {
        eprintln!("controller: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("controller: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("controller: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { file, output } => Ok(validate(&file, output)),
        Command::Plan {
            file,
            prune,
            output,
        } => {
            let Some(spec) = load_or_report(&file, output) else {
                return Ok(ExitCode::from(1));
            };
            let plan = match mai_fleet::apply::plan_fleet(&spec, prune).await {
                Ok(p) => p,
                Err(errors) => return Ok(cli::report_fleet_errors(&errors)),
            };
            cli::print_plan(&spec, &plan, output)?;
            Ok(ExitCode::from(if plan.changes() == 0 { 0 } else { 2 }))
        }
        Command::Apply(args) => cli::apply::run(args).await,
        Command::Billing(args) => cli::billing::billing(args).await,
        Command::Rates(cmd) => cli::billing::rates(cmd).await,
        Command::User(cmd) => cli::billing::user(cmd).await,
        Command::Alerts(cmd) => cli::alerts::run(cmd).await,
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Migrate { database_url } => {
            let store = mai_fleet::store::Store::connect(&database_url).await?;
            store.migrate().await.context("controller migrate")?;
            eprintln!(
                "fleet database is up to date ({} migrations)",
                mai_fleet::store::MIGRATOR.iter().count()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Host(cli::HostCommand::Add {
            name,
            rotate,
            database_url,
        }) => {
            let check = mai_fleet::spec::name_label(&name);
            if let Err(hint) = check {
                anyhow::bail!("host name `{name}` is not valid: {hint}");
            }
            let store = mai_fleet::store::Store::connect(&database_url).await?;
            store.migrate().await?;
            let creds = store.add_agent_host(&name, rotate).await?;
            eprintln!(
                "agent credentials for host {name} (role {}); shown once, kept nowhere:",
                creds.role
            );
            println!(
                "DATABASE_URL={}",
                cli::agent_url(&database_url, &creds.role, &creds.password)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Usage {
            from,
            to,
            tenant,
            output,
            database_url,
        } => {
            let store = mai_fleet::store::Store::connect(&database_url).await?;
            let to = to.unwrap_or_else(|| chrono::Utc::now().date_naive());
            let from = from.unwrap_or(to - chrono::Duration::days(30));
            let days = store.usage_by_day(from, to, tenant.as_deref()).await?;
            cli::print_usage(&days, output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            output,
            database_url,
        } => {
            let store = mai_fleet::store::Store::connect(&database_url).await?;
            let tenants = store.tenant_status().await?;
            cli::print_status(&tenants, output)?;
            let all_active = tenants.iter().all(|t| t.tracking.is_active());
            Ok(ExitCode::from(if all_active { 0 } else { 3 }))
        }
    }
}

fn validate(file: &std::path::Path, output: OutputFormat) -> ExitCode {
    match spec::load(file) {
        Ok(spec) => {
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"valid": true, "file": file.display().to_string(), "fleet": spec.fleet,
                        "hosts": spec.hosts.len(), "tenants": spec.tenants.len(), "errors": []})
                ),
                OutputFormat::Text => eprintln!(
                    "{}: valid: fleet `{}`, {} host(s), {} tenant(s)",
                    file.display(),
                    spec.fleet,
                    spec.hosts.len(),
                    spec.tenants.len()
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = if matches!(e, SpecError::Unreadable { .. }) {
                2
            } else {
                1
            };
            cli::report_spec_error(file, &e, output);
            ExitCode::from(code)
        }
    }
}

/// Loads a spec for plan/apply; on error prints every problem and returns None.
fn load_or_report(file: &std::path::Path, output: OutputFormat) -> Option<spec::FleetSpec> {
    match spec::load(file) {
        Ok(s) => Some(s),
        Err(e) => {
            cli::report_spec_error(file, &e, output);
            None
        }
    }
}
