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
    let at = ops::locate(&spec, &args.target.tenant).await?;
    // The record never holds the tenant's secrets, even typed on the command line.
    let masker = ops::Masker::new(Some(&at.tenant.container));
    let recorded: Vec<String> = args.command.iter().map(|a| masker.mask(a)).collect();
    let op = store
        .begin_operation(
            &args.target.tenant,
            &at.engine.host.name,
            &actor(),
            "exec",
            Some(&recorded),
            None,
        )
        .await?;
    let mut write = |is_err: bool, text: &str| {
        // A closed terminal does not stop the record.
        let _ = if is_err {
            std::io::stderr().write_all(text.as_bytes())
        } else {
            std::io::stdout().write_all(text.as_bytes())
        };
    };
    let result = ops::exec(&at, &args.command, &mut write).await;
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => {
            let status = if code == 0 { "ok" } else { "failed" };
            store
                .finish_operation(op, status, Some(code as i32), &format!("exit code {code}"))
                .await?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Err(e) => {
            store
                .finish_operation(op, "failed", None, &e.to_string())
                .await?;
            Err(e.into())
        }
    }
}
