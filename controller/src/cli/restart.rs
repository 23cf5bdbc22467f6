//! `controller restart TENANT`: restarted and verified as a launch is, and recorded.

use std::process::ExitCode;

use mai_fleet::ops;

use super::{actor, TenantArgs, VerifyArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: TenantArgs,
    /// Seconds the container gets to stop before it is killed
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: i32,
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Exit 0 restarted and verified, 3 not verified.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (spec, store) = args.target.open().await?;
    let tenant = &args.target.tenant;
    let verified = ops::restart_recorded(
        &spec,
        &store,
        tenant,
        &actor(),
        &args.verify.options(),
        args.stop_timeout,
        &|line| eprintln!("{line}"),
    )
    .await?;
    match verified {
        Ok(v) => {
            eprintln!("{tenant}: ok: {v}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{tenant}: failed: {e}");
            Ok(ExitCode::from(3))
        }
    }
}
