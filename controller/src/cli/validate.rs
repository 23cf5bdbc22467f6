//! `controller validate FILE`: every error of a spec at once, each located.

use std::path::PathBuf;
use std::process::ExitCode;

use mai_fleet::spec::{self, SpecError};

use super::{outln, report_spec_error, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    pub file: PathBuf,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
}

/// Exit 0 valid, 1 invalid, 2 unreadable.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = &args.file;
    match spec::load(file) {
        Ok(spec) => {
            match args.output {
                OutputFormat::Json => outln!(
                    "{}",
                    serde_json::json!({"valid": true, "file": file.display().to_string(), "fleet": spec.fleet,
                        "hosts": spec.hosts.len(), "tenants": spec.tenants.len(), "errors": []})
                )?,
                _ => eprintln!(
                    "{}: valid: fleet `{}`, {} host(s), {} tenant(s)",
                    file.display(),
                    spec.fleet,
                    spec.hosts.len(),
                    spec.tenants.len()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let code = if matches!(e, SpecError::Unreadable { .. }) {
                2
            } else {
                1
            };
            report_spec_error(file, &e, args.output);
            Ok(ExitCode::from(code))
        }
    }
}
