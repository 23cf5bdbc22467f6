//! `agent`: runs on every Docker host; mirrors each tenant's usage store into the
//! fleet Postgres every `--interval`, with each tenant's health and a heartbeat.
//!
//! Exit codes: 0 stopped on SIGTERM/SIGINT (or `--once` succeeded), 1 error.

use mai_fleet_agent::{cycle, discover, sink, spool};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mai_fleet_core::log::Repeats;

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "mai-fleet agent: tenant usage stores into the fleet Postgres"
)]
#[command(subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// This host's name in tenants.yaml (`mai-fleet.host` label of its containers)
    #[arg(long, env = "MAI_FLEET_HOST", required = true)]
    host: Option<String>,
    /// The fleet database
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "database_url_file"
    )]
    database_url: Option<String>,
    /// A file holding the fleet database's URL (how `controller apply` hands an agent
    /// container its credentials)
    #[arg(long, env = "DATABASE_URL_FILE", conflicts_with = "database_url")]
    database_url_file: Option<std::path::PathBuf>,
    /// The local Docker engine
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    docker: String,
    /// On a Kubernetes node: the fleet's namespace, whose pods labelled with this host
    /// are its tenants (listed with the pod's service account; no Docker engine)
    #[arg(long, env = "MAI_FLEET_KUBERNETES_NAMESPACE")]
    kubernetes_namespace: Option<String>,
    /// Time between cycles: 60s, 5s, 500ms
    #[arg(long, default_value = "60s", value_parser = mai_fleet_core::duration::parse)]
    interval: Duration,
    /// Run one cycle and exit (1 if it failed)
    #[arg(long)]
    once: bool,
    /// Where batches wait while Postgres is away (a subdirectory per host is made)
    #[arg(
        long,
        env = "MAI_FLEET_SPOOL_DIR",
        default_value = "/var/lib/mai-fleet/spool"
    )]
    spool_dir: std::path::PathBuf,
    /// Most the spool may hold, in MiB; past it the store itself keeps the rows
    #[arg(long, default_value_t = 256)]
    spool_max_mb: u64,
    /// Longest one tenant's store may take to read; past it the read is refused
    #[arg(long, default_value = "10s", value_parser = mai_fleet_core::duration::parse)]
    store_read_budget: Duration,
    /// Most rows changed since the last sync that one read of a table may load
    #[arg(long, default_value_t = 200_000)]
    store_max_rows: i64,
    /// How far ahead of this host's clock a store's time stamps may be
    #[arg(long, default_value = "1h", value_parser = mai_fleet_core::duration::parse)]
    max_clock_skew: Duration,
    #[command(flatten)]
    log: mai_fleet_core::log::LogArgs,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Ask a tenant's `GET /health/usage-tracking` on this host and print the raw
    /// answer: how the controller verifies a tenant whose port only this host reaches
    Probe {
        /// Where the tenant's port is published here, e.g. 127.0.0.1:8080
        address: std::net::SocketAddr,
        #[arg(long, default_value = "2s", value_parser = mai_fleet_core::duration::parse)]
        timeout: Duration,
    },
    /// Delete a tenant's directory `DATA_ROOT/TENANT` on this host, following no link:
    /// how `controller apply --prune --purge-data` removes a Kubernetes node's data
    Purge {
        /// The host's `data_root`
        #[arg(long)]
        data_root: std::path::PathBuf,
        /// The tenant's id
        #[arg(long)]
        tenant: String,
        /// Delete what is in the directory and keep the directory itself (a volume's
        /// mount point: a tenant's claim)
        #[arg(long)]
        keep_directory: bool,
    },
    /// Wait, doing nothing, then exit: the pod the controller runs `archive` and
    /// `unpack` in on a Kubernetes node, gone by itself if the controller is
    Hold {
        #[arg(long = "for", value_parser = mai_fleet_core::duration::parse)]
        duration: Duration,
    },
    /// Write a tenant's data directory to stdout as a tar stream (entries `data/…`):
    /// the store as SQLite's online backup of one moment, no link followed
    Archive {
        /// The tenant's data directory
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Where the store's copy is made before it is sent
        #[arg(long, default_value = "/tmp")]
        scratch: std::path::PathBuf,
        #[command(flatten)]
        budget: BudgetArgs,
    },
    /// Unpack a tar stream from stdin into a tenant's data directory, following no
    /// link, given to the directory's owner
    Unpack {
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Leading components dropped from each entry's name
        #[arg(long, default_value_t = 0)]
        strip: usize,
        #[command(flatten)]
        budget: BudgetArgs,
    },
}

#[derive(clap::Args)]
struct BudgetArgs {
    /// Most bytes of file content
    #[arg(long)]
    max_bytes: u64,
    /// Most files and directories
    #[arg(long)]
    max_files: u64,
}

impl BudgetArgs {
    fn budget(&self) -> mai_fleet_core::tree::Budget {
        mai_fleet_core::tree::Budget {
            max_bytes: self.max_bytes,
            max_files: self.max_files,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Some(Command::Probe { address, timeout }) => return probe(*address, *timeout),
        Some(Command::Purge {
            data_root,
            tenant,
            keep_directory,
        }) => return purge(data_root, tenant, *keep_directory),
        Some(Command::Hold { duration }) => {
            std::thread::sleep(*duration);
            return ExitCode::SUCCESS;
        }
        Some(Command::Archive {
            dir,
            scratch,
            budget,
        }) => {
            let out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            let done = mai_fleet_agent::copy::archive(dir, scratch, budget.budget(), out);
            return copied("archive", done);
        }
        Some(Command::Unpack { dir, strip, budget }) => {
            let input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
            let done = mai_fleet_agent::copy::unpack(dir, *strip, budget.budget(), input);
            return copied("unpack", done);
        }
        None => {}
    }
    if let Err(e) = mai_fleet_core::log::init(&args.log) {
        eprintln!("agent: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent stopped");
            ExitCode::from(1)
        }
    };
    // A store read abandoned past its budget may still hold a thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// How `archive` and `unpack` end: what they did on stderr (stdout may be the
/// archive), exit 0, or why not, exit 1.
fn copied(
    what: &str,
    done: Result<mai_fleet_core::tree::Copied, mai_fleet_agent::copy::CopyFailed>,
) -> ExitCode {
    match done {
        Ok(c) => {
            eprintln!(
                "{what}: {} files, {} directories, {} bytes; skipped {} links, {} FIFOs, {} devices, {} sockets",
                c.files, c.dirs, c.bytes, c.skipped.links, c.skipped.fifos, c.skipped.devices, c.skipped.sockets
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent: {what}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `agent purge`: exit 0 deleted (or nothing there), 1 refused or failed.
fn purge(data_root: &std::path::Path, tenant: &str, keep_directory: bool) -> ExitCode {
    let refuse = |why: String| {
        eprintln!("agent: purge: {why}");
        ExitCode::from(1)
    };
    if let Err(e) = mai_fleet_core::check_tenant_id(tenant) {
        return refuse(format!("{tenant:?} is not a tenant id: {e}"));
    }
    if !data_root.is_absolute() {
        return refuse(format!("{} is not an absolute path", data_root.display()));
    }
    let dir = data_root.join(tenant);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("nothing to purge in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => refuse(format!("{}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => refuse(format!("{} is not a directory (a link?)", dir.display())),
        // By handles: a link inside is removed, never followed.
        Ok(_) if keep_directory => {
            match mai_fleet_core::tree::Dir::open(&dir).and_then(|d| d.clear(&|_| false)) {
                Ok(()) => {
                    println!("purged what was in {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => refuse(e.to_string()),
            }
        }
        // remove_dir_all removes links, never what they point to.
        Ok(_) => match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                println!("purged {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => refuse(format!("{}: {e}", dir.display())),
        },
    }
}

/// The host's tenants: the pods of a Kubernetes namespace, else the Docker engine's
/// containers.
async fn source(args: &Args) -> anyhow::Result<discover::Source> {
    if let Some(namespace) = &args.kubernetes_namespace {
        let config = kube::Config::incluster()
            .context("the Kubernetes API as a pod sees it (its service account)")?;
        let client = kube::Client::try_from(config).context("a Kubernetes client")?;
        return Ok(discover::Source::Kubernetes {
            client,
            namespace: namespace.clone(),
        });
    }
    let path = args
        .docker
        .strip_prefix("unix://")
        .context("the agent talks to its own host's engine over a unix:// socket")?;
    let docker = bollard::Docker::connect_with_unix(path, 60, bollard::API_DEFAULT_VERSION)?
        .negotiate_version()
        .await
        .context("connect to the Docker engine")?;
    Ok(discover::Source::Docker(docker))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let source = source(&args).await?;
    let database_url = match (&args.database_url, &args.database_url_file) {
        (Some(url), _) => url.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the database URL from {}", file.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("give --database-url or --database-url-file"),
    };
    let host = args.host.clone().context("--host is required")?;
    let sink = sink::Sink::connect(&database_url, &host).await?;
    let mut stop = std::pin::pin!(shutdown());
    let mut memory = cycle::Memory::with_budget(mai_fleet_agent::reader::Budget {
        time: args.store_read_budget,
        max_rows: args.store_max_rows,
        max_clock_skew: args.max_clock_skew,
        ..Default::default()
    });
    let spool_dir = args.spool_dir.join(&host);
    let mut spool = Some(
        spool::Spool::open(&spool_dir, args.spool_max_mb << 20)
            .with_context(|| format!("opening the spool in {}", spool_dir.display()))?,
    );
    // Failures that repeat every cycle (Postgres away, a broken tenant) are logged
    // when they start, then once every few minutes, not once a cycle.
    let repeats = Repeats::new(REPEAT_PERIOD);
    let host = host.as_str();
    loop {
        // SIGTERM in the middle of a cycle drops it: each tenant's rows and watermarks
        // commit together (or spool atomically), so what was not committed is read
        // again from the store by the next agent.
        let result = tokio::select! {
            r = cycle::run(&source, &sink, host, &mut memory, &mut spool) => r,
            _ = &mut stop => {
                tracing::info!(host, "stopping in the middle of a cycle; nothing committed is lost");
                return Ok(ExitCode::SUCCESS);
            }
        };
        match result {
            Ok(r) => {
                log_cycle(host, &r, &repeats);
                if args.once {
                    let ok = r.errors.is_empty() && !r.database_away;
                    return Ok(ExitCode::from(if ok { 0 } else { 1 }));
                }
            }
            // Postgres or Docker away: nothing moved, so nothing is lost; the next
            // cycle reads again from the last committed watermarks.
            Err(e) => {
                if let Some(held_back) = repeats.check("cycle") {
                    tracing::warn!(host, held_back, error = format!("{e:#}"), "cycle failed");
                }
                if args.once {
                    return Ok(ExitCode::from(1));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Prints the raw answer on stdout; exit 1 with the reason on stderr when there is
/// none (not listening yet, timeout).
fn probe(address: std::net::SocketAddr, timeout: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent probe: {e}");
            return ExitCode::from(1);
        }
    };
    let ip = address.ip().to_string();
    match runtime.block_on(mai_fleet_core::probe::get(&ip, address.port(), timeout)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// How often a failure that persists is logged again.
const REPEAT_PERIOD: Duration = Duration::from_secs(300);

/// One line a cycle with its figures as fields; what went wrong as warnings, each
/// rate-limited by its text (a tenant that stays broken is not logged every cycle).
fn log_cycle(host: &str, r: &cycle::CycleReport, repeats: &Repeats) {
    tracing::info!(
        host,
        elapsed_ms = r.elapsed_ms,
        tenants = r.tenants,
        stores_read = r.stores_read,
        rows_changed = r.rows_changed,
        regressions = r.regressions,
        inactive = r.inactive.len(),
        spooled = r.spooled,
        unspooled = r.unspooled,
        database_away = r.database_away,
        errors = r.errors.len(),
        "cycle"
    );
    if r.database_away {
        if let Some(held_back) = repeats.check("database") {
            tracing::warn!(
                host,
                held_back,
                error = r.database_error.as_deref().unwrap_or("unknown"),
                "the fleet database cannot be reached; batches wait in the spool"
            );
        }
    } else if repeats.clear("database") {
        tracing::info!(
            host,
            unspooled = r.unspooled,
            "the fleet database is reachable again"
        );
    }
    for line in &r.inactive {
        if let Some(held_back) = repeats.check(line) {
            tracing::warn!(host, held_back, "tracking inactive: {line}");
        }
    }
    for line in &r.warnings {
        if let Some(held_back) = repeats.check(line) {
            tracing::warn!(host, held_back, "{line}");
        }
    }
    for line in &r.errors {
        if let Some(held_back) = repeats.check(line) {
            tracing::error!(host, held_back, "{line}");
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::purge;
    use std::os::unix::fs::symlink;

    /// What a tenant controls in its directory (links, a hostile label as the id)
    /// never makes `agent purge` delete outside `DATA_ROOT/TENANT`.
    #[test]
    fn purge_follows_no_link_and_takes_only_a_tenant_id() {
        let base = std::env::temp_dir().join(format!("agent-purge-{}", std::process::id()));
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(&root).expect("root");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(outside.join("keep"), "controller's file").expect("write");

        // The tenant's directory is itself a link to elsewhere: refused.
        symlink(&outside, root.join("linked")).expect("link");
        let _ = purge(&root, "linked", false);
        let _ = purge(&root, "linked", true);
        assert!(
            outside.join("keep").exists(),
            "purge followed the tenant's link"
        );
        assert!(
            root.join("linked").exists(),
            "a refused purge removed something"
        );

        // A link inside the tenant's directory is removed, not what it points to.
        std::fs::create_dir_all(root.join("acme/data")).expect("dir");
        symlink(&outside, root.join("acme/data/escape")).expect("link");
        let _ = purge(&root, "acme", false);
        assert!(
            !root.join("acme").exists(),
            "the tenant's directory is left"
        );
        assert!(
            outside.join("keep").exists(),
            "purge deleted through a link"
        );

        // A label that is no tenant id never becomes a path.
        for hostile in ["../outside", "..", "/"] {
            let _ = purge(&root, hostile, false);
            let _ = purge(&root, hostile, true);
            assert!(outside.join("keep").exists(), "{hostile:?} reached outside");
        }
        assert!(root.exists());

        // A claim's mount point: emptied, kept; a link in it removed, not followed.
        std::fs::create_dir_all(root.join("beta/uploads")).expect("dir");
        std::fs::write(root.join("beta/webui.db"), "store").expect("write");
        symlink(&outside, root.join("beta/escape")).expect("link");
        let _ = purge(&root, "beta", true);
        assert!(root.join("beta").is_dir(), "the mount point went");
        assert_eq!(
            std::fs::read_dir(root.join("beta")).expect("read").count(),
            0,
            "something is left in the claim"
        );
        assert!(
            outside.join("keep").exists(),
            "purge deleted through a link"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
