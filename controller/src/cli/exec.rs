//! `controller exec TENANT -- CMD [ARG…]`: a command in the tenant's container, its
//! output masked, recorded with who ran what and how it ended.

use std::io::Write;
use std::process::ExitCode;

use mai_fleet::ops;

use super::{actor, TenantArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: TenantArgs,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Exits with the command's own exit code (1 when it could not run).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (spec, store) = args.target.open().await?;
    let mut write = |is_err: bool, text: &str| {
        // A closed terminal does not stop the record.
        let _ = if is_err {
            std::io::stderr().write_all(text.as_bytes())
        } else {
            std::io::stdout().write_all(text.as_bytes())
        };
    };
    let result = ops::exec_recorded(
        &spec,
        &store,
        &args.target.tenant,
        &actor(),
        &args.command,
        &mut write,
    )
    .await;
    let _ = std::io::stdout().flush();
    Ok(ExitCode::from(result?.clamp(0, 255) as u8))
}
