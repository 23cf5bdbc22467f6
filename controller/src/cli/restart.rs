//! `controller restart TENANT`: restarted and verified as a launch is.

use std::process::ExitCode;

use mai_fleet::ops;

use super::{actor, DatabaseArgs, SpecArgs, VerifyArgs};

#[derive(clap::Args)]
pub struct Args {
    pub tenant: String,
    /// Seconds the container gets to stop before it is killed
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: i32,
    #[command(flatten)]
    pub verify: VerifyArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// Exit 0 restarted and verified, 3 not verified.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spec = args.spec.load()?;
    let store = args.db.migrated().await?;
    let at = ops::locate(&spec, &args.tenant).await?;
    let op = store
        .begin_operation(
            &args.tenant,
            &at.engine.host.name,
            &actor(),
            "restart",
            None,
            None,
        )
        .await?;
    eprintln!("{}/{}: restarting", at.engine.host.name, args.tenant);
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
        at.engine.host.name, args.tenant
    );
    Ok(ExitCode::from(code))
}
