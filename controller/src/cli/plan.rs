//! `controller plan FILE`: what apply would change, per host and tenant.

use std::path::PathBuf;
use std::process::ExitCode;

use mai_fleet::apply::{plan_fleet, FleetPlan};
use mai_fleet::plan::Action;
use mai_fleet::spec::FleetSpec;

use super::{load_or_report, out, outln, report_fleet_errors, table, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    pub file: PathBuf,
    /// Plan removal of managed containers that are not in the spec
    #[arg(long)]
    pub prune: bool,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
}

/// Terraform's detailed exit codes: 0 nothing to change, 2 changes pending, 1 error.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(spec) = load_or_report(&args.file, args.output) else {
        return Ok(ExitCode::from(1));
    };
    let plan = match plan_fleet(&spec, args.prune).await {
        Ok(p) => p,
        Err(errors) => return Ok(report_fleet_errors(&errors)),
    };
    print_plan(&spec, &plan, args.output)?;
    Ok(ExitCode::from(if plan.changes() == 0 { 0 } else { 2 }))
}

pub fn describe(action: &Action) -> String {
    match action {
        Action::Create { desired, .. } => {
            format!("new container {} from {}", desired.name, desired.image)
        }
        Action::Update { changes, drift, .. } => {
            let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
            if *drift {
                format!(
                    "drift: the container differs from its spec: {}",
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
                h.engine.host.name.clone(),
                a.tenant().to_string(),
                a.verb().to_string(),
                describe(a),
            ]);
        }
    }
    out!("{}", table(&rows))?;
    outln!(
        "fleet `{}`: {} change(s) pending",
        spec.fleet,
        plan.changes()
    )?;
    Ok(())
}
