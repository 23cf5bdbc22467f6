//! `controller logs TENANT [-f] [--since 10m] [--tail N]`: the container's output,
//! the tenant's secrets masked.

use std::process::ExitCode;

use futures_util::StreamExt;

use mai_fleet::ops::{self, LogsOptions};

use super::{out, SpecArgs};

#[derive(clap::Args)]
pub struct Args {
    pub tenant: String,
    /// Keep following the output (until Ctrl-C or the container stops)
    #[arg(short, long)]
    pub follow: bool,
    /// Only output newer than this: a duration back (10m, 2h) or Unix seconds
    #[arg(long)]
    pub since: Option<String>,
    /// Only the last N lines (or `all`)
    #[arg(long)]
    pub tail: Option<String>,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spec = args.spec.load()?;
    let since = match &args.since {
        None => None,
        Some(s) => Some(match s.parse::<i64>() {
            Ok(unix) => unix,
            Err(_) => {
                let back = mai_fleet::duration::parse(s).map_err(anyhow::Error::msg)?;
                chrono::Utc::now().timestamp() - back.as_secs() as i64
            }
        }),
    };
    let at = ops::locate(&spec, &args.tenant).await?;
    let opts = LogsOptions {
        follow: args.follow,
        since,
        tail: args.tail.clone(),
    };
    let mut lines = std::pin::pin!(ops::logs(&at, &opts));
    while let Some(line) = lines.next().await {
        out!("{}", line?)?;
    }
    Ok(ExitCode::SUCCESS)
}
