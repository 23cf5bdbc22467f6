//! `controller host add NAME [--rotate]`: a host's agent credentials, printed once.

use std::process::ExitCode;

use clap::Subcommand;

use super::{outln, DatabaseArgs};

#[derive(Subcommand)]
pub enum HostCommand {
    /// Create the database role of NAME's agent (confined to NAME's tenants) and print its DATABASE_URL once
    Add {
        name: String,
        /// Give an existing host's agent a new password (the old one stops working)
        #[arg(long)]
        rotate: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

pub async fn run(cmd: HostCommand) -> anyhow::Result<ExitCode> {
    let HostCommand::Add { name, rotate, db } = cmd;
    if let Err(hint) = mai_fleet::spec::name_label(&name) {
        anyhow::bail!("host name `{name}` is not valid: {hint}");
    }
    let store = db.migrated().await?;
    let creds = store.add_agent_host(&name, rotate).await?;
    eprintln!(
        "agent credentials for host {name} (role {}); shown once, kept nowhere:",
        creds.role
    );
    outln!(
        "DATABASE_URL={}",
        agent_url(&db.database_url, &creds.role, &creds.password)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The controller's database URL with the agent's role and password in place of its
/// own credentials.
pub fn agent_url(controller_url: &str, role: &str, password: &str) -> String {
    let (scheme, rest) = controller_url
        .split_once("://")
        .unwrap_or(("postgres", controller_url));
    let location = rest.rsplit_once('@').map_or(rest, |(_, l)| l);
    format!("{scheme}://{role}:{password}@{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_url_replaces_credentials() {
        assert_eq!(
            agent_url(
                "postgres://admin:pw@db.example:5432/fleet?sslmode=require",
                "mai_agent_a",
                "s3"
            ),
            "postgres://mai_agent_a:s3@db.example:5432/fleet?sslmode=require"
        );
        assert_eq!(
            agent_url("postgres://127.0.0.1/fleet", "r", "p"),
            "postgres://r:p@127.0.0.1/fleet"
        );
    }
}
