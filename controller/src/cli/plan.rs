//! `controller plan FILE`: what apply would change, per host and tenant.

use std::path::PathBuf;
use std::process::ExitCode;

use mai_fleet::apply::{plan_fleet, FleetPlan, Observe};
use mai_fleet::plan::Action;
use mai_fleet::spec::FleetSpec;

use super::{load_or_report, out, outln, report_fleet_errors, table, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    pub file: PathBuf,
    /// Plan removal of managed containers that are not in the spec
    #[arg(long)]
    pub prune: bool,
    /// Compare containers by their spec-hash labels only (blind to hand changes)
    #[arg(long)]
    pub labels_only: bool,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
    #[command(flatten)]
    pub db: super::OptionalDatabaseArgs,
}

/// Terraform's detailed exit codes: 0 nothing to change, 2 changes pending, 1 error.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(mut spec) = load_or_report(&args.file, args.output) else {
        return Ok(ExitCode::from(1));
    };
    // What apply would do to keys, asked of the database and nothing else.
    let key_events = match super::keys::plan(&mut spec, args.db.database_url.as_deref()).await {
        Ok(events) => events,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    let observe = if args.labels_only {
        Observe::LabelsOnly
    } else {
        Observe::Full
    };
    let plan = match plan_fleet(&spec, args.prune, observe).await {
        Ok(p) => p,
        Err(errors) => return Ok(report_fleet_errors(&errors)),
    };
    let rolled_back = match &args.db.database_url {
        Some(url) => rolled_back(url, &spec.fleet).await,
        None => Vec::new(),
    };
    if let OutputFormat::Json = args.output {
        let mut json = plan.to_json(&spec.fleet);
        json["rolled_back"] = serde_json::to_value(&rolled_back)?;
        json["keys"] = serde_json::to_value(&key_events)?;
        outln!("{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        print_plan(&spec, &plan, args.output)?;
        for e in &key_events {
            outln!("key {}: {} {}", e.tenant, e.action, e.detail)?;
        }
        for r in &rolled_back {
            outln!(
                "note: {} runs the revision of apply run #{} (`controller rollback`{}); apply puts the file's spec back",
                r.tenant,
                r.run_id,
                match (&r.actor, r.at) {
                    (Some(who), Some(at)) => format!(" by {who} on {}", at.format("%Y-%m-%d %H:%M UTC")),
                    _ => String::new(),
                }
            )?;
        }
    }
    let changes = plan.changes() + key_events.len();
    Ok(ExitCode::from(if changes == 0 { 0 } else { 2 }))
}

/// Tenants running a rolled-back revision; none when the database cannot say
/// (the plan itself needs no database).
async fn rolled_back(url: &str, fleet: &str) -> Vec<mai_fleet::store::operations::RolledBack> {
    let found = async {
        let store = mai_fleet::store::Store::connect(url).await?;
        store.rolled_back(fleet).await
    };
    match found.await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("controller: note: rollbacks not checked: {e}");
            Vec::new()
        }
    }
}

/// An action in words; `noun` is what the host runs a tenant as (`container`,
/// `StatefulSet`).
pub fn describe(action: &Action, noun: &str) -> String {
    match action {
        Action::Create { desired, .. } => {
            format!("new {noun} {} from {}", desired.name, desired.image)
        }
        Action::Update { changes, drift, .. } => {
            let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
            if *drift {
                format!(
                    "drift: the {noun} differs from its spec: {}",
                    list.join("; ")
                )
            } else {
                list.join("; ")
            }
        }
        Action::Start { current, .. } => format!("{} is {}; start it", current.name, current.state),
        Action::Unchanged { current, .. } => format!("{} running", current.name),
        Action::RemoveLeftover { container, .. } => {
            format!("leftover {} of an interrupted apply", container.name)
        }
        Action::Remove { container, .. } => {
            format!("{} is not in the spec (data kept)", container.name)
        }
        Action::Orphan { container, .. } => format!(
            "{} is not in the spec; kept (--prune removes it)",
            container.name
        ),
        Action::Blocked { reason, .. } => reason.clone(),
    }
}

pub fn print_plan(spec: &FleetSpec, plan: &FleetPlan, output: OutputFormat) -> anyhow::Result<()> {
    if let OutputFormat::Json = output {
        outln!(
            "{}",
            serde_json::to_string_pretty(&plan.to_json(&spec.fleet))?
        )?;
        return Ok(());
    }
    let mut rows = vec![vec![
        "HOST".into(),
        "TENANT".into(),
        "ACTION".into(),
        "DETAIL".into(),
    ]];
    for h in &plan.hosts {
        for a in &h.actions {
            rows.push(vec![
                h.host.name().to_string(),
                a.tenant().to_string(),
                a.verb().to_string(),
                describe(a, h.host.workload_noun()),
            ]);
        }
        if let Some((a, _)) = &h.agent {
            rows.push(vec![
                h.host.name().to_string(),
                "(agent)".into(),
                if a.is_change() { "change" } else { "unchanged" }.into(),
                a.describe(),
            ]);
        }
    }
    for u in &plan.unreachable {
        for t in &u.tenants {
            rows.push(vec![
                u.host.clone(),
                t.clone(),
                "unknown".into(),
                "host unreachable: not observed".into(),
            ]);
        }
    }
    out!("{}", table(&rows))?;
    outln!(
        "fleet `{}`: {} change(s) pending",
        spec.fleet,
        plan.changes()
    )?;
    for u in &plan.unreachable {
        outln!(
            "warning: host {} could not be observed ({} tenant(s) unknown): {}",
            u.host,
            u.tenants.len(),
            u.reason
        )?;
    }
    Ok(())
}
