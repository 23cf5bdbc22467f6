//! `controller user add NAME --password-stdin`, `user list`, `user remove NAME`: the
//! dashboard's users.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::{outln, DatabaseArgs, OutputFormat};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a dashboard user, or set a new password (ends their sessions)
    Add {
        name: String,
        /// Read the password from standard input (first line), never from the command line
        #[arg(long, required = true)]
        password_stdin: bool,
        /// viewer reads; admin also closes months, silences alerts and manages users
        #[arg(long, value_parser = ["viewer", "admin"], default_value = "admin")]
        role: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// The dashboard's users, their roles and live sessions
    List {
        #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
        output: OutputFormat,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Remove a user; their sessions end at once
    Remove {
        name: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

pub async fn run(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let (name, role, db) = match cmd {
        UserCommand::Add {
            name,
            password_stdin: _,
            role,
            db,
        } => (name, role, db),
        UserCommand::List { output, db } => {
            let store = db.migrated().await?;
            let users = store.users().await?;
            match output {
                OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&users)?)?,
                _ => {
                    outln!("{:<24} {:<7} {:<20} SESSIONS", "USER", "ROLE", "CREATED")?;
                    for u in &users {
                        outln!(
                            "{:<24} {:<7} {:<20} {}",
                            u.name,
                            u.role,
                            u.created_at.format("%Y-%m-%d %H:%M UTC"),
                            u.sessions
                        )?;
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        UserCommand::Remove { name, db } => {
            let store = db.migrated().await?;
            anyhow::ensure!(store.remove_user(&name).await?, "no dashboard user {name}");
            outln!("dashboard user {name} removed; their sessions ended")?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    mai_fleet::spec::name_label(&name)
        .map_err(|hint| anyhow::anyhow!("user name `{name}` is not valid: {hint}"))?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the password from standard input")?;
    let password = input.lines().next().unwrap_or("").to_string();
    anyhow::ensure!(
        password.chars().count() >= 12,
        "the password must have at least 12 characters"
    );
    let hash = mai_fleet::web::hash_password(&password).map_err(anyhow::Error::msg)?;
    let store = db.migrated().await?;
    let created = store.put_user(&name, &hash).await?;
    store.set_user_role(&name, &role).await?;
    eprintln!(
        "dashboard user {name} ({role}) {}",
        if created {
            "created"
        } else {
            "has a new password; their sessions ended"
        }
    );
    Ok(ExitCode::SUCCESS)
}
