//! `controller restart TENANT`: restarted and verified as a launch is.

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
    let at = ops::locate(&spec, &args.target.tenant).await?;
    let op = store
        .begin_operation(
            &args.target.tenant,
            &at.engine.host.name,
            &actor(),
            "restart",
            None,
            None,
        )
        .await?;
    eprintln!("{}/{}: restarting", at.engine.host.name, args.target.tenant);
    let verified = ops::restart(&at, &args.verify.options(), args.stop_timeout).await;
    let (status, detail, code) = match &verified {
        Ok(Ok(v)) => ("ok", v.clone(), 0),
        Ok(Err(e)) => ("failed", e.clone(), 3),
        Err(e) => ("failed", e.to_string(), 1),
    };
    store.finish_operation(op, status, None, &detail).await?;
    if let Err(e) = verified {
        return Err(e.into());
    }
    eprintln!(
        "{}/{}: {status}: {detail}",
        at.engine.host.name, args.target.tenant
    );
    Ok(ExitCode::from(code))
}
