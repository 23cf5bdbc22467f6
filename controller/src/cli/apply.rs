//! `controller apply`: plan, record, execute, verify, report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sha2::{Digest, Sha256};

use mai_fleet::apply::{apply_fleet, plan_fleet};
use mai_fleet::docker::{status_word, ExecuteOptions, Outcome, Status, VerifyOptions};
use mai_fleet::store::Store;

use super::{describe, print_plan, report_fleet_errors, table, OutputFormat};
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
    /// Fleet database to record the apply in; without it nothing is recorded
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let Some(spec) = crate::load_or_report(&args.file, args.output) else {
        return Ok(ExitCode::from(1));
    };
    let spec_text =
        std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let spec_sha = mai_fleet::spec::hex(&Sha256::digest(&spec_text));

    // Record-keeping is set up before anything changes: an apply that cannot be
    // recorded when a database is configured does not run.
    let recording = match &args.database_url {
        Some(url) => {
            let store = Store::connect(url).await?;
            store.migrate().await?;
            let lock = store.lock_fleet(url, &spec.fleet).await?;
            Some((store, lock))
        }
        None => None,
    };

    let plan = match plan_fleet(&spec, args.prune).await {
        Ok(p) => p,
        Err(errors) => return Ok(report_fleet_errors(&errors)),
    };
    if args.dry_run {
        print_plan(&spec, &plan, args.output)?;
        eprintln!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }

    let run_id = match &recording {
        Some((store, _)) => {
            let options = serde_json::json!({
                "prune": args.prune, "purge_data": args.purge_data, "parallel": args.parallel,
                "max_failures": args.max_failures, "settle_ms": args.settle.as_millis() as u64,
                "verify_timeout_ms": args.verify_timeout.as_millis() as u64,
            });
            Some(
                store
                    .begin_run(
                        &spec,
                        &actor(),
                        &spec_sha,
                        options,
                        plan.to_json(&spec.fleet),
                    )
                    .await?,
            )
        }
        None => None,
    };

    let total_changes = plan.changes();
    eprintln!(
        "applying fleet `{}`: {} host(s), {} tenant(s), {total_changes} change(s){}",
        spec.fleet,
        spec.hosts.len(),
        spec.tenants.len(),
        run_id
            .map(|id| format!(", apply run #{id}"))
            .unwrap_or_default()
    );
    for h in &plan.hosts {
        for a in h.actions.iter().filter(|a| a.is_change()) {
            eprintln!(
                "  {}/{}: {} ({})",
                h.engine.host.name,
                a.tenant(),
                a.verb(),
                describe(a)
            );
        }
    }
    let started = Instant::now();
    let opts = ExecuteOptions {
        parallel: usize::from(args.parallel),
        verify: VerifyOptions {
            settle: args.settle,
            timeout: args.verify_timeout,
            ..VerifyOptions::default()
        },
        stop_timeout_s: args.stop_timeout,
        purge_data: args.purge_data,
        max_failures: args.max_failures,
    };
    let progress = |host: &str, tenant: &str, msg: &str| {
        eprintln!("  {host}/{tenant}: {msg}");
    };
    let mut outcomes = apply_fleet(&plan, &opts, &progress).await;
    outcomes.sort_by(|a, b| (&a.host, &a.tenant).cmp(&(&b.host, &b.tenant)));

    let recorded = match (&recording, run_id) {
        (Some((store, _)), Some(id)) => Some(
            store
                .finish_run(id, &spec, &plan.desired, &outcomes)
                .await
                .with_context(|| format!("recording apply run #{id}"))?,
        ),
        _ => None,
    };
    drop(recording);

    report(&outcomes, args.output, started.elapsed(), run_id, recorded)?;
    let failed = outcomes.iter().any(|o| o.status != Status::Ok);
    Ok(ExitCode::from(if failed { 3 } else { 0 }))
}

fn report(
    outcomes: &[Outcome],
    output: OutputFormat,
    elapsed: Duration,
    run_id: Option<i64>,
    recorded: Option<&str>,
) -> anyhow::Result<()> {
    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "run_id": run_id, "status": recorded, "elapsed_ms": elapsed.as_millis() as u64,
                "results": outcomes,
            }))?
        ),
        OutputFormat::Text => {
            let mut rows = vec![["HOST", "TENANT", "ACTION", "RESULT", "TIME", "DETAIL"]
                .map(String::from)
                .to_vec()];
            for o in outcomes {
                rows.push(vec![
                    o.host.clone(),
                    o.tenant.clone(),
                    o.action.to_string(),
                    status_word(o.status).to_string(),
                    format!("{:.1}s", o.duration_ms as f64 / 1000.0),
                    o.detail.clone(),
                ]);
            }
            print!("{}", table(&rows));
            println!(
                "{} ok, {} rolled back, {} failed, {} skipped in {:.1}s",
                count(Status::Ok),
                count(Status::RolledBack),
                count(Status::Failed),
                count(Status::Skipped),
                elapsed.as_secs_f64()
            );
        }
    }
    match run_id {
        Some(id) => eprintln!("recorded as apply run #{id} ({})", recorded.unwrap_or("?")),
        None => eprintln!("warning: DATABASE_URL is not set: this apply was not recorded"),
    }
    Ok(())
}

/// Who applied: `MAI_FLEET_ACTOR`, else user@machine.
fn actor() -> String {
    if let Ok(a) = std::env::var("MAI_FLEET_ACTOR") {
        if !a.is_empty() {
            return a;
        }
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{user}@{host}")
}
