//! A remote host's data directory through its engine: fetched as a tar stream (the
//! tenant paused for it, always resumed), unpacked into a scratch directory of ours
//! within the budget; a backup packed and streamed back for a restore.

use std::path::{Path, PathBuf};

use super::{io_at, BackupError, DATA_PATH, MANIFEST};
use crate::ops::{Located, OpsError};
use crate::spec::BackupLimits;
use mai_fleet_core::contract::STORE_FILE;
use mai_fleet_core::tree::{Budget, Dir, Skipped};

/// The tenant's data directory as this machine can read it: the directory itself on
/// a local engine; on a remote one, a copy fetched into `scratch` (with `true`: a
/// copy of ours, whose journals SQLite may replay), and what the archive named but
/// the copy left out (links, FIFOs, devices).
pub(super) async fn readable_data(
    at: &Located,
    scratch: &Path,
    limits: &BackupLimits,
) -> Result<(PathBuf, bool, Skipped), OpsError> {
    if at.host.is_local() {
        let data = PathBuf::from(&at.tenant.container.data_dir);
        return Ok((data, false, Skipped::default()));
    }
    let paused = at.container.state == crate::plan::RunState::Running && at.host.copy_needs_pause();
    if paused {
        at.host.pause(&at.container.id).await?;
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
    if paused {
        at.host.unpause(&at.container.id).await?;
    }
    if let Err(e) = fetched {
        let _ = std::fs::remove_file(&tar_file);
        return Err(e);
    }
    let (from, into, limits) = (tar_file.clone(), scratch.to_path_buf(), *limits);
    let unpacked = tokio::task::spawn_blocking(move || unpack(&from, &into, &limits)).await;
    let _ = std::fs::remove_file(&tar_file);
    let skipped = unpacked.map_err(BackupError::from)??;
    Ok((scratch.to_path_buf(), true, skipped))
}

/// The data directory as a tar stream from the engine, into `file` (owner-only),
/// stopped past the budget (tar headers allowed for).
pub(super) async fn fetch_archive(
    at: &Located,
    file: &Path,
    limits: &BackupLimits,
) -> Result<(), OpsError> {
    use futures_util::StreamExt;
    use std::io::Write;
    let mut out = private_file(file)?;
    let max = limits
        .max_bytes
        .saturating_add(limits.max_files.saturating_mul(1024));
    let mut total: u64 = 0;
    let mut stream = std::pin::pin!(at.host.copy_out(&at.container.id, DATA_PATH, limits));
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
pub(super) fn private_file(path: &Path) -> Result<std::fs::File, BackupError> {
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
pub(super) fn unpack(
    file: &Path,
    into: &Path,
    limits: &BackupLimits,
) -> Result<Skipped, BackupError> {
    let root = Dir::create_private(into)?;
    let archive = std::fs::File::open(file).map_err(io_at(file))?;
    let unpacked = mai_fleet_core::archive::Unpack {
        strip: 1,
        budget: Budget {
            max_bytes: limits.max_bytes,
            max_files: limits.max_files,
        },
        owner: None,
    }
    .run(std::io::BufReader::new(archive), &root)?;
    Ok(unpacked.skipped)
}

/// A remote tenant's data replaced through its engine (the tenant is stopped): what
/// is there is fetched into `kept` first; then the backup goes in, with empty
/// journals, so that a journal of the replaced store is never replayed onto it.
pub(super) async fn upload_in(
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
    let uploaded = upload_archive(at, &tar_file, DATA_PATH, limits).await;
    let _ = std::fs::remove_file(&tar_file);
    uploaded
}

/// An archive of a backup as the data directory's content: every file but the
/// manifest, and zero-length `-wal`, `-shm` and `-journal` beside the store.
pub(super) fn pack(from: &Path, file: &Path) -> Result<(), BackupError> {
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
pub(super) async fn upload_archive(
    at: &Located,
    file: &Path,
    path: &str,
    limits: &BackupLimits,
) -> Result<(), OpsError> {
    let opened = tokio::fs::File::open(file).await.map_err(io_at(file))?;
    Ok(at
        .host
        .copy_in(&at.container.id, path, opened, limits)
        .await?)
}
