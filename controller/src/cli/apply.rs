//! `controller apply`: plan, record, execute, verify, report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use mai_fleet::apply::{
    self, AgentOutcome, ApplyError, ApplyOptions, ApplyReport, FleetPlan, Hooks, Recorder,
};
use mai_fleet::execution::{ExecuteOptions, Outcome, Status, VerifyOptions};
use mai_fleet::keys::{KeyEvent, Keyring};
use mai_fleet::spec::FleetSpec;
use mai_fleet::store::Store;

use super::plan::{describe, print_plan};
use super::{out, outln, report_fleet_errors, table, OutputFormat};
use mai_fleet::duration::parse as parse_duration;

#[derive(Args)]
pub struct ApplyArgs {
    pub file: PathBuf,
    /// Remove managed containers of this fleet that are not in the spec (data is kept)
    #[arg(long)]
    pub prune: bool,
    /// With --prune: also delete removed tenants' data directories
    #[arg(long, requires = "prune")]
    pub purge_data: bool,
    /// Show the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Compare containers by their spec-hash labels only, not by what they run:
    /// fewer engine calls, but blind to containers changed by hand
    #[arg(long)]
    pub labels_only: bool,
    /// Tenants rolled out at once on each host
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Stop starting new rollouts after this many tenants failed verification
    #[arg(long)]
    pub max_failures: Option<usize>,
    /// How long a new container must run without restarting to count as verified
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Give up verifying a tenant after this long (it is then rolled back)
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub verify_timeout: Duration,
    /// Seconds a container gets to stop before it is killed
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: i32,
    #[command(flatten)]
    pub db: super::OptionalDatabaseArgs,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let Some(spec) = super::load_or_report(&args.file, args.output) else {
        return Ok(ExitCode::from(1));
    };
    let store = match &args.db.database_url {
        Some(url) => Some(Store::connect(url).await?),
        None => None,
    };
    let keyring = match &store {
        Some(store) => Some(Keyring::from_env(store, &spec.fleet)?),
        None => None,
    };
    let recorder = match (&store, &args.db.database_url, &keyring) {
        (Some(store), Some(url), Some(keyring)) => Some(Recorder {
            store,
            database_url: url,
            keyring,
        }),
        _ => None,
    };
    let opts = ApplyOptions {
        prune: args.prune,
        dry_run: args.dry_run,
        observe: if args.labels_only {
            apply::Observe::LabelsOnly
        } else {
            apply::Observe::Full
        },
        execute: ExecuteOptions {
            parallel: usize::from(args.parallel),
            verify: VerifyOptions {
                settle: args.settle,
                timeout: args.verify_timeout,
                ..VerifyOptions::default()
            },
            stop_timeout_s: args.stop_timeout,
            purge_data: args.purge_data,
            max_failures: args.max_failures,
            surge: false,
        },
        actor: super::actor(),
    };
    let (output, dry_run) = (args.output, args.dry_run);
    let planned = move |spec: &FleetSpec, plan: &FleetPlan, run_id: Option<i64>| {
        if dry_run {
            // A failure to print is a broken pipe: nothing to tell anyone.
            let _ = print_plan(spec, plan, output);
            eprintln!("dry run: nothing was changed");
            return;
        }
        announce(spec, plan, run_id);
    };
    let step = |host: &str, tenant: &str, msg: &str| {
        eprintln!("  {host}/{tenant}: {msg}");
    };
    let hooks = Hooks {
        planned: &planned,
        step: &step,
    };
    let report = match apply::run(&spec, &opts, recorder.as_ref(), &hooks).await {
        Ok(r) => r,
        Err(ApplyError::Plan(errors)) => return Ok(report_fleet_errors(&errors)),
        Err(e @ ApplyError::Finish { .. }) => return Err(e.into()),
        Err(ApplyError::Record(e)) => return Err(e.into()),
        Err(
            e @ (ApplyError::Keys(_)
            | ApplyError::KeysNeedDatabase(_)
            | ApplyError::AgentsNeedDatabase(_)),
        ) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if report.dry_run {
        print_key_events(&report.key_events);
        return Ok(ExitCode::SUCCESS);
    }
    print_report(&report, args.output)?;
    Ok(ExitCode::from(if report.all_ok() { 0 } else { 3 }))
}

/// What is about to change, before it changes.
fn announce(spec: &FleetSpec, plan: &FleetPlan, run_id: Option<i64>) {
    eprintln!(
        "applying fleet `{}`: {} host(s), {} tenant(s), {} change(s){}",
        spec.fleet,
        spec.hosts.len(),
        spec.tenants.len(),
        plan.changes(),
        run_id
            .map(|id| format!(", apply run #{id}"))
            .unwrap_or_default()
    );
    for u in &plan.unreachable {
        eprintln!(
            "  host {} is unreachable; its {} tenant(s) are left as they are: {}",
            u.host,
            u.tenants.len(),
            u.reason
        );
    }
    for h in &plan.hosts {
        if let Some((a, _)) = h.agent.as_ref().filter(|(a, _)| a.is_change()) {
            eprintln!("  {}/(agent): {}", h.host.name(), a.describe());
        }
        for a in h.actions.iter().filter(|a| a.is_change()) {
            eprintln!(
                "  {}/{}: {} ({})",
                h.host.name(),
                a.tenant(),
                a.verb(),
                describe(a, h.host.workload_noun())
            );
        }
    }
}

fn print_report(report: &ApplyReport, output: OutputFormat) -> anyhow::Result<()> {
    report_outcomes(
        &report.outcomes,
        &report.agents,
        &report.key_events,
        output,
        report.elapsed,
        report.run_id,
        report.recorded,
    )
}

/// What happened to OpenRouter keys, as progress on stderr (masks only).
fn print_key_events(events: &[KeyEvent]) {
    for e in events {
        eprintln!("  key {}: {} {}", e.tenant, e.action, e.detail);
    }
}

#[allow(clippy::too_many_arguments)]
fn report_outcomes(
    outcomes: &[Outcome],
    agents: &[AgentOutcome],
    keys: &[KeyEvent],
    output: OutputFormat,
    elapsed: Duration,
    run_id: Option<i64>,
    recorded: Option<&str>,
) -> anyhow::Result<()> {
    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    match output {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "run_id": run_id, "status": recorded, "elapsed_ms": elapsed.as_millis() as u64,
                "results": outcomes, "keys": keys, "agents": agents,
            }))?
        )?,
        _ => {
            let mut rows = vec![["HOST", "TENANT", "ACTION", "RESULT", "TIME", "DETAIL"]
                .map(String::from)
                .to_vec()];
            for o in outcomes {
                rows.push(vec![
                    o.host.clone(),
                    o.tenant.clone(),
                    o.action.to_string(),
                    o.status.word(),
                    format!("{:.1}s", o.duration_ms as f64 / 1000.0),
                    o.detail.clone(),
                ]);
            }
            out!("{}", table(&rows))?;
            for a in agents {
                outln!(
                    "agent {}: {} {} {}",
                    a.host,
                    a.action,
                    if a.ok { "ok" } else { "FAILED" },
                    a.detail
                )?;
            }
            for e in keys {
                outln!("key {}: {} {}", e.tenant, e.action, e.detail)?;
            }
            outln!(
                "{} ok, {} rolled back, {} failed, {} skipped, {} unreachable in {:.1}s",
                count(Status::Ok),
                count(Status::RolledBack),
                count(Status::Failed),
                count(Status::Skipped),
                count(Status::Unreachable),
                elapsed.as_secs_f64()
            )?;
        }
    }
    match run_id {
        Some(id) => eprintln!("recorded as apply run #{id} ({})", recorded.unwrap_or("?")),
        None => eprintln!("warning: DATABASE_URL is not set: this apply was not recorded"),
    }
    Ok(())
}
