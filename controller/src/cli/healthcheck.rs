//! `controller healthcheck [URL]`: asks a running `serve` for `/healthz`, for the
//! health check of a container without curl (the image is FROM scratch).

use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The dashboard's health endpoint
    #[arg(default_value = "http://127.0.0.1:8080/healthz")]
    pub url: String,
}

/// Exit 0 when it answers 200 within 5 s, 1 otherwise (with the reason on stderr).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let answer = mai_fleet::http::client()
        .get(&args.url)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!("{}: HTTP {}", args.url, r.status());
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("{}: {e}", args.url);
            Ok(ExitCode::from(1))
        }
    }
}
