//! Backups of a tenant's data and their restore.
//!
//! A backup is a directory `<backup dir>/<tenant>/<UTC time>/` holding `webui.db`,
//! copied with SQLite's online backup API in one step (one read transaction: a
//! consistent snapshot while the app goes on writing, never a file copy of a live
//! database), the tenant's other files (uploads) less caches, and `manifest.json`
//! (the copy's SHA-256, its usage totals, `PRAGMA integrity_check`). It is made in a
//! hidden directory and renamed into place whole. The tenant's data directory is
//! the tenant's: links, FIFOs and devices in it are never followed or read.
//!
//! A tenant of a local (`unix://`) engine is copied from its data directory while it
//! runs. A remote host's data directory is reached through its engine: the tenant
//! is paused, its directory read with the archive API (a frozen copy, as at a power
//! cut, which SQLite recovers from: the journals travel with the store), the tenant
//! resumed, and the same online backup made from that copy here.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use chrono::Utc;
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{locate, Located, OpsError};
use crate::docker::{self, VerifyOptions};
use crate::spec::{BackupLimits, FleetSpec};
use crate::store::operations::NewBackup;
use crate::store::Store;
use crate::tree::{self, Copy, Dir, TreeError};
use mai_fleet_core::contract::{check_store_files, STORE_FILE};

/// What is never copied: the store itself (copied by the backup API), its journals,
/// and the app's caches (rebuilt by the app).
const LEFT_OUT: [&str; 6] = [
    "webui.db",
    "webui.db-wal",
    "webui.db-shm",
    "webui.db-journal",
    "cache",
    "vector_db",
];

const MANIFEST: &str = "manifest.json";

/// Why a backup or a restore did not happen. The tenant's data is hostile, so most of
/// these are the tenant's doing and name what it did.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{0}")]
    StoreFile(#[from] mai_fleet_core::contract::StoreFileError),
    #[error("the usage store {what}: {source}")]
    Sqlite {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the usage store is refused: {0}")]
    Refused(String),
    #[error("the copy fails PRAGMA integrity_check: {0}")]
    Integrity(String),
    #[error("the store stayed locked by the app for 30 s")]
    Locked,
    #[error("over the budget of {max_bytes} bytes: {what} holds {bytes} bytes")]
    Budget {
        what: String,
        bytes: u64,
        max_bytes: u64,
    },
    #[error("took longer than the {0} s a backup or restore may take with this tenant's data")]
    TimedOut(u64),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a backup: {1}")]
    NotABackup(PathBuf, String),
    #[error("{path} is a backup of tenant {of}, not {tenant}")]
    OtherTenant {
        path: PathBuf,
        of: String,
        tenant: String,
    },
    #[error("{path} is not a backup the fleet recorded for {tenant} (`controller backup` records each one); pass --unverified to restore it anyway")]
    NotRecorded { path: PathBuf, tenant: String },
    #[error("the store in {path} does not match the SHA-256 recorded when it was backed up (recorded {recorded}, found {found}): it changed since; pass --unverified to restore it anyway")]
    Tampered {
        path: PathBuf,
        recorded: String,
        found: String,
    },
    #[error("the blocking copy failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn sqlite(what: &'static str) -> impl FnOnce(rusqlite::Error) -> BackupError {
    move |source| match mai_fleet_core::store::refusal(&source) {
        Some(why) => BackupError::Refused(why.to_string()),
        None => BackupError::Sqlite { what, source },
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct BackupOptions {
    /// Backups go to `<dir>/<tenant>/`.
    pub dir: PathBuf,
    /// How many of a tenant's backups are kept; older ones are removed.
    pub keep: usize,
    pub scheduled: bool,
    pub actor: String,
}

/// `manifest.json` of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub tenant: String,
    pub org_id: String,
    pub taken_at: chrono::DateTime<Utc>,
    pub store_sha256: String,
    pub integrity: String,
    /// The tenant's organization's totals in the copy's `client_daily_usage`.
    pub tokens: i64,
    pub raw_cost: Decimal,
    pub files: usize,
    pub bytes: u64,
    /// Links, FIFOs, devices and sockets in the tenant's directory, not copied.
    #[serde(default)]
    pub skipped: tree::Skipped,
}

pub struct BackupReport {
    pub id: i64,
    pub path: PathBuf,
    pub manifest: Manifest,
    /// Older backups retention removed.
    pub removed: Vec<PathBuf>,
}

/// The app's data directory inside the container, which the archive API reads.
const DATA_PATH: &str = mai_fleet_core::contract::DATA_MOUNT;

/// The tenant's data directory as this machine can read it: the directory itself on
/// a local engine; on a remote one, a frozen copy fetched into `scratch` (with
/// `true`: a copy of ours, whose journals SQLite may replay).
async fn readable_data(
    at: &Located,
    scratch: &Path,
    limits: &BackupLimits,
) -> Result<(PathBuf, bool), OpsError> {
    if at.engine.local {
        return Ok((PathBuf::from(&at.tenant.container.data_dir), false));
    }
    let running = at.container.state == crate::plan::RunState::Running;
    if running {
        at.engine.pause(&at.container.id).await?;
    }
    let tar_file = scratch.with_extension("tar");
    // Bounded here, not around the whole backup: a deadline that dropped this future
    // between the pause and the resume would leave the tenant paused.
    let fetched =
        match tokio::time::timeout(limits.time, fetch_archive(at, &tar_file, limits)).await {
            Ok(r) => r,
            Err(_) => Err(BackupError::TimedOut(limits.time.as_secs()).into()),
        };
    // Resumed whatever the copy did.
    if running {
        at.engine.unpause(&at.container.id).await?;
    }
    if let Err(e) = fetched {
        let _ = std::fs::remove_file(&tar_file);
        return Err(e);
    }
    let (from, into, limits) = (tar_file.clone(), scratch.to_path_buf(), *limits);
    let unpacked = tokio::task::spawn_blocking(move || unpack(&from, &into, &limits)).await;
    let _ = std::fs::remove_file(&tar_file);
    unpacked.map_err(BackupError::from)??;
    Ok((scratch.to_path_buf(), true))
}

/// The data directory as a tar stream from the engine, into `file` (owner-only),
/// stopped past the budget (tar headers allowed for).
async fn fetch_archive(at: &Located, file: &Path, limits: &BackupLimits) -> Result<(), OpsError> {
    use futures_util::StreamExt;
    use std::io::Write;
    let mut out = private_file(file)?;
    let max = limits
        .max_bytes
        .saturating_add(limits.max_files.saturating_mul(1024));
    let mut total: u64 = 0;
    let mut stream = std::pin::pin!(at.engine.copy_out(&at.container.id, DATA_PATH));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        if total > max {
            return Err(BackupError::Budget {
                what: format!("the archive of {DATA_PATH} (past {total} bytes, headers included)"),
                bytes: total,
                max_bytes: limits.max_bytes,
            }
            .into());
        }
        out.write_all(&chunk).map_err(io_at(file))?;
    }
    out.sync_all().map_err(io_at(file)).map_err(OpsError::from)
}

/// A new owner-only file of the operator's (the path is the operator's: beside the
/// backups).
fn private_file(path: &Path) -> Result<std::fs::File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        Dir::create_private(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io_at(path))
}

/// Unpacks an archive of the data directory (entries `data/…`) into `into`: regular
/// files and directories only, owner-only, within the budget, never outside `into`
/// (the archive holds the tenant's names).
fn unpack(file: &Path, into: &Path, limits: &BackupLimits) -> Result<(), BackupError> {
    use std::path::Component;
    let root = Dir::create_private(into)?;
    let mut archive = tar::Archive::new(std::fs::File::open(file).map_err(io_at(file))?);
    let (mut bytes, mut files) = (0u64, 0u64);
    for entry in archive.entries().map_err(io_at(file))? {
        let mut entry = entry.map_err(io_at(file))?;
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(io_at(file))?.into_owned();
        // `data/uploads/x` -> `uploads/x`; anything but plain names is refused.
        let mut parts = path.components();
        parts.next();
        let names: Vec<&OsStr> = parts
            .map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect::<Option<_>>()
            .unwrap_or_default();
        let Some((last, parents)) = names.split_last() else {
            continue;
        };
        if !(kind.is_dir() || kind.is_file()) {
            continue;
        }
        files += 1;
        let size = entry.size();
        bytes = bytes.saturating_add(size);
        if bytes > limits.max_bytes || files > limits.max_files {
            return Err(TreeError::Budget {
                path: path.clone(),
                size,
                bytes,
                files,
                max_bytes: limits.max_bytes,
                max_files: limits.max_files,
            }
            .into());
        }
        let mut made: Option<Dir> = None;
        for p in parents {
            made = Some(made.as_ref().unwrap_or(&root).make_dir(p)?);
        }
        let dir = made.as_ref().unwrap_or(&root);
        if kind.is_dir() {
            dir.make_dir(last)?;
        } else {
            let mut out = dir.create_file(last)?;
            std::io::copy(&mut entry, &mut out).map_err(io_at(&path))?;
        }
    }
    Ok(())
}

/// Backs one tenant up and applies retention.
pub async fn backup(
    spec: &FleetSpec,
    store: &Store,
    tenant: &str,
    opts: &BackupOptions,
) -> Result<BackupReport, OpsError> {
    let at = locate(spec, tenant).await?;
    let host = at.engine.host.name.clone();
    let op = store
        .begin_operation(
            tenant,
            &host,
            &opts.actor,
            crate::store::model::OperationKind::Backup,
            None,
            None,
        )
        .await?;
    let limits = spec.backups;
    let target_root = opts.dir.join(tenant);
    let scratch = target_root.join(format!(".fetch-{}", std::process::id()));
    let taken = async {
        // The operator's directories, owner-only before anything goes in.
        Dir::create_private(&opts.dir).map_err(BackupError::from)?;
        Dir::create_private(&target_root).map_err(BackupError::from)?;
        let (data, ours) = readable_data(&at, &scratch, &limits).await?;
        let (id, org, root) = (
            tenant.to_string(),
            at.tenant.spec.org_id.clone(),
            target_root.clone(),
        );
        // A store that blocks SQLite (a FIFO swapped in after the check) costs this
        // tenant its backup, never the run: the blocked thread is left behind.
        let copy =
            tokio::task::spawn_blocking(move || take(&data, ours, &root, &id, &org, &limits));
        match tokio::time::timeout(limits.time, copy).await {
            Ok(joined) => joined.map_err(BackupError::from)?.map_err(OpsError::from),
            Err(_) => Err(BackupError::TimedOut(limits.time.as_secs()).into()),
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (path, manifest) = match taken {
        Ok(t) => t,
        Err(e) => {
            remove_partials(&target_root);
            store
                .finish_operation(
                    op,
                    crate::store::model::OperationStatus::Failed,
                    None,
                    &e.to_string(),
                )
                .await?;
            return Err(e);
        }
    };
    let id = store
        .add_backup(&NewBackup {
            tenant,
            host: &host,
            path: &path.display().to_string(),
            bytes: manifest.bytes as i64,
            files: manifest.files as i32,
            store_sha256: &manifest.store_sha256,
            tokens: manifest.tokens,
            raw_cost: manifest.raw_cost,
            actor: &opts.actor,
            scheduled: opts.scheduled,
        })
        .await?;
    let removed = retain(store, tenant, &opts.dir, opts.keep).await?;
    store
        .finish_operation(
            op,
            crate::store::model::OperationStatus::Ok,
            None,
            &format!("backup #{id} in {}", path.display()),
        )
        .await?;
    Ok(BackupReport {
        id,
        path,
        manifest,
        removed,
    })
}

/// Whatever a failed or abandoned backup left in the tenant's backup directory.
fn remove_partials(root: &Path) {
    if let Ok(dir) = Dir::open(root) {
        if let Ok(entries) = dir.entries() {
            for (name, _) in entries {
                let n = name.to_string_lossy();
                if n.ends_with(".partial") || n.starts_with(".fetch-") {
                    let _ = dir.remove(&name);
                }
            }
        }
    }
}

/// Removes a tenant's backups beyond the newest `keep`, only inside `root`.
async fn retain(
    store: &Store,
    tenant: &str,
    root: &Path,
    keep: usize,
) -> Result<Vec<PathBuf>, OpsError> {
    let mut removed = Vec::new();
    let root = root.join(tenant);
    for old in store.backups(tenant).await?.into_iter().skip(keep.max(1)) {
        let path = PathBuf::from(&old.path);
        if path.parent() == Some(root.as_path()) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io_at(&path)(e).into());
                }
            }
            store.mark_backup_removed(old.id).await?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Bytes of the store and its journals, each a regular file (or absent).
fn store_bytes(data: &Dir) -> Result<u64, BackupError> {
    let mut total = 0u64;
    for suffix in ["", "-wal", "-journal"] {
        let name = format!("{STORE_FILE}{suffix}");
        match data.open_file(OsStr::new(&name)) {
            Ok(Some((_, size))) => total = total.saturating_add(size),
            Ok(None) => {}
            Err(TreeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// The copy itself (blocking: SQLite and the file system). `ours`: `data` is a
/// fetched copy, whose hot journal SQLite may roll back.
fn take(
    data: &Path,
    ours: bool,
    root: &Path,
    tenant: &str,
    org: &str,
    limits: &BackupLimits,
) -> Result<(PathBuf, Manifest), BackupError> {
    let db = data.join(STORE_FILE);
    check_store_files(&db)?;
    let data_dir = Dir::open(data)?;
    let root_dir = Dir::open(root)?;
    let taken_at = Utc::now();
    let name = taken_at.format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let partial_name = format!(".{name}.partial");
    let partial = root_dir.make_dir(OsStr::new(&partial_name))?;
    let result = (|| {
        let store_size = store_bytes(&data_dir)?;
        if store_size > limits.max_bytes {
            return Err(BackupError::Budget {
                what: format!("{STORE_FILE} with its journals"),
                bytes: store_size,
                max_bytes: limits.max_bytes,
            });
        }
        drop(partial.create_file(OsStr::new(STORE_FILE))?);
        let copy = partial.path().join(STORE_FILE);
        online_copy(&db, &copy, ours)?;
        let inspected = inspect(&copy, org, limits)?;
        let copied = Copy {
            leave_out: &LEFT_OUT,
            budget: tree::Budget {
                max_bytes: limits.max_bytes - store_size,
                max_files: limits.max_files.saturating_sub(1),
            },
            owner: None,
        }
        .run(&data_dir, &partial)?;
        let (store_sha256, store_len) = sha256_file(&partial, STORE_FILE)?;
        let manifest = Manifest {
            tenant: tenant.to_string(),
            org_id: org.to_string(),
            taken_at,
            store_sha256,
            integrity: inspected.integrity,
            tokens: inspected.tokens,
            raw_cost: inspected.raw_cost,
            files: copied.files as usize + 1,
            bytes: copied.bytes + store_len,
            skipped: copied.skipped,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BackupError::NotABackup(partial.path().to_path_buf(), e.to_string()))?;
        let mut out = partial.create_file(OsStr::new(MANIFEST))?;
        std::io::Write::write_all(&mut out, &json).map_err(io_at(partial.path()))?;
        out.sync_all().map_err(io_at(partial.path()))?;
        root_dir.rename(OsStr::new(&partial_name), OsStr::new(&name))?;
        Ok(manifest)
    })();
    match result {
        Ok(m) => Ok((root.join(name), m)),
        Err(e) => {
            let _ = root_dir.remove(OsStr::new(&partial_name));
            Err(e)
        }
    }
}

/// SHA-256 and length of the regular file `name` in `dir`, streamed.
fn sha256_file(dir: &Dir, name: &str) -> Result<(String, u64), BackupError> {
    use sha2::Digest;
    let path = dir.path().join(name);
    let (mut file, _) = dir.open_file(OsStr::new(name))?.ok_or_else(|| {
        BackupError::NotABackup(path.clone(), format!("{name} is not a regular file"))
    })?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(io_at(&path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((crate::crypto::hex(&hasher.finalize()), len))
}

/// SQLite's online backup API, all pages in one step: one read transaction, so the
/// copy is the store as of one moment while the app keeps writing. `recover`: the
/// source is a frozen copy of ours, opened writable so that SQLite rolls back a
/// journal left hot by the pause (read-only, it refuses: "attempt to write a
/// readonly database"). The copy is made a standalone rollback-journal file.
fn online_copy(db: &Path, to: &Path, recover: bool) -> Result<(), BackupError> {
    use rusqlite::{Connection, OpenFlags};
    let access = if recover {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let flags = access | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let src = Connection::open_with_flags(db, flags).map_err(sqlite("cannot be opened"))?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sqlite("cannot be opened"))?;
    let mut dst = Connection::open(to).map_err(sqlite("copy cannot be made"))?;
    {
        let backup =
            rusqlite::backup::Backup::new(&src, &mut dst).map_err(sqlite("cannot be copied"))?;
        // -1: every page in one step, so one read transaction sees one moment. Busy or
        // locked (a writer holds the store in rollback-journal mode): wait, try again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1).map_err(sqlite("cannot be copied"))? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => return Err(BackupError::Locked),
            }
        }
    }
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sqlite("copy cannot be made standalone"))
}

/// What a store's copy says of itself.
struct Inspected {
    integrity: String,
    tokens: i64,
    raw_cost: Decimal,
}

/// `PRAGMA integrity_check` and the organization's usage totals of a copy, under the
/// agent's defences: the usage table must be a plain table, and everything stops at
/// the time budget.
fn inspect(copy: &Path, org: &str, limits: &BackupLimits) -> Result<Inspected, BackupError> {
    let guard = mai_fleet_core::store::Guard {
        time: limits.time,
        max_value_bytes: 64 * 1024,
    };
    let c = mai_fleet_core::store::open(copy, &guard).map_err(sqlite("cannot be opened"))?;
    const DAILY: &str = "client_daily_usage";
    mai_fleet_core::store::plain_table(&c, DAILY)
        .map_err(sqlite("cannot be read"))?
        .map_err(BackupError::Refused)?;
    // One row per organization and day: far fewer than this in any real store.
    const MAX_ROWS: i64 = 1_000_000;
    let rows: i64 = c
        .query_row(&format!("SELECT count(*) FROM {DAILY}"), [], |r| r.get(0))
        .map_err(sqlite("cannot be read"))?;
    if rows > MAX_ROWS {
        return Err(BackupError::Refused(format!(
            "{DAILY} holds {rows} rows, more than the {MAX_ROWS} a store's inspection reads"
        )));
    }
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(sqlite("cannot be checked"))?;
    if integrity != "ok" {
        return Err(BackupError::Integrity(crate::bounded(&integrity, 400)));
    }
    let (tokens, raw): (i64, f64) = c
        .query_row(
            &format!("SELECT coalesce(sum(total_tokens), 0), coalesce(sum(raw_cost), 0.0) FROM {DAILY} WHERE client_org_id = ?1"),
            [org],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sqlite("cannot be read"))?;
    let raw_cost = Decimal::from_f64(raw).unwrap_or_default().round_dp(6);
    Ok(Inspected {
        integrity,
        tokens,
        raw_cost,
    })
}

pub struct RestoreReport {
    pub verified: Result<String, String>,
    /// Where the replaced store and files were kept.
    pub kept: PathBuf,
    pub manifest: Manifest,
    /// What `--unverified` let pass without a check.
    pub unchecked: Vec<&'static str>,
}

pub struct RestoreOptions<'a> {
    pub actor: &'a str,
    pub verify: &'a VerifyOptions,
    /// Restore a backup the fleet did not record, or whose store changed since.
    pub unverified: bool,
}

/// The manifest of the backup in `from` (a small JSON file of the operator's).
fn read_manifest(from: &Dir) -> Result<Manifest, BackupError> {
    let not = |why: String| BackupError::NotABackup(from.path().to_path_buf(), why);
    let (file, size) = from
        .open_file(OsStr::new(MANIFEST))
        .map_err(|e| not(e.to_string()))?
        .ok_or_else(|| not(format!("{MANIFEST} is not a regular file")))?;
    if size > 1 << 20 {
        return Err(not(format!("{MANIFEST} is {size} bytes")));
    }
    serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| not(e.to_string()))
}

/// Checks a backup before anything is stopped: it is this tenant's, the fleet
/// recorded it, its store is the one recorded (SHA-256), sound and plain. With
/// `unverified`, the two record checks are skipped and named.
async fn check_backup(
    store: &Store,
    tenant: &str,
    from: &Path,
    unverified: bool,
    limits: &BackupLimits,
) -> Result<(Manifest, Option<i64>, Vec<&'static str>), OpsError> {
    let (dir_path, limits_c) = (from.to_path_buf(), *limits);
    let (manifest, found) = tokio::task::spawn_blocking(move || {
        let dir = Dir::open(&dir_path)?;
        let manifest = read_manifest(&dir)?;
        let (found, _) = sha256_file(&dir, STORE_FILE)?;
        Ok::<_, BackupError>((manifest, found))
    })
    .await
    .map_err(BackupError::from)??;
    if manifest.tenant != tenant {
        return Err(BackupError::OtherTenant {
            path: from.to_path_buf(),
            of: manifest.tenant,
            tenant: tenant.to_string(),
        }
        .into());
    }
    let recorded = store
        .backups(tenant)
        .await?
        .into_iter()
        .find(|b| Path::new(&b.path) == from);
    let mut unchecked = Vec::new();
    match &recorded {
        Some(r) if r.store_sha256 == found && manifest.store_sha256 == found => {}
        _ if unverified => {
            unchecked.push("that the fleet recorded this backup for this tenant");
            unchecked.push("that its store is the one backed up (SHA-256)");
        }
        None => {
            return Err(BackupError::NotRecorded {
                path: from.to_path_buf(),
                tenant: tenant.to_string(),
            }
            .into())
        }
        Some(r) => {
            return Err(BackupError::Tampered {
                path: from.to_path_buf(),
                recorded: r.store_sha256.clone(),
                found,
            }
            .into())
        }
    }
    let (copy, org) = (from.join(STORE_FILE), manifest.org_id.clone());
    tokio::task::spawn_blocking(move || {
        check_store_files(&copy)?;
        inspect(&copy, &org, &limits_c)
    })
    .await
    .map_err(BackupError::from)??;
    Ok((manifest, recorded.map(|r| r.id), unchecked))
}

/// Stops the tenant, puts `from` (a backup directory) in place of its data (what was
/// there is kept aside beside the backups, never deleted), starts and verifies it,
/// and records that the store went back on purpose: the regressions the agent then
/// reports raise no alert. A restore that does not verify puts the replaced data
/// back.
pub async fn restore(
    spec: &FleetSpec,
    store: &Store,
    tenant: &str,
    from: &Path,
    opts: &RestoreOptions<'_>,
) -> Result<RestoreReport, OpsError> {
    let limits = spec.backups;
    let (manifest, backup_id, unchecked) =
        check_backup(store, tenant, from, opts.unverified, &limits).await?;
    let at = locate(spec, tenant).await?;
    let op = store
        .begin_operation(
            tenant,
            &at.engine.host.name,
            opts.actor,
            crate::store::model::OperationKind::Restore,
            None,
            None,
        )
        .await?;
    at.engine.stop(&at.container.id, 10).await?;
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    // Beside the backups, the operator's: never inside the tenant's directory.
    let beside = from.parent().unwrap_or(from);
    let place = if at.engine.local {
        let data = PathBuf::from(&at.tenant.container.data_dir);
        let kept = beside.join(format!(".pre-restore-{stamp}"));
        let (d, k, f) = (data.clone(), kept.clone(), from.to_path_buf());
        tokio::task::spawn_blocking(move || swap_in(&d, &f, &k, &limits))
            .await
            .map_err(BackupError::from)
            .and_then(|r| r)
            .map(|()| Placed::Local { data, kept })
            .map_err(OpsError::from)
    } else {
        let kept = beside.join(format!(".pre-restore-{stamp}.tar"));
        upload_in(&at, from, &kept, &limits)
            .await
            .map(|()| Placed::Remote { kept })
    };
    let placed = match place {
        Ok(p) => p,
        Err(e) => {
            let _ = at.engine.start(&at.container.id).await;
            store
                .finish_operation(
                    op,
                    crate::store::model::OperationStatus::Failed,
                    None,
                    &e.to_string(),
                )
                .await?;
            return Err(e);
        }
    };
    // Recorded before the agent can see the store go back.
    store
        .add_restore(tenant, backup_id, &from.display().to_string(), opts.actor)
        .await?;
    at.engine.start(&at.container.id).await?;
    let d = &at.tenant.container;
    let mut verified = docker::verify(
        &at.engine,
        &at.container.id,
        Some(d.host_port),
        opts.verify,
        Some(d),
    )
    .await;
    if let Err(why) = &verified {
        // What served before is put back, and serves again.
        let _ = at.engine.stop(&at.container.id, 10).await;
        let back = match &placed {
            Placed::Local { data, kept } => {
                let (d, k) = (data.clone(), kept.clone());
                tokio::task::spawn_blocking(move || put_back(&d, &k))
                    .await
                    .map_err(BackupError::from)
                    .and_then(|r| r)
                    .map_err(OpsError::from)
            }
            Placed::Remote { kept } => upload_archive(&at, kept, "/app/backend").await,
        };
        let _ = at.engine.start(&at.container.id).await;
        verified = Err(match back {
            Ok(()) => format!("{why}; the data it replaced was put back"),
            Err(e) => format!(
                "{why}; putting the replaced data back failed ({e}): it is in {}",
                placed.kept().display()
            ),
        });
    }
    let status = crate::store::model::OperationStatus::of(verified.is_ok());
    let detail = match &verified {
        Ok(v) => format!("restored from {}; {v}", from.display()),
        Err(e) => format!("restored from {}, not verified: {e}", from.display()),
    };
    store.finish_operation(op, status, None, &detail).await?;
    Ok(RestoreReport {
        verified,
        kept: placed.kept().to_path_buf(),
        manifest,
        unchecked,
    })
}

/// Where a restore put the backup, and what it replaced.
enum Placed {
    /// The data directory here; what it held copied into `kept` beside the backups.
    Local { data: PathBuf, kept: PathBuf },
    /// Uploaded through the engine; the replaced directory fetched into `kept` (a tar
    /// beside the backup).
    Remote { kept: PathBuf },
}

impl Placed {
    fn kept(&self) -> &Path {
        match self {
            Placed::Local { kept, .. } | Placed::Remote { kept } => kept,
        }
    }
}

/// A remote tenant's data replaced through its engine (the tenant is stopped): what
/// is there is fetched into `kept` first; then the backup goes in, with empty
/// journals, so that a journal of the replaced store is never replayed onto it.
async fn upload_in(
    at: &Located,
    from: &Path,
    kept: &Path,
    limits: &BackupLimits,
) -> Result<(), OpsError> {
    fetch_archive(at, kept, limits).await?;
    let (src, tar_file) = (from.to_path_buf(), kept.with_extension("upload.tar"));
    let built = tar_file.clone();
    tokio::task::spawn_blocking(move || pack(&src, &built))
        .await
        .map_err(BackupError::from)??;
    let uploaded = upload_archive(at, &tar_file, DATA_PATH).await;
    let _ = std::fs::remove_file(&tar_file);
    uploaded
}

/// An archive of a backup as the data directory's content: every file but the
/// manifest, and zero-length `-wal`, `-shm` and `-journal` beside the store.
fn pack(from: &Path, file: &Path) -> Result<(), BackupError> {
    let mut builder = tar::Builder::new(private_file(file)?);
    builder.follow_symlinks(false);
    for entry in std::fs::read_dir(from).map_err(io_at(from))? {
        let entry = entry.map_err(io_at(from))?;
        let name = entry.file_name();
        let meta = std::fs::symlink_metadata(entry.path()).map_err(io_at(from))?;
        if name == MANIFEST {
            continue;
        }
        if meta.is_dir() {
            builder
                .append_dir_all(&name, entry.path())
                .map_err(io_at(from))?;
        } else if meta.is_file() {
            builder
                .append_path_with_name(entry.path(), &name)
                .map_err(io_at(from))?;
        }
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o600);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("{STORE_FILE}{suffix}"),
                std::io::empty(),
            )
            .map_err(io_at(file))?;
    }
    builder.finish().map_err(io_at(file))
}

/// An archive streamed to the engine, never whole in memory.
async fn upload_archive(at: &Located, file: &Path, path: &str) -> Result<(), OpsError> {
    let opened = tokio::fs::File::open(file).await.map_err(io_at(file))?;
    Ok(at.engine.copy_in(&at.container.id, path, opened).await?)
}

/// Copies the data directory into `kept` (new, the operator's), empties it through
/// its handle and copies the backup in, handed to the data directory's owner. A
/// failure once the directory was touched puts the kept data back.
fn swap_in(
    data: &Path,
    from: &Path,
    kept: &Path,
    limits: &BackupLimits,
) -> Result<(), BackupError> {
    let data_dir = Dir::open(data)?;
    let kept_dir = Dir::create_private(kept)?;
    let budget = tree::Budget {
        max_bytes: limits.max_bytes,
        max_files: limits.max_files,
    };
    let kept_copy = Copy {
        leave_out: &[],
        budget,
        owner: None,
    }
    .run(&data_dir, &kept_dir);
    if let Err(e) = kept_copy {
        // Nothing was replaced yet.
        let _ = std::fs::remove_dir_all(kept);
        return Err(e.into());
    }
    let owner = Some(data_dir.owner()?);
    let placed = data_dir.clear(&|_| false).and_then(|()| {
        Copy {
            leave_out: &[MANIFEST],
            budget: tree::Budget::UNLIMITED,
            owner,
        }
        .run(&Dir::open(from)?, &data_dir)
    });
    if let Err(e) = placed {
        put_back(data, kept)?;
        return Err(e.into());
    }
    Ok(())
}

/// Undoes [`swap_in`]: the data directory emptied through its handle, what was kept
/// copied back, then the kept copy removed.
fn put_back(data: &Path, kept: &Path) -> Result<(), BackupError> {
    let data_dir = Dir::open(data)?;
    let owner = Some(data_dir.owner()?);
    data_dir.clear(&|_| false)?;
    Copy {
        leave_out: &[],
        budget: tree::Budget::UNLIMITED,
        owner,
    }
    .run(&Dir::open(kept)?, &data_dir)?;
    let _ = std::fs::remove_dir_all(kept);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cause of the remote backup test's flake ("attempt to write a readonly
    /// database"): a tenant paused in the middle of a write transaction leaves a hot
    /// journal in the frozen copy, which SQLite must roll back before it can read,
    /// and a read-only connection cannot. The frozen copy is ours, so it is opened
    /// writable and recovered, as after a power cut.
    #[test]
    fn a_frozen_copy_with_a_hot_journal_is_recovered_not_refused() {
        let dir = std::env::temp_dir().join(format!("mai-hot-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (live, frozen) = (dir.join("live"), dir.join("frozen"));
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&frozen).unwrap();
        let app = rusqlite::Connection::open(live.join(STORE_FILE)).unwrap();
        app.execute_batch(
            "PRAGMA journal_mode = DELETE; PRAGMA cache_size = 2;
             CREATE TABLE t (x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO t SELECT randomblob(2000) FROM n;",
        )
        .unwrap();
        // A write transaction under way (its pages spilled to the file, the
        // originals in the journal) when the tenant is paused and copied.
        app.execute_batch("BEGIN; UPDATE t SET x = randomblob(2000);")
            .unwrap();
        for name in [STORE_FILE.to_string(), format!("{STORE_FILE}-journal")] {
            std::fs::copy(live.join(&name), frozen.join(&name)).unwrap();
        }
        app.execute_batch("ROLLBACK").unwrap();
        let (read_only, recovered) = (dir.join("ro.db"), dir.join("rw.db"));
        let refused = online_copy(&frozen.join(STORE_FILE), &read_only, false).unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
        online_copy(&frozen.join(STORE_FILE), &recovered, true).unwrap();
        let copy = rusqlite::Connection::open(&recovered).unwrap();
        let check: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
