//! `controller restore TENANT --from BACKUP`: a backup put in place of the tenant's
//! data, the tenant stopped, started and verified; recorded, so that the agent's
//! view of the store going back raises no alert.

use std::process::ExitCode;

use mai_fleet::ops::backup;

use super::{actor, TenantArgs, VerifyArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: TenantArgs,
    /// The backup directory (`<backup dir>/<tenant>/<time>`)
    #[arg(long)]
    pub from: std::path::PathBuf,
    /// Restore a backup the fleet did not record, or whose store changed since it
    /// was taken (says what it did not check)
    #[arg(long)]
    pub unverified: bool,
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Exit 0 restored and verified, 3 restored but not verified.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (spec, store) = args.target.open().await?;
    let from = std::fs::canonicalize(&args.from)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.from.display()))?;
    let (actor, verify) = (actor(), args.verify.options());
    let opts = backup::RestoreOptions {
        actor: &actor,
        verify: &verify,
        unverified: args.unverified,
    };
    let r = backup::restore(&spec, &store, &args.target.tenant, &from, &opts).await?;
    for what in &r.unchecked {
        eprintln!("{}: not checked (--unverified): {what}", args.target.tenant);
    }
    eprintln!(
        "{}: restored from {} (taken {}, {} tokens); what it replaced is kept in {}",
        args.target.tenant,
        from.display(),
        r.manifest.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
        r.manifest.tokens,
        r.kept.display()
    );
    match r.verified {
        Ok(v) => {
            eprintln!("{}: {v}", args.target.tenant);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: NOT VERIFIED: {e}", args.target.tenant);
            Ok(ExitCode::from(3))
        }
    }
}
