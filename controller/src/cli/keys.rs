//! `controller keys list|rotate|adopt`: the fleet's OpenRouter keys. Keys are only
//! ever shown by their mask and hash.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use mai_fleet::billing::money::{format_usd, format_usd_or_dash};
use mai_fleet::execution::{ExecuteOptions, Status};
use mai_fleet::keys::{KeyEvent, Keyring};
use mai_fleet::spec::FleetSpec;
use mai_fleet::store::Store;

use super::{actor, out, outln, table, DatabaseArgs, OutputFormat, SpecArgs, VerifyArgs};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Every fleet key (tenant, hash, mask, limit, usage this month, disabled, age),
    /// keys at OpenRouter no tenant owns, tenants whose key OpenRouter lost (exit 0, 3 when any is flagged)
    List(ListArgs),
    /// A new key for a provisioned tenant, rolled out and verified before the old
    /// one is deleted (exit 0 rotated, 3 not: the old key serves on)
    Rotate(RotateArgs),
    /// Take a tenant's hand-made key (`api_key`) under management by its hash
    Adopt(AdoptArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[arg(long, default_value = "text", value_parser = OutputFormat::text_or_json())]
    pub output: OutputFormat,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["tenant", "all"])))]
pub struct RotateArgs {
    pub tenant: Option<String>,
    /// Every provisioned tenant (with --older-than: those whose key is older)
    #[arg(long)]
    pub all: bool,
    /// Only keys older than this (e.g. 90d)
    #[arg(long, value_parser = mai_fleet::duration::parse)]
    pub older_than: Option<Duration>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub verify: VerifyArgs,
}

#[derive(clap::Args)]
pub struct AdoptArgs {
    pub tenant: String,
    /// The key's hash at OpenRouter, when its label is not enough to find it
    #[arg(long)]
    pub hash: Option<String>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::List(a) => list(a).await,
        KeysCommand::Rotate(a) => rotate(a).await,
        KeysCommand::Adopt(a) => adopt(a).await,
    }
}

/// What `apply` would do to keys, for `plan`: provisioned tenants get their keys
/// from the keyring, and nothing is created or changed, at OpenRouter or in the
/// schema. A fleet without provisioned tenants needs no database for it.
pub async fn plan(
    spec: &mut FleetSpec,
    database_url: Option<&str>,
) -> anyhow::Result<Vec<KeyEvent>> {
    let store = match database_url {
        Some(url) if spec.tenants.iter().any(|t| t.key_source.is_provisioned()) => {
            Some(Store::connect(url).await?)
        }
        _ => None,
    };
    let keyring = match &store {
        Some(s) => Some(Keyring::from_env(s, &spec.fleet)?),
        None => None,
    };
    Ok(Keyring::prepare_if_any(keyring.as_ref(), spec, true).await?)
}

/// The spec with its tenants' keys, and the keyring and store behind them.
async fn open(spec: &SpecArgs, db: &DatabaseArgs) -> anyhow::Result<(FleetSpec, Keyring)> {
    let mut spec = spec.load()?;
    let store = db.migrated().await?;
    let keyring = Keyring::from_env(&store, &spec.fleet)?;
    keyring.prepare(&mut spec, true).await?;
    Ok((spec, keyring))
}

async fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let (spec, keyring) = open(&a.spec, &a.db).await?;
    let l = keyring.list(&spec).await?;
    let flagged = !l.orphans.is_empty() || !l.missing.is_empty();
    if a.output == OutputFormat::Json {
        outln!("{}", serde_json::to_string_pretty(&l)?)?;
    } else {
        let mut rows = vec![[
            "TENANT", "HASH", "KEY", "STATUS", "ORIGIN", "LIMIT", "MONTH", "DISABLED", "AGE",
        ]
        .map(String::from)
        .to_vec()];
        for k in &l.keys {
            rows.push(vec![
                if k.in_spec {
                    k.tenant.clone()
                } else {
                    format!("{} (not in spec)", k.tenant)
                },
                k.hash.chars().take(12).collect(),
                k.mask.clone(),
                k.status.to_string(),
                k.origin.to_string(),
                format_usd_or_dash(k.limit_usd),
                format_usd_or_dash(k.usage_month_usd),
                match (k.at_openrouter, k.disabled) {
                    (false, _) => "UNKNOWN TO OPENROUTER".into(),
                    (true, Some(true)) => "yes".into(),
                    _ => "no".into(),
                },
                format!("{}d", k.age_days),
            ]);
        }
        out!("{}", table(&rows))?;
        for o in &l.orphans {
            outln!(
                "orphan: {} {:?} ({}{}), spent {}: a key at OpenRouter that belongs to no tenant",
                o.label,
                o.name,
                o.hash.chars().take(12).collect::<String>(),
                if o.disabled { ", disabled" } else { "" },
                format_usd(o.usage_usd)
            )?;
        }
        for t in &l.missing {
            outln!("missing: tenant {t}: OpenRouter no longer knows its key; `controller keys rotate {t}` gives it a new one")?;
        }
        for t in &l.unmanaged {
            outln!("unmanaged: tenant {t}: its key comes from the file; `controller keys adopt {t}` manages it")?;
        }
    }
    Ok(ExitCode::from(if flagged { 3 } else { 0 }))
}

async fn rotate(a: RotateArgs) -> anyhow::Result<ExitCode> {
    let (spec, keyring) = open(&a.spec, &a.db).await?;
    let tenants = match &a.tenant {
        Some(t) => vec![t.clone()],
        None if a.older_than.is_some() => {
            keyring
                .due_for_rotation(&spec, a.older_than, chrono::Utc::now())
                .await?
        }
        None => spec
            .tenants
            .iter()
            .filter(|t| t.key_source.is_provisioned())
            .map(|t| t.id.clone())
            .collect(),
    };
    if tenants.is_empty() {
        eprintln!("no key to rotate");
        return Ok(ExitCode::SUCCESS);
    }
    let opts = ExecuteOptions {
        parallel: 1,
        verify: a.verify.options(),
        stop_timeout_s: 10,
        purge_data: false,
        max_failures: None,
        surge: false,
    };
    let step = |host: &str, tenant: &str, msg: &str| eprintln!("  {host}/{tenant}: {msg}");
    let mut all_ok = true;
    for tenant in tenants {
        let r = keyring
            .rotate(&spec, &tenant, &actor(), &opts, &step)
            .await?;
        for e in &r.events {
            eprintln!("  key {}: {} {}", e.tenant, e.action, e.detail);
        }
        let ok = r.outcome.status == Status::Ok;
        all_ok &= ok;
        outln!(
            "{}: {} -> {}: {} {}",
            r.tenant,
            r.old_mask,
            r.new_mask,
            if ok { "rotated" } else { "NOT ROTATED" },
            r.outcome.detail
        )?;
    }
    Ok(ExitCode::from(if all_ok { 0 } else { 3 }))
}

async fn adopt(a: AdoptArgs) -> anyhow::Result<ExitCode> {
    let (spec, keyring) = open(&a.spec, &a.db).await?;
    for e in keyring.adopt(&spec, &a.tenant, a.hash.as_deref()).await? {
        outln!("{}: {} {}", e.tenant, e.action, e.detail)?;
    }
    Ok(ExitCode::SUCCESS)
}
