//! A tenant's data directory out of and into a node the controller cannot read
//! directly (a Kubernetes node): `agent archive` and `agent unpack`, run by the
//! controller in a short-lived pod of this image on the node, their tar streams on
//! stdout and stdin.
//!
//! The archive holds the store as SQLite's online backup of one moment, made here
//! while the app goes on writing (a Kubernetes pod cannot be paused), with empty
//! journals beside it so that no stale journal is ever replayed onto it; then the
//! tenant's other files by handles (links, FIFOs and devices skipped and counted).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

use mai_fleet_core::archive::{entry, Pack, Unpack};
use mai_fleet_core::contract::{check_store_files, StoreFileError, STORE_FILE};
use mai_fleet_core::store::CopyError;
use mai_fleet_core::tree::{Budget, Copied, Dir, TreeError};

/// The entries' first component, as the Docker engine's archive API names them.
pub const PREFIX: &str = "data";

/// What is never packed from the directory: the live store and its journals (the
/// online copy and empty journals go instead), and the app's caches.
const LEFT_OUT: [&str; 6] = [
    STORE_FILE,
    "webui.db-wal",
    "webui.db-shm",
    "webui.db-journal",
    "cache",
    "vector_db",
];

#[derive(Debug, thiserror::Error)]
pub enum CopyFailed {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    StoreFile(#[from] StoreFileError),
    #[error(transparent)]
    Store(#[from] CopyError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CopyFailed + '_ {
    move |source| CopyFailed::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `dir` as a tar stream to `out`, the store copied through `scratch` (a
/// directory of this pod's). A store that is absent is left out; one that is a
/// link or not a regular file is refused.
pub fn archive(
    dir: &Path,
    scratch: &Path,
    budget: Budget,
    out: impl Write,
) -> Result<Copied, CopyFailed> {
    let data = Dir::open(dir)?;
    let mut tar = tar::Builder::new(out);
    let store = dir.join(STORE_FILE);
    let copy = scratch.join(format!("{STORE_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&copy);
    let result: Result<Copied, CopyFailed> = (|| {
        let store_size = match data.open_file(OsStr::new(STORE_FILE))? {
            Some(_) => {
                check_store_files(&store)?;
                mai_fleet_core::store::online_copy(&store, &copy, false)?;
                let size = std::fs::metadata(&copy).map_err(io_at(&copy))?.len();
                if size > budget.max_bytes {
                    return Err(TreeError::Budget {
                        path: store.clone(),
                        size,
                        bytes: size,
                        files: 1,
                        max_bytes: budget.max_bytes,
                        max_files: budget.max_files,
                    }
                    .into());
                }
                Some(size)
            }
            None => None,
        };
        let taken = u64::from(store_size.is_some());
        let mut copied = Pack {
            prefix: Some(PREFIX),
            leave_out: &LEFT_OUT,
            budget: Budget {
                max_bytes: budget.max_bytes - store_size.unwrap_or(0),
                max_files: budget.max_files.saturating_sub(taken),
            },
        }
        .run(&data, &mut tar)?;
        if let Some(size) = store_size {
            let prefix = Path::new(PREFIX);
            let file = std::fs::File::open(&copy).map_err(io_at(&copy))?;
            entry(
                &mut tar,
                &prefix.join(STORE_FILE),
                tar::EntryType::Regular,
                size,
                file,
            )?;
            for suffix in ["-wal", "-shm", "-journal"] {
                let name = prefix.join(format!("{STORE_FILE}{suffix}"));
                entry(
                    &mut tar,
                    &name,
                    tar::EntryType::Regular,
                    0,
                    std::io::empty(),
                )?;
            }
            copied.files += 1;
            copied.bytes += size;
        }
        Ok(copied)
    })();
    let _ = std::fs::remove_file(&copy);
    let copied = result?;
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_at(dir))?;
    Ok(copied)
}

/// Unpacks the tar stream `from` into `dir` (entries below `strip` leading
/// components), handed to the directory's owner.
pub fn unpack(
    dir: &Path,
    strip: usize,
    budget: Budget,
    from: impl std::io::Read,
) -> Result<Copied, CopyFailed> {
    let data = Dir::open(dir)?;
    let owner = Some(data.owner()?);
    Ok(Unpack {
        strip,
        budget,
        owner,
    }
    .run(from, &data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive's store is a sound copy with empty journals beside it, whatever
    /// hot journal the live directory has; a link planted as an upload is skipped.
    #[test]
    fn an_archive_holds_the_store_as_one_moment_and_no_link() {
        let root = std::env::temp_dir().join(format!("agent-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (dir, scratch, back) = (root.join("data"), root.join("tmp"), root.join("back"));
        for d in [&dir, &scratch, &back] {
            std::fs::create_dir_all(d).unwrap();
        }
        let app = rusqlite::Connection::open(dir.join(STORE_FILE)).unwrap();
        app.execute_batch(
            "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);
             BEGIN; INSERT INTO t VALUES (3);",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("escape")).unwrap();
        std::fs::create_dir_all(dir.join("uploads")).unwrap();
        std::fs::write(dir.join("uploads/a.txt"), b"a").unwrap();
        let mut out = Vec::new();
        let copied = archive(&dir, &scratch, Budget::UNLIMITED, &mut out).unwrap();
        app.execute_batch("ROLLBACK").unwrap();
        assert_eq!((copied.files, copied.skipped.links), (2, 1));
        let back_dir = Dir::open(&back).unwrap();
        unpack(&back, 1, Budget::UNLIMITED, &out[..]).unwrap();
        drop(back_dir);
        assert_eq!(
            std::fs::metadata(back.join("webui.db-journal"))
                .unwrap()
                .len(),
            0
        );
        let copy = rusqlite::Connection::open(back.join(STORE_FILE)).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "the committed rows, not the open transaction's");
        assert_eq!(std::fs::read(back.join("uploads/a.txt")).unwrap(), b"a");
        assert!(!back.join("escape").exists());
        assert!(std::fs::read_dir(&scratch).unwrap().next().is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
