//! `controller status`: every tenant's tracking, data age and agent, then each host's
//! agent (version, last heartbeat, spool).

use std::process::ExitCode;

use mai_fleet::store::reports::{AgentStatus, TenantStatus};

use super::{out, outln, table, DatabaseArgs, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// Exit 0 every tenant's tracking is active, 3 not all are.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = args.db.connect().await?;
    let tenants = store.tenant_status().await?;
    let agents = store.agent_status().await?;
    print_status(&tenants, &agents, args.output)?;
    let all_active = tenants.iter().all(|t| t.tracking.is_active());
    Ok(ExitCode::from(if all_active { 0 } else { 3 }))
}

fn print_status(
    tenants: &[TenantStatus],
    agents: &[AgentStatus],
    output: OutputFormat,
) -> anyhow::Result<()> {
    if let OutputFormat::Json = output {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "tenants": tenants, "agents": agents })
            )?
        )?;
        return Ok(());
    }
    let age = |s: Option<i64>| s.map_or("-".to_string(), |s| format!("{s}s"));
    let mut rows = vec![[
        "TENANT",
        "HOST",
        "CONTAINER",
        "STATE",
        "TRACKING",
        "IN SPEC",
        "DATA AGE",
        "AGENT AGE",
        "REASONS",
    ]
    .map(String::from)
    .to_vec()];
    for t in tenants {
        rows.push(vec![
            t.tenant.clone(),
            t.host.clone().unwrap_or_default(),
            t.container.clone().unwrap_or_default(),
            t.container_state.clone().unwrap_or_default(),
            t.tracking.to_string(),
            if t.in_spec { "yes" } else { "NO" }.to_string(),
            age(t.last_data_age_s),
            age(t.agent_age_s),
            t.reasons.join("; "),
        ]);
    }
    out!("{}", table(&rows))?;
    let mut rows = vec![[
        "AGENT",
        "VERSION",
        "LAST HEARTBEAT",
        "AGE",
        "SPOOL",
        "ERRORS",
    ]
    .map(String::from)
    .to_vec()];
    for a in agents {
        rows.push(vec![
            a.host.clone(),
            a.version.clone().unwrap_or_else(|| "never reported".into()),
            a.last_heartbeat.map_or("-".into(), |t| {
                t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
            }),
            age(a.age_s),
            a.spool_bytes.map_or("-".into(), spool_size),
            a.errors.map_or("-".into(), |e| e.to_string()),
        ]);
    }
    outln!()?;
    out!("{}", table(&rows))?;
    Ok(())
}

fn spool_size(bytes: i64) -> String {
    match bytes {
        0 => "empty".into(),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}
