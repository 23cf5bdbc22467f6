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

mod archive;
mod restore;

pub use restore::{restore, RestoreOptions, RestoreReport};

use super::{locate, OpsError};
use crate::spec::{BackupLimits, FleetSpec};
use crate::store::operations::NewBackup;
use crate::store::Store;
pub(crate) use mai_fleet_core::contract::{check_store_files, STORE_FILE};
use mai_fleet_core::tree::{self, Copy, Dir, TreeError};

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

pub(crate) const MANIFEST: &str = "manifest.json";

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

pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
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
pub(crate) const DATA_PATH: &str = mai_fleet_core::contract::DATA_MOUNT;

/// Backs one tenant up and applies retention.
pub async fn backup(
    spec: &FleetSpec,
    store: &Store,
    tenant: &str,
    opts: &BackupOptions,
) -> Result<BackupReport, OpsError> {
    let at = locate(spec, tenant).await?;
    let host = at.host.name().to_string();
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
        let (data, ours, skipped) = archive::readable_data(&at, &scratch, &limits).await?;
        let (id, org, root) = (
            tenant.to_string(),
            at.tenant.spec.org_id.clone(),
            target_root.clone(),
        );
        // A store that blocks SQLite (a FIFO swapped in after the check) costs this
        // tenant its backup, never the run: the blocked thread is left behind.
        let copy = tokio::task::spawn_blocking(move || {
            take(&data, ours, &root, &id, &org, &limits, skipped)
        });
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
            store.fail_operation(op, &e.to_string()).await?;
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
/// fetched copy, whose hot journal SQLite may roll back; `fetched_skipped`: what its
/// archive named and the fetch left out.
fn take(
    data: &Path,
    ours: bool,
    root: &Path,
    tenant: &str,
    org: &str,
    limits: &BackupLimits,
    fetched_skipped: tree::Skipped,
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
            skipped: {
                let mut skipped = copied.skipped;
                skipped.add(fetched_skipped);
                skipped
            },
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
pub(crate) fn sha256_file(dir: &Dir, name: &str) -> Result<(String, u64), BackupError> {
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

/// The online backup of [`mai_fleet_core::store::online_copy`], its failure in this
/// module's terms.
fn online_copy(db: &Path, to: &Path, recover: bool) -> Result<(), BackupError> {
    use mai_fleet_core::store::CopyError;
    mai_fleet_core::store::online_copy(db, to, recover).map_err(|e| match e {
        CopyError::Sqlite { what, source } => sqlite(what)(source),
        CopyError::Locked => BackupError::Locked,
    })
}

/// What a store's copy says of itself.
pub(crate) struct Inspected {
    integrity: String,
    tokens: i64,
    raw_cost: Decimal,
}

/// `PRAGMA integrity_check` and the organization's usage totals of a copy, under the
/// agent's defences: the usage table must be a plain table, and everything stops at
/// the time budget.
pub(crate) fn inspect(
    copy: &Path,
    org: &str,
    limits: &BackupLimits,
) -> Result<Inspected, BackupError> {
    let guard = mai_fleet_core::store::Guard {
        time: limits.time,
        max_value_bytes: 64 * 1024,
    };
    let c = mai_fleet_core::store::open(copy, &guard).map_err(sqlite("cannot be opened"))?;
    const DAILY: &str = "client_daily_usage";
    mai_fleet_core::store::plain_table(&c, DAILY)
        .map_err(sqlite("cannot be read"))?
        .map_err(|why| BackupError::Refused(why.0))?;
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
