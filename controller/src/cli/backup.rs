//! `controller backup TENANT|--all`: consistent copies of tenants' data.

use std::process::ExitCode;

use mai_fleet::billing::money::format_usd;
use mai_fleet::ops::backup::{self, BackupOptions};

use super::{actor, out, outln, table, DatabaseArgs, OutputFormat, SpecArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The tenant (or --all)
    #[arg(required_unless_present = "all")]
    pub tenant: Option<String>,
    /// Every tenant of the spec
    #[arg(long, conflicts_with = "tenant")]
    pub all: bool,
    /// Where backups go (`<dir>/<tenant>/<time>/`)
    #[arg(long, env = "MAI_FLEET_BACKUP_DIR")]
    pub dir: std::path::PathBuf,
    /// Backups kept per tenant; older ones are removed
    #[arg(long, env = "MAI_FLEET_BACKUP_KEEP", default_value_t = 7)]
    pub keep: usize,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// Exit 0 every backup taken, 3 some failed (the rest were taken).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spec = args.spec.load()?;
    let store = args.db.migrated().await?;
    let tenants: Vec<String> = match &args.tenant {
        Some(t) => vec![t.clone()],
        None => spec.tenants.iter().map(|t| t.id.clone()).collect(),
    };
    let opts = BackupOptions {
        dir: args.dir.clone(),
        keep: args.keep,
        scheduled: false,
        actor: actor(),
    };
    let mut results = Vec::new();
    for t in &tenants {
        results.push((t.clone(), backup::backup(&spec, &store, t, &opts).await));
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if let OutputFormat::Json = args.output {
        let json: Vec<serde_json::Value> = results
            .iter()
            .map(|(t, r)| match r {
                Ok(b) => serde_json::json!({"tenant": t, "id": b.id, "path": b.path, "manifest": b.manifest,
                    "removed": b.removed}),
                Err(e) => serde_json::json!({"tenant": t, "error": e.to_string()}),
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        let mut rows = vec![[
            "TENANT", "RESULT", "FILES", "BYTES", "TOKENS", "RAW USD", "PATH",
        ]
        .map(String::from)
        .to_vec()];
        for (t, r) in &results {
            rows.push(match r {
                Ok(b) => vec![
                    t.clone(),
                    format!("ok ({})", b.manifest.integrity),
                    b.manifest.files.to_string(),
                    b.manifest.bytes.to_string(),
                    b.manifest.tokens.to_string(),
                    format_usd(b.manifest.raw_cost),
                    b.path.display().to_string(),
                ],
                Err(e) => vec![
                    t.clone(),
                    "FAILED".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    e.to_string(),
                ],
            });
        }
        out!("{}", table(&rows))?;
    }
    Ok(ExitCode::from(if failed == 0 { 0 } else { 3 }))
}
