//! `controller migrate`: the fleet database's schema, created or upgraded.

use std::process::ExitCode;

use anyhow::Context;

use super::DatabaseArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: DatabaseArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = args.db.connect().await?;
    store.migrate().await.context("controller migrate")?;
    eprintln!(
        "fleet database is up to date ({} migrations)",
        mai_fleet::store::MIGRATOR.iter().count()
    );
    Ok(ExitCode::SUCCESS)
}
