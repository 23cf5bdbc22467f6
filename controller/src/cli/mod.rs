//! The `controller` command line: one module per command, each an `Args` (or a
//! subcommand enum) and a `run` that calls the library and renders what it returns.
//! Tables and JSON go to stdout, progress and errors to stderr.

pub mod alerts;
pub mod apply;
pub mod backup;
pub mod billing;
pub mod docs;
pub mod exec;
pub mod healthcheck;
pub mod history;
pub mod host;
pub mod invoices;
pub mod keys;
pub mod logs;
pub mod migrate;
pub mod plan;
pub mod rates;
pub mod reconcile;
pub mod render;
pub mod restart;
pub mod restore;
pub mod rollback;
pub mod serve;
pub mod status;
pub mod usage;
pub mod user;
pub mod validate;

use std::path::Path;
use std::process::ExitCode;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use mai_fleet::apply::FleetError;
use mai_fleet::spec::{self, FleetSpec, SpecError};
use mai_fleet::store::Store;

/// `println!` that hands a failed write (a closed pipe: `controller … | head`) back
/// to the caller instead of panicking; `main` ends such a run quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
/// `print!` that returns its write error, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}
pub(crate) use {out, outln};

#[derive(Parser)]
#[command(
    name = "controller",
    version,
    about = "mai-fleet controller: tenant containers of the mAI app on Docker hosts",
    after_help = "Exit codes and every command: docs/cli.md"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check a fleet spec: every error at once, each with file:line:col (exit 0 valid, 1 invalid, 2 unreadable)
    Validate(validate::Args),
    /// Show what apply would change (exit 0 nothing to change, 2 changes pending, 1 error)
    Plan(plan::Args),
    /// Create, update and verify tenant containers (exit 0 ok, 3 some tenants failed, 1 error)
    Apply(apply::ApplyArgs),
    /// The Kubernetes objects apply sends to Kubernetes hosts, secrets redacted, as YAML documents
    Render(render::Args),
    /// Create or upgrade the fleet database schema
    Migrate(migrate::Args),
    /// Agent credentials of a host: `host add NAME` prints them once
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Usage per tenant per day as the agents recorded it
    Usage(usage::Args),
    /// Billing per tenant for a month in USD and PLN; `billing close MONTH` freezes it
    Billing(billing::BillingArgs),
    /// KSeF FA(3) invoices of closed months: `draft MONTH`, `list`, `show NUMBER`, `send`
    #[command(subcommand)]
    Invoices(invoices::InvoicesCommand),
    /// NBP exchange rates: `rates sync --from D` backfills, `rates show` tells a day's rate
    #[command(subcommand)]
    Rates(rates::RatesCommand),
    /// Alerts: `list`, `silence`, `unsilence`, `evaluate` (one cycle), `deliveries`
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Dashboard users: `user add NAME --password-stdin`, `user list`, `user remove`
    #[command(subcommand)]
    User(user::UserCommand),
    /// The fleet dashboard, JSON API and /metrics over HTTP, with the scheduled jobs
    Serve(serve::ServeArgs),
    /// Ask a running `serve` for /healthz (container health checks): exit 0 healthy, 1 not
    Healthcheck(healthcheck::Args),
    /// Every tenant's tracking (active/inactive and why), data age and agent (exit 0 all active, 3 not all, 1 error)
    Status(status::Args),
    /// A tenant's container output, secrets masked (`-f` follows)
    Logs(logs::Args),
    /// Restart a tenant's container and verify it as a launch (exit 0 verified, 3 not)
    Restart(restart::Args),
    /// Run a command in a tenant's container, recorded with who ran what (exits with its code)
    Exec(exec::Args),
    /// A tenant's applies and operations: images, spec hashes, who, result
    History(history::Args),
    /// Run a previous recorded revision of a tenant again, verified (exit 0 ok, 3 not)
    Rollback(rollback::Args),
    /// Back tenants' data up: a consistent copy of the usage store and the uploads
    Backup(backup::Args),
    /// Put a backup in place of a tenant's data, verified and recorded
    Restore(restore::Args),
    /// The fleet's OpenRouter keys: `keys list`, `keys rotate TENANT|--all`, `keys adopt TENANT`
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// OpenRouter's ledger against the tenant's recorded usage, per day and model (exit 0 agree, 3 differ)
    Reconcile(reconcile::Args),
    /// Shell completions (bash, zsh, fish, elvish, powershell) on stdout
    Completions(docs::CompletionsArgs),
    /// The manual page (roff) on stdout (`controller man | man -l -`), or one per command with --dir
    Man(docs::ManArgs),
}

/// How a command renders its result. Every command takes `text` and `json`;
/// `billing` also `csv` (and calls its text a table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    #[value(alias = "table")]
    Text,
    Json,
    Csv,
}

impl OutputFormat {
    /// For `value_parser`: text or json only.
    pub fn text_or_json() -> impl clap::builder::TypedValueParser<Value = OutputFormat> {
        clap::builder::PossibleValuesParser::new(["text", "json"]).map(|s: String| Self::named(&s))
    }

    fn named(s: &str) -> Self {
        match s {
            "json" => OutputFormat::Json,
            "csv" => OutputFormat::Csv,
            _ => OutputFormat::Text,
        }
    }
}

/// The fleet database, as every command that needs it takes it.
#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// The fleet database (postgres://…; `?sslmode=verify-full` for TLS)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

impl DatabaseArgs {
    /// Connected, the schema as it is (for commands that only read).
    pub async fn connect(&self) -> anyhow::Result<Store> {
        Ok(Store::connect(&self.database_url).await?)
    }

    /// Connected and migrated (for commands that write).
    pub async fn migrated(&self) -> anyhow::Result<Store> {
        let store = self.connect().await?;
        store.migrate().await?;
        Ok(store)
    }
}

/// The fleet database for commands that work without one too (`plan`, `apply`):
/// given, they record or read there.
#[derive(Args, Clone)]
pub struct OptionalDatabaseArgs {
    /// The fleet database (postgres://…; `?sslmode=verify-full` for TLS); without it
    /// nothing is recorded or read there
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The fleet spec, for commands on one tenant: it names the tenant's host and engine.
#[derive(Args, Clone)]
pub struct SpecArgs {
    /// The fleet spec
    #[arg(long, env = "MAI_FLEET_SPEC", default_value = "tenants.yaml")]
    pub spec: std::path::PathBuf,
}

impl SpecArgs {
    /// The spec, or an error after every problem in it was printed.
    pub fn load(&self) -> anyhow::Result<FleetSpec> {
        load_or_report(&self.spec, OutputFormat::Text)
            .ok_or_else(|| anyhow::anyhow!("{} is not a valid spec", self.spec.display()))
    }
}

/// What a command on one recorded tenant takes: the tenant, the spec that locates
/// it, the database that records what is done.
#[derive(Args, Clone)]
pub struct TenantArgs {
    pub tenant: String,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

impl TenantArgs {
    /// The spec (provisioned tenants with their keys, read from the keyring) and
    /// the migrated fleet database.
    pub async fn open(&self) -> anyhow::Result<(FleetSpec, Store)> {
        let mut spec = self.spec.load()?;
        let store = self.db.migrated().await?;
        if spec.tenants.iter().any(|t| t.key_source.is_provisioned()) {
            mai_fleet::keys::Keyring::from_env(&store, &spec.fleet)?
                .prepare(&mut spec, true)
                .await?;
        }
        Ok((spec, store))
    }
}

/// Who acts, as recorded: `MAI_FLEET_ACTOR`, else user@machine.
pub fn actor() -> String {
    if let Ok(a) = std::env::var("MAI_FLEET_ACTOR") {
        if !a.is_empty() {
            return a;
        }
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{user}@{host}")
}

/// The verification flags of commands that launch a tenant.
#[derive(Args, Clone)]
pub struct VerifyArgs {
    /// How long the container must run without restarting to count as verified
    #[arg(long, default_value = "2s", value_parser = mai_fleet::duration::parse)]
    pub settle: std::time::Duration,
    /// Give up verifying after this long
    #[arg(long, default_value = "60s", value_parser = mai_fleet::duration::parse)]
    pub verify_timeout: std::time::Duration,
}

impl VerifyArgs {
    pub fn options(&self) -> mai_fleet::execution::VerifyOptions {
        mai_fleet::execution::VerifyOptions {
            settle: self.settle,
            timeout: self.verify_timeout,
            ..Default::default()
        }
    }
}

/// Loads a spec for plan/apply; on error prints every problem and returns None.
pub fn load_or_report(file: &Path, output: OutputFormat) -> Option<FleetSpec> {
    match spec::load(file) {
        Ok(s) => Some(s),
        Err(e) => {
            report_spec_error(file, &e, output);
            None
        }
    }
}

pub fn report_spec_error(file: &Path, e: &SpecError, output: OutputFormat) {
    // A closed stdout is no error worth telling anyone about.
    let _ = match (e, output) {
        (SpecError::Invalid { diagnostics, .. }, OutputFormat::Json) => outln!(
            "{}",
            serde_json::json!({"valid": false, "file": file.display().to_string(), "errors": diagnostics})
        ),
        (SpecError::Invalid { diagnostics, .. }, _) => {
            for d in diagnostics {
                eprintln!("{d}");
            }
            eprintln!(
                "{}: {} error(s); nothing was changed",
                file.display(),
                diagnostics.len()
            );
            Ok(())
        }
        (SpecError::Unreadable { .. }, OutputFormat::Json) => outln!(
            "{}",
            serde_json::json!({"valid": false, "file": file.display().to_string(), "unreadable": e.to_string()})
        ),
        (SpecError::Unreadable { .. }, _) => {
            eprintln!("controller: {e}");
            Ok(())
        }
    };
}

pub fn report_fleet_errors(errors: &[FleetError]) -> ExitCode {
    for e in errors {
        eprintln!("controller: error: {}", chain(e));
    }
    eprintln!(
        "controller: {} host(s) could not be planned; nothing was changed",
        errors.len()
    );
    ExitCode::from(1)
}

/// An error and its causes on one line (`mai_fleet::error_chain`).
pub fn chain(e: &dyn std::error::Error) -> String {
    mai_fleet::error_chain(e)
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let last = r.len().saturating_sub(1);
        for (i, cell) in r.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

/// Whether an error is a write to a closed stdout (the reader went away).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
