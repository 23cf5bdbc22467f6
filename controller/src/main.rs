//! `controller`: validate, plan and apply a fleet spec; the fleet database, billing,
//! alerts and the dashboard. Every command and its exit codes: docs/cli.md.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

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
    let result = runtime.block_on(run(cli.command));
    // A blocking task left behind (a tenant's store that blocked SQLite past its
    // budget) must not hold the exit: dropping the runtime would wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        // `controller … | head`: the reader has what it wanted.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controller: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate(args) => cli::validate::run(args),
        Command::Render(args) => cli::render::run(args),
        Command::Plan(args) => cli::plan::run(args).await,
        Command::Apply(args) => cli::apply::run(args).await,
        Command::Migrate(args) => cli::migrate::run(args).await,
        Command::Host(cmd) => cli::host::run(cmd).await,
        Command::Usage(args) => cli::usage::run(args).await,
        Command::Billing(args) => cli::billing::run(args).await,
        Command::Invoices(cmd) => cli::invoices::run(cmd).await,
        Command::Rates(cmd) => cli::rates::run(cmd).await,
        Command::Alerts(cmd) => cli::alerts::run(cmd).await,
        Command::User(cmd) => cli::user::run(cmd).await,
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Healthcheck(args) => cli::healthcheck::run(args).await,
        Command::Status(args) => cli::status::run(args).await,
        Command::Logs(args) => cli::logs::run(args).await,
        Command::Restart(args) => cli::restart::run(args).await,
        Command::Exec(args) => cli::exec::run(args).await,
        Command::History(args) => cli::history::run(args).await,
        Command::Rollback(args) => cli::rollback::run(args).await,
        Command::Backup(args) => cli::backup::run(args).await,
        Command::Restore(args) => cli::restore::run(args).await,
        Command::Keys(cmd) => cli::keys::run(cmd).await,
        Command::Reconcile(args) => cli::reconcile::run(args).await,
        Command::Completions(args) => cli::docs::completions(args),
        Command::Man(args) => cli::docs::man(args),
    }
}
