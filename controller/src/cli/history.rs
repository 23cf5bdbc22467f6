//! `controller history TENANT`: applies and operations, newest first.

use std::process::ExitCode;

use super::{out, outln, table, DatabaseArgs, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    pub tenant: String,
    /// Most entries shown
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = args.db.connect().await?;
    let entries = store.history(&args.tenant, args.limit).await?;
    if let OutputFormat::Json = args.output {
        outln!("{}", serde_json::to_string_pretty(&entries)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "WHEN",
        "WHAT",
        "RUN",
        "IMAGE",
        "SPEC HASH",
        "WHO",
        "RESULT",
        "DETAIL",
    ]
    .map(String::from)
    .to_vec()];
    for e in &entries {
        let what = match &e.action {
            Some(a) => format!("{} {a}", e.kind),
            None => e.kind.clone(),
        };
        rows.push(vec![
            e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            what,
            e.run_id.map(|r| format!("#{r}")).unwrap_or_default(),
            e.image.clone().unwrap_or_default(),
            e.spec_hash.clone().unwrap_or_default(),
            e.actor.clone(),
            e.status.clone(),
            e.detail.chars().take(120).collect(),
        ]);
    }
    out!("{}", table(&rows))?;
    Ok(ExitCode::SUCCESS)
}
