//! Restore: a backup checked (this tenant's, recorded, its store's SHA-256, sound
//! and plain), put in place of the tenant's data with what was there kept beside the
//! backups, the tenant verified, the kept data put back if it does not verify.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::archive::{upload_archive, upload_in};
use super::{check_store_files, inspect, sha256_file, BackupError, Manifest, MANIFEST, STORE_FILE};
use crate::execution::VerifyOptions;
use crate::ops::{locate, OpsError};
use crate::spec::{BackupLimits, FleetSpec};
use crate::store::Store;
use mai_fleet_core::tree::{self, Copy, Dir};

pub struct RestoreReport {
    pub verified: Result<String, crate::execution::Unverified>,
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
            at.host.name(),
            opts.actor,
            crate::store::model::OperationKind::Restore,
            None,
            None,
        )
        .await?;
    at.host.stop(&at.container.id, 10).await?;
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    // Beside the backups, the operator's: never inside the tenant's directory.
    let beside = from.parent().unwrap_or(from);
    let place = if at.host.is_local() {
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
            let _ = at.host.start(&at.container.id).await;
            store.fail_operation(op, &e.to_string()).await?;
            return Err(e);
        }
    };
    // Recorded before the agent can see the store go back.
    store
        .add_restore(tenant, backup_id, &from.display().to_string(), opts.actor)
        .await?;
    at.host.start(&at.container.id).await?;
    let mut verified = at
        .host
        .verify(&at.container.id, &at.tenant.container, opts.verify)
        .await;
    if let Err(why) = &verified {
        // What served before is put back, and serves again.
        let _ = at.host.stop(&at.container.id, 10).await;
        let back = match &placed {
            Placed::Local { data, kept } => {
                let (d, k) = (data.clone(), kept.clone());
                tokio::task::spawn_blocking(move || put_back(&d, &k))
                    .await
                    .map_err(BackupError::from)
                    .and_then(|r| r)
                    .map_err(OpsError::from)
            }
            Placed::Remote { kept } => upload_archive(&at, kept, "/app/backend", &limits).await,
        };
        let _ = at.host.start(&at.container.id).await;
        verified = Err(match back {
            Ok(()) => format!("{why}; the data it replaced was put back").into(),
            Err(e) => format!(
                "{why}; putting the replaced data back failed ({e}): it is in {}",
                placed.kept().display()
            )
            .into(),
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
