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

use std::path::{Path, PathBuf};

use chrono::Utc;
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{locate, Located, OpsError};
use crate::docker::{self, VerifyOptions};
use crate::spec::FleetSpec;
use crate::store::operations::NewBackup;
use crate::store::Store;
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
}

pub struct BackupReport {
    pub id: i64,
    pub path: PathBuf,
    pub manifest: Manifest,
    /// Older backups retention removed.
    pub removed: Vec<PathBuf>,
}

fn err(e: impl std::fmt::Display) -> OpsError {
    OpsError::Backup(e.to_string())
}

/// The app's data directory inside the container, which the archive API reads.
const DATA_PATH: &str = mai_fleet_core::contract::DATA_MOUNT;

fn api(at: &Located, what: &'static str) -> impl FnOnce(bollard::errors::Error) -> OpsError {
    let host = at.engine.host.name.clone();
    move |source| OpsError::Api { host, what, source }
}

/// The tenant's data directory as this machine can read it: the directory itself on
/// a local engine; on a remote one, a frozen copy fetched into `scratch`.
async fn readable_data(at: &Located, scratch: &Path) -> Result<PathBuf, OpsError> {
    if at.engine.local {
        return Ok(PathBuf::from(&at.tenant.container.data_dir));
    }
    let running = at.container.state == "running";
    if running {
        at.engine
            .docker
            .pause_container(&at.container.id)
            .await
            .map_err(api(at, "pause the tenant for its copy"))?;
    }
    if let Some(parent) = scratch.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tar_file = scratch.with_extension("tar");
    let fetched = fetch_archive(at, &tar_file).await;
    // Resumed whatever the copy did.
    if running {
        at.engine
            .docker
            .unpause_container(&at.container.id)
            .await
            .map_err(api(at, "resume the tenant after its copy"))?;
    }
    fetched?;
    let (from, into) = (tar_file.clone(), scratch.to_path_buf());
    let unpacked = tokio::task::spawn_blocking(move || unpack(&from, &into))
        .await
        .map_err(err)
        .and_then(|r| r);
    let _ = std::fs::remove_file(&tar_file);
    unpacked?;
    Ok(scratch.to_path_buf())
}

/// The data directory as a tar stream from the engine, into `file`.
async fn fetch_archive(at: &Located, file: &Path) -> Result<(), OpsError> {
    use futures_util::StreamExt;
    use std::io::Write;
    let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
        .path(DATA_PATH)
        .build();
    let mut out = std::fs::File::create(file).map_err(err)?;
    let mut stream = at
        .engine
        .docker
        .download_from_container(&at.container.id, Some(options));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(api(at, "read the tenant's data directory"))?;
        out.write_all(&chunk).map_err(err)?;
    }
    out.sync_all().map_err(err)
}

/// Unpacks an archive of the data directory (entries `data/…`) into `into`: regular
/// files and directories only, never outside `into` (the archive holds the tenant's
/// names).
fn unpack(file: &Path, into: &Path) -> Result<(), OpsError> {
    use std::path::Component;
    std::fs::create_dir_all(into).map_err(err)?;
    let mut archive = tar::Archive::new(std::fs::File::open(file).map_err(err)?);
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(err)?.into_owned();
        // `data/uploads/x` -> `uploads/x`; anything but plain names is refused.
        let mut parts = path.components();
        parts.next();
        let rel: PathBuf = parts.clone().collect();
        if rel.as_os_str().is_empty() || !parts.all(|c| matches!(c, Component::Normal(_))) {
            continue;
        }
        let dest = into.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&dest).map_err(err)?;
        } else if kind.is_file() {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(err)?;
            }
            let mut out = std::fs::File::create(&dest).map_err(err)?;
            std::io::copy(&mut entry, &mut out).map_err(err)?;
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
        .begin_operation(tenant, &host, &opts.actor, "backup", None, None)
        .await?;
    let target_root = opts.dir.join(tenant);
    let scratch = target_root.join(format!(".fetch-{}", std::process::id()));
    let taken = match readable_data(&at, &scratch).await {
        Ok(data) => {
            let (id, org, root) = (
                tenant.to_string(),
                at.tenant.spec.org_id.clone(),
                target_root.clone(),
            );
            tokio::task::spawn_blocking(move || take(&data, &root, &id, &org))
                .await
                .map_err(err)
                .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let (path, manifest) = match taken {
        Ok(t) => t,
        Err(e) => {
            store
                .finish_operation(op, "failed", None, &e.to_string())
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
            "ok",
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
                    return Err(err(format!("removing {}: {e}", path.display())));
                }
            }
            store.mark_backup_removed(old.id).await?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The copy itself (blocking: SQLite and the file system).
fn take(
    data: &Path,
    root: &Path,
    tenant: &str,
    org: &str,
) -> Result<(PathBuf, Manifest), OpsError> {
    let db = data.join(STORE_FILE);
    check_store_files(&db).map_err(err)?;
    let taken_at = Utc::now();
    let name = taken_at.format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let partial = root.join(format!(".{name}.partial"));
    let done = root.join(&name);
    std::fs::create_dir_all(&partial).map_err(err)?;
    let result = (|| {
        let copy = partial.join(STORE_FILE);
        online_copy(&db, &copy)?;
        let (integrity, tokens, raw_cost) = inspect_copy(&copy, org)?;
        if integrity != "ok" {
            return Err(err(format!(
                "the copy fails PRAGMA integrity_check: {integrity}"
            )));
        }
        let (files, bytes) = copy_tree(data, &partial, true)?;
        let store_bytes = std::fs::read(&copy).map_err(err)?;
        let manifest = Manifest {
            tenant: tenant.to_string(),
            org_id: org.to_string(),
            taken_at,
            store_sha256: crate::crypto::sha256_hex(&store_bytes),
            integrity,
            tokens,
            raw_cost,
            files: files + 1,
            bytes: bytes + store_bytes.len() as u64,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(err)?;
        std::fs::write(partial.join("manifest.json"), json).map_err(err)?;
        std::fs::rename(&partial, &done).map_err(err)?;
        Ok(manifest)
    })();
    match result {
        Ok(m) => Ok((done, m)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

/// SQLite's online backup API, all pages in one step: one read transaction, so the
/// copy is the store as of one moment while the app keeps writing.
fn online_copy(db: &Path, to: &Path) -> Result<(), OpsError> {
    use rusqlite::{Connection, OpenFlags};
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let src = Connection::open_with_flags(db, flags).map_err(err)?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    let mut dst = Connection::open(to).map_err(err)?;
    let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(err)?;
    // -1: every page in one step, so one read transaction sees one moment. Busy or
    // locked (a writer holds the store in rollback-journal mode): wait, try again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        use rusqlite::backup::StepResult;
        match backup.step(-1).map_err(err)? {
            StepResult::Done => return Ok(()),
            StepResult::More | StepResult::Busy | StepResult::Locked
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => return Err(err("the store stayed locked by the app for 30 s")),
        }
    }
}

/// `PRAGMA integrity_check` and the organization's usage totals of a copy.
pub fn inspect_copy(copy: &Path, org: &str) -> Result<(String, i64, Decimal), OpsError> {
    use rusqlite::{Connection, OpenFlags};
    let c = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(err)?;
    let (tokens, raw): (i64, f64) = c
        .query_row(
            "SELECT coalesce(sum(total_tokens), 0), coalesce(sum(raw_cost), 0.0) FROM client_daily_usage WHERE client_org_id = ?1",
            [org],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    let raw = Decimal::from_f64(raw).unwrap_or_default().round_dp(6);
    Ok((integrity, tokens, raw))
}

/// Copies the regular files and directories of `from` into `to`; at the top level the
/// store and the caches are left out. Links, FIFOs and devices are skipped: the
/// directory is the tenant's. Files and bytes copied.
fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<(usize, u64), OpsError> {
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        if top && LEFT_OUT.iter().any(|l| name == *l) {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path()).map_err(err)?;
        let dest = to.join(&name);
        if meta.is_dir() {
            std::fs::create_dir_all(&dest).map_err(err)?;
            let (f, b) = copy_tree(&entry.path(), &dest, false)?;
            files += f;
            bytes += b;
        } else if meta.is_file() {
            bytes += std::fs::copy(entry.path(), &dest).map_err(err)?;
            files += 1;
        }
    }
    Ok((files, bytes))
}

pub struct RestoreReport {
    pub verified: Result<String, String>,
    /// Where the replaced store and files were kept.
    pub kept: PathBuf,
    pub manifest: Manifest,
}

/// Stops the tenant, puts `from` (a backup directory) in place of its data (what was
/// there is kept aside, never deleted), starts and verifies it, and records that the
/// store went back on purpose: the regressions the agent then reports raise no alert.
/// A restore that does not verify puts the replaced data back.
pub async fn restore(
    spec: &FleetSpec,
    store: &Store,
    tenant: &str,
    from: &Path,
    actor: &str,
    verify: &VerifyOptions,
) -> Result<RestoreReport, OpsError> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(from.join("manifest.json"))
            .map_err(|e| err(format!("{} is not a backup: {e}", from.display())))?,
    )
    .map_err(err)?;
    if manifest.tenant != tenant {
        return Err(err(format!(
            "{} is a backup of tenant {}, not {tenant}",
            from.display(),
            manifest.tenant
        )));
    }
    let copy = from.join(STORE_FILE);
    check_store_files(&copy).map_err(err)?;
    let (integrity, _, _) = inspect_copy(&copy, &manifest.org_id)?;
    if integrity != "ok" {
        return Err(err(format!(
            "the backup fails PRAGMA integrity_check: {integrity}"
        )));
    }
    let at = locate(spec, tenant).await?;
    let op = store
        .begin_operation(tenant, &at.engine.host.name, actor, "restore", None, None)
        .await?;
    let stop = bollard::query_parameters::StopContainerOptionsBuilder::new()
        .t(10)
        .build();
    at.engine
        .docker
        .stop_container(&at.container.id, Some(stop))
        .await
        .map_err(api(&at, "stop the tenant"))?;
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let place = if at.engine.local {
        let data = PathBuf::from(&at.tenant.container.data_dir);
        let kept = data.join(format!(".pre-restore-{stamp}"));
        swap_in(&data, from, &kept).map(|()| Placed::Local { data, kept })
    } else {
        let kept = from
            .parent()
            .unwrap_or(from)
            .join(format!(".pre-restore-{stamp}.tar"));
        upload_in(&at, from, &kept)
            .await
            .map(|()| Placed::Remote { kept })
    };
    let placed = match place {
        Ok(p) => p,
        Err(e) => {
            let _ = at
                .engine
                .docker
                .start_container(&at.container.id, None)
                .await;
            store
                .finish_operation(op, "failed", None, &e.to_string())
                .await?;
            return Err(e);
        }
    };
    let backup_id = store
        .backups(tenant)
        .await?
        .into_iter()
        .find(|b| Path::new(&b.path) == from)
        .map(|b| b.id);
    // Recorded before the agent can see the store go back.
    store
        .add_restore(tenant, backup_id, &from.display().to_string(), actor)
        .await?;
    at.engine
        .docker
        .start_container(&at.container.id, None)
        .await
        .map_err(api(&at, "start the tenant"))?;
    let d = &at.tenant.container;
    let mut verified = docker::verify(
        &at.engine,
        &at.container.id,
        Some(d.host_port),
        verify,
        Some(d),
    )
    .await;
    if let Err(why) = &verified {
        // What served before is put back, and serves again.
        let stop = bollard::query_parameters::StopContainerOptionsBuilder::new()
            .t(10)
            .build();
        let _ = at
            .engine
            .docker
            .stop_container(&at.container.id, Some(stop))
            .await;
        let back = match &placed {
            Placed::Local { data, kept } => swap_back(data, kept),
            Placed::Remote { kept } => upload_archive(&at, kept, "/app/backend").await,
        };
        let _ = at
            .engine
            .docker
            .start_container(&at.container.id, None)
            .await;
        verified = Err(match back {
            Ok(()) => format!("{why}; the data it replaced was put back"),
            Err(e) => format!(
                "{why}; putting the replaced data back failed ({e}): it is in {}",
                placed.kept().display()
            ),
        });
    }
    let status = if verified.is_ok() { "ok" } else { "failed" };
    let detail = match &verified {
        Ok(v) => format!("restored from {}; {v}", from.display()),
        Err(e) => format!("restored from {}, not verified: {e}", from.display()),
    };
    store.finish_operation(op, status, None, &detail).await?;
    Ok(RestoreReport {
        verified,
        kept: placed.kept().to_path_buf(),
        manifest,
    })
}

/// Where a restore put the backup, and what it replaced.
enum Placed {
    /// The data directory here; the replaced entries moved into `kept` inside it.
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
async fn upload_in(at: &Located, from: &Path, kept: &Path) -> Result<(), OpsError> {
    fetch_archive(at, kept).await?;
    let (src, tar_file) = (from.to_path_buf(), kept.with_extension("upload.tar"));
    let built = tar_file.clone();
    tokio::task::spawn_blocking(move || pack(&src, &built))
        .await
        .map_err(err)
        .and_then(|r| r)?;
    let uploaded = upload_archive(at, &tar_file, DATA_PATH).await;
    let _ = std::fs::remove_file(&tar_file);
    uploaded
}

/// An archive of a backup as the data directory's content: every file but the
/// manifest, and zero-length `-wal`, `-shm` and `-journal` beside the store.
fn pack(from: &Path, file: &Path) -> Result<(), OpsError> {
    let mut builder = tar::Builder::new(std::fs::File::create(file).map_err(err)?);
    builder.follow_symlinks(false);
    for entry in std::fs::read_dir(from).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let meta = std::fs::symlink_metadata(entry.path()).map_err(err)?;
        if name == "manifest.json" {
            continue;
        }
        if meta.is_dir() {
            builder.append_dir_all(&name, entry.path()).map_err(err)?;
        } else if meta.is_file() {
            builder
                .append_path_with_name(entry.path(), &name)
                .map_err(err)?;
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
            .map_err(err)?;
    }
    builder.finish().map_err(err)
}

async fn upload_archive(at: &Located, file: &Path, path: &str) -> Result<(), OpsError> {
    let bytes = std::fs::read(file).map_err(err)?;
    let options = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
        .path(path)
        .build();
    at.engine
        .docker
        .upload_to_container(
            &at.container.id,
            Some(options),
            bollard::body_full(bytes.into()),
        )
        .await
        .map_err(api(at, "write the tenant's data directory"))
}

/// Undoes [`swap_in`]: the restored files go, what was kept comes back.
fn swap_back(data: &Path, kept: &Path) -> Result<(), OpsError> {
    for entry in std::fs::read_dir(data).map_err(err)? {
        let entry = entry.map_err(err)?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".pre-restore-")
        {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path()).map_err(err)?;
        if meta.is_dir() {
            std::fs::remove_dir_all(entry.path()).map_err(err)?;
        } else {
            std::fs::remove_file(entry.path()).map_err(err)?;
        }
    }
    for entry in std::fs::read_dir(kept).map_err(err)? {
        let entry = entry.map_err(err)?;
        std::fs::rename(entry.path(), data.join(entry.file_name())).map_err(err)?;
    }
    std::fs::remove_dir(kept).map_err(err)
}

/// Moves the data directory's entries into `kept` and copies the backup in.
fn swap_in(data: &Path, from: &Path, kept: &Path) -> Result<(), OpsError> {
    std::fs::create_dir_all(kept).map_err(err)?;
    for entry in std::fs::read_dir(data).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".pre-restore-") {
            continue;
        }
        std::fs::rename(entry.path(), kept.join(&name)).map_err(err)?;
    }
    copy_tree(from, data, false)?;
    // The manifest describes the backup, not the tenant's data.
    let _ = std::fs::remove_file(data.join("manifest.json"));
    Ok(())
}

/// The nightly default: 03:00 Warsaw time, every day.
pub const DEFAULT_CRON: &str = "0 0 3 * * *";

/// `serve`'s backup job: every tenant of the spec backed up on `schedule` (Warsaw
/// time). A tenant that fails is logged and left for the next round (and for
/// `backup_missing`); the others are taken.
pub async fn run_schedule(
    spec: FleetSpec,
    store: Store,
    opts: BackupOptions,
    schedule: cron::Schedule,
    ctx: crate::supervisor::JobContext,
) -> Result<(), String> {
    loop {
        let Some(wait) = crate::schedule::until_next(&schedule, chrono_tz::Europe::Warsaw) else {
            return Err("the backup schedule has no next time".into());
        };
        ctx.beat();
        if !ctx.sleep(wait).await {
            return Ok(());
        }
        for t in &spec.tenants {
            match backup(&spec, &store, &t.id, &opts).await {
                Ok(b) => tracing::info!(
                    tenant = t.id.as_str(),
                    backup = b.id,
                    path = %b.path.display(),
                    bytes = b.manifest.bytes,
                    removed = b.removed.len(),
                    "backup taken"
                ),
                Err(e) => tracing::warn!(tenant = t.id.as_str(), error = %e, "backup failed"),
            }
            if ctx.stopping() {
                return Ok(());
            }
        }
        ctx.beat();
    }
}
