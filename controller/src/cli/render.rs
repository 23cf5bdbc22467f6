//! `controller render FILE [--host NAME]`: the Kubernetes objects `apply` sends, as
//! YAML documents, every secret value redacted — to review, to `kubectl diff`, to
//! check against a cluster's schemas.

use std::path::PathBuf;
use std::process::ExitCode;

use mai_fleet::{backend, spec};

use super::{outln, report_spec_error, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    pub file: PathBuf,
    /// Only this host's objects (default: every Kubernetes host)
    #[arg(long)]
    pub host: Option<String>,
}

/// Exit 0 rendered, 1 invalid spec or unknown host.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spec = match spec::load(&args.file) {
        Ok(s) => s,
        Err(e) => {
            report_spec_error(&args.file, &e, OutputFormat::Text);
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(name) = &args.host {
        if !spec.hosts.iter().any(|h| &h.name == name) {
            eprintln!(
                "controller: error: no host `{name}` in {}",
                args.file.display()
            );
            return Ok(ExitCode::from(1));
        }
    }
    let hosts = spec
        .hosts
        .iter()
        .filter(|h| args.host.as_ref().is_none_or(|n| n == &h.name));
    for host in hosts {
        for object in backend::render(&spec, host) {
            // JSON is YAML: one document each.
            outln!("---\n{object}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
