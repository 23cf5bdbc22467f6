//! `controller serve`: the dashboard, its JSON API and /metrics, with the fleet's
//! background jobs (NBP rates, alert evaluation, OpenRouter polling, notification
//! senders, the page cache's listener, a database probe) under one supervisor.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use mai_fleet::jobs::rates as rate_jobs;
use mai_fleet::keys::{AccountJob, Keyring};
use mai_fleet::rates::nbp::NbpClient;
use mai_fleet::spec::FleetSpec;
use mai_fleet::store::Store;
use mai_fleet::supervisor::{Job, Supervisor};
use mai_fleet::web::cache::PageCache;

use super::billing::rate_table;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub log: mai_fleet_core::log::LogArgs,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080", env = "MAI_FLEET_LISTEN")]
    pub listen: SocketAddr,
    /// Mark session cookies Secure (when served behind TLS)
    #[arg(long, env = "MAI_FLEET_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// Do not fetch NBP rates on a schedule (another controller does)
    #[arg(long)]
    pub no_rate_sync: bool,
    #[arg(long, env = "MAI_FLEET_RATE_TABLE", default_value = "C")]
    pub rate_table: String,
    /// The fleet spec whose tenants' keys are checked against OpenRouter (`GET /key`)
    #[arg(long, env = "MAI_FLEET_SPEC")]
    pub spec: Option<std::path::PathBuf>,
    /// Do not evaluate alert rules nor send notifications (another controller does)
    #[arg(long)]
    pub no_alerts: bool,
    /// A file holding the bearer token `/metrics` asks for (owner-only); without it
    /// (or MAI_FLEET_METRICS_TOKEN) `/metrics` is off
    #[arg(long, env = "MAI_FLEET_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<std::path::PathBuf>,
    /// Failed logins one client address may make: COUNT/WINDOW
    #[arg(long, env = "MAI_FLEET_LOGIN_LIMIT_ADDRESS", default_value = "10/15m")]
    pub login_limit_address: String,
    /// Failed logins for one user name, from anywhere: COUNT/WINDOW
    #[arg(long, env = "MAI_FLEET_LOGIN_LIMIT_USER", default_value = "50/15m")]
    pub login_limit_user: String,
    /// Reverse proxies (IP addresses, comma-separated) whose X-Forwarded-For is believed
    #[arg(long, env = "MAI_FLEET_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// A session unused this long ends
    #[arg(long, env = "MAI_FLEET_SESSION_IDLE", default_value = "30m", value_parser = mai_fleet::duration::parse)]
    pub session_idle: std::time::Duration,
    #[command(flatten)]
    pub db: super::DatabaseArgs,
}

/// The metrics token from its file (refused when others may read it) or from
/// MAI_FLEET_METRICS_TOKEN.
fn metrics_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => Some(mai_fleet::crypto::read_secret_file(path).map_err(anyhow::Error::msg)?),
        None => std::env::var("MAI_FLEET_METRICS_TOKEN").ok(),
    };
    let token = token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if let Some(t) = &token {
        anyhow::ensure!(
            t.len() >= 16,
            "the metrics token must have at least 16 characters"
        );
    }
    Ok(token)
}

/// How often the database is probed for `/healthz`, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// What the jobs get to finish their round at SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let table = rate_table(&args.rate_table)?;
    let store = Store::connect_sized(&args.db.database_url, 8).await?;
    store
        .migrate()
        .await
        .context("migrating the fleet database before serving")?;
    let ttl = PageCache::ttl_from_env().map_err(anyhow::Error::msg)?;
    let cache = PageCache::new(ttl);
    let mut jobs = Supervisor::new();
    let health = jobs.health();

    let (probe_store, probe_health) = (store.clone(), Arc::clone(&health));
    jobs.spawn(Job::new("database", Some(PROBE_EVERY * 3), move |ctx| {
        probe_database(probe_store.clone(), Arc::clone(&probe_health), ctx)
    }));
    let (cache_job, pool) = (Arc::clone(&cache), store.pool.clone());
    jobs.spawn(Job::new("page-cache", None, move |ctx| {
        Arc::clone(&cache_job).listen(pool.clone(), ctx)
    }));
    if !args.no_rate_sync {
        let rate_schedule = rate_jobs::schedule_for(table).map_err(anyhow::Error::msg)?;
        let rates_store = store.clone();
        jobs.spawn(Job::new("rates", None, move |ctx| {
            rate_jobs::run(
                rates_store.clone(),
                NbpClient::from_env(),
                table,
                rate_schedule.clone(),
                ctx,
            )
        }));
    }
    let spec = match &args.spec {
        Some(path) => Some(load_spec(path, &store).await?),
        None => None,
    };
    if !args.no_alerts {
        spawn_alert_jobs(&mut jobs, &store, table, spec.as_ref())?;
    }
    spawn_account_job(&mut jobs, &store, spec.as_ref())?;
    spawn_backup_job(&mut jobs, &store, spec.as_ref())?;
    let limit = |text: &str, what: &str| {
        mai_fleet::web::throttle::Limit::parse(text).map_err(|e| anyhow::anyhow!("{what}: {e}"))
    };
    let security = mai_fleet::web::Security {
        throttle: mai_fleet::web::throttle::LoginThrottle::new(mai_fleet::web::throttle::Limits {
            per_address: limit(&args.login_limit_address, "--login-limit-address")?,
            per_user: limit(&args.login_limit_user, "--login-limit-user")?,
        }),
        metrics_token: metrics_token(args.metrics_token_file.as_deref())?,
        trusted_proxies: args.trusted_proxies.clone(),
        idle_timeout: args.session_idle,
        ..Default::default()
    };
    if security.metrics_token.is_none() {
        tracing::warn!(
            "/metrics is off (set MAI_FLEET_METRICS_TOKEN_FILE to a file holding a bearer token)"
        );
    }
    let state = mai_fleet::web::AppState {
        store,
        rate_table: table,
        secure_cookies: args.secure_cookies,
        cache,
        security: Arc::new(security),
        health,
        spec: spec.map(Arc::new),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "dashboard listening");
    let stop = jobs.token();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        mai_fleet::web::shutdown_signal().await;
        tracing::info!("stopping: jobs finish their round, requests in flight get 5 s");
        signal_stop.cancel();
    });
    let served = mai_fleet::web::serve(state, listener, stop.clone()).await;
    // The accept loop also ends when it fails: the jobs stop with it.
    stop.cancel();
    jobs.shutdown(SHUTDOWN_GRACE).await;
    served.with_context(|| format!("serving on {}", args.listen))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Alert evaluation, OpenRouter polling (with a spec) and one sender per receiver.
fn spawn_alert_jobs(
    jobs: &mut Supervisor,
    store: &Store,
    table: mai_fleet::rates::RateTable,
    spec: Option<&FleetSpec>,
) -> anyhow::Result<()> {
    use mai_fleet::alerts::config::{AlertsConfig, Evaluation};
    let config = Arc::new(AlertsConfig::from_env()?);
    if let Some(spec) = spec {
        let spec = spec.clone();
        let interval =
            mai_fleet::alerts::openrouter::poll_interval_from_env().map_err(anyhow::Error::msg)?;
        let poll_store = store.clone();
        let keyring = Keyring::from_env(store, &spec.fleet)?;
        // A restarted poller starts from the spec again (its back-off is forgotten).
        let late = interval * 3 + Duration::from_secs(60);
        jobs.spawn(Job::new("openrouter", Some(late), move |ctx| {
            let poller = mai_fleet::alerts::openrouter::Poller::from_spec(&spec)
                .with_keyring(keyring.clone(), spec.clone());
            poller.run(poll_store.clone(), interval, ctx)
        }));
    } else {
        tracing::warn!(
            "no --spec: OpenRouter's ledger is not polled (capture_gap and spend checks need it)"
        );
    }
    let late = match &config.evaluation {
        Evaluation::Every(d) => Some(*d * 3 + Duration::from_secs(60)),
        Evaluation::Cron(_) => None,
    };
    let (eval_store, eval_config) = (store.clone(), Arc::clone(&config));
    jobs.spawn(Job::new("alerts", late, move |ctx| {
        mai_fleet::alerts::evaluate::run_schedule(
            eval_store.clone(),
            Arc::clone(&eval_config),
            table,
            ctx,
        )
    }));
    for receiver in config.receivers.clone() {
        let (send_store, send_config) = (store.clone(), Arc::clone(&config));
        let name = format!("notify:{}", receiver.name);
        jobs.spawn(Job::new(name, Some(Duration::from_secs(120)), move |ctx| {
            mai_fleet::alerts::notify::sender(
                send_store.clone(),
                Arc::clone(&send_config),
                receiver.clone(),
                ctx,
            )
        }));
    }
    Ok(())
}

/// Backups on `MAI_FLEET_BACKUP_CRON` (default nightly) into `MAI_FLEET_BACKUP_DIR`,
/// when that is set and `--spec` names the tenants.
fn spawn_backup_job(
    jobs: &mut Supervisor,
    store: &Store,
    spec: Option<&FleetSpec>,
) -> anyhow::Result<()> {
    use mai_fleet::ops::backup::BackupOptions;
    let Some(dir) = std::env::var_os("MAI_FLEET_BACKUP_DIR").filter(|d| !d.is_empty()) else {
        return Ok(());
    };
    let Some(spec) = spec.cloned() else {
        tracing::warn!(
            "MAI_FLEET_BACKUP_DIR is set but no --spec names the tenants: no scheduled backups"
        );
        return Ok(());
    };
    let cron = std::env::var("MAI_FLEET_BACKUP_CRON")
        .unwrap_or_else(|_| mai_fleet::jobs::backups::DEFAULT_CRON.into());
    let schedule = mai_fleet::schedule::parse_cron(&cron)
        .map_err(|e| anyhow::anyhow!("MAI_FLEET_BACKUP_CRON=`{cron}`: {e}"))?;
    let keep = match std::env::var("MAI_FLEET_BACKUP_KEEP") {
        Ok(k) => k.parse().context("MAI_FLEET_BACKUP_KEEP")?,
        Err(_) => 7,
    };
    let dir = std::path::PathBuf::from(dir);
    let store = store.clone();
    jobs.spawn(Job::new("backups", None, move |ctx| {
        let opts = BackupOptions {
            dir: dir.clone(),
            keep,
            scheduled: true,
            actor: "controller serve".into(),
        };
        mai_fleet::jobs::backups::run_schedule(
            spec.clone(),
            store.clone(),
            opts,
            schedule.clone(),
            ctx,
        )
    }));
    Ok(())
}

/// The spec `--spec` names, provisioned tenants with their keys from the keyring.
async fn load_spec(path: &std::path::Path, store: &Store) -> anyhow::Result<FleetSpec> {
    let mut spec = mai_fleet::spec::load(path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("loading the spec {}", path.display()))?;
    if spec.tenants.iter().any(|t| t.key_source.is_provisioned()) {
        Keyring::from_env(store, &spec.fleet)?
            .prepare(&mut spec, true)
            .await?;
    }
    Ok(spec)
}

/// With a management key: the account's credit, OpenRouter's daily ledger per key,
/// `on_limit: disable`, and (with `--spec`) scheduled rotations.
fn spawn_account_job(
    jobs: &mut Supervisor,
    store: &Store,
    spec: Option<&FleetSpec>,
) -> anyhow::Result<()> {
    let fleet = spec.map_or("default", |s| s.fleet.as_str());
    let keyring = Keyring::from_env(store, fleet)?;
    if !keyring.has_management_key() {
        tracing::info!(
            "no OpenRouter management key: the account's credit and daily ledger are not followed"
        );
        return Ok(());
    }
    let job = Arc::new(AccountJob::from_env(spec.cloned()).map_err(anyhow::Error::msg)?);
    let late = job.every * 3 + Duration::from_secs(300);
    jobs.spawn(Job::new("openrouter-account", Some(late), move |ctx| {
        let job = Arc::clone(&job);
        let keyring = keyring.clone();
        async move { keyring.run_account_job(&job, ctx).await }
    }));
    Ok(())
}

/// `SELECT 1` every few seconds, bounded in time: `/healthz` reads the verdict.
async fn probe_database(
    store: Store,
    health: Arc<mai_fleet::supervisor::Health>,
    ctx: mai_fleet::supervisor::JobContext,
) -> Result<(), mai_fleet::supervisor::JobError> {
    let repeats = mai_fleet_core::log::Repeats::new(Duration::from_secs(300));
    loop {
        let result = match tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        };
        match &result {
            Ok(()) => {
                if repeats.clear("database") {
                    tracing::info!("fleet database answers again");
                }
            }
            Err(e) => {
                if let Some(held_back) = repeats.check("database") {
                    tracing::warn!(held_back, error = e.as_str(), "fleet database unavailable");
                }
            }
        }
        health.set_database(result.err());
        ctx.beat();
        if !ctx.sleep(PROBE_EVERY).await {
            return Ok(());
        }
    }
}
