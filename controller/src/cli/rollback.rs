//! `controller rollback TENANT [--to RUN]`: a revision an earlier apply launched, run
//! again and verified. The spec file stays the truth: `plan` then shows the tenant as
//! differing from it, and the next `apply` puts the file's spec back.

use std::process::ExitCode;

use mai_fleet::execution::{ExecuteOptions, Status};
use mai_fleet::ops;

use super::{actor, TenantArgs, VerifyArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: TenantArgs,
    /// The apply run whose revision to run (default: the newest that differs from
    /// what runs now); `controller history TENANT` lists them
    #[arg(long)]
    pub to: Option<i64>,
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Exit 0 the revision runs, verified; 3 it did not verify (the container that ran
/// before serves again).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (spec, store) = args.target.open().await?;
    let opts = ExecuteOptions {
        parallel: 1,
        verify: args.verify.options(),
        stop_timeout_s: 10,
        purge_data: false,
        max_failures: None,
        surge: false,
    };
    let step = |host: &str, tenant: &str, msg: &str| eprintln!("  {host}/{tenant}: {msg}");
    let (revision, outcome) = ops::rollback(
        &spec,
        &store,
        &args.target.tenant,
        args.to,
        &actor(),
        &opts,
        &step,
    )
    .await?;
    eprintln!(
        "{}: rollback to run #{} ({}): {} {}",
        args.target.tenant,
        revision.run_id,
        revision.image,
        outcome.status.word(),
        outcome.detail
    );
    if outcome.status == Status::Ok {
        eprintln!(
            "{} now differs from {}: `controller plan` shows it, and the next apply puts the file's spec back (change the file to keep this revision)",
            args.target.tenant,
            spec.file.display()
        );
    }
    Ok(ExitCode::from(if outcome.status == Status::Ok {
        0
    } else {
        3
    }))
}
