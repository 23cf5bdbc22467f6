//! Directory trees walked by handles: a tenant's data directory, and the backups
//! made of it.
//!
//! A tenant controls every name in its directory and can swap any of them for a link
//! at any moment. So nothing here is reached by a path string: each name is one
//! component, opened relative to its parent's descriptor with `O_NOFOLLOW` (a link
//! is refused at every component, never followed), and nothing outside the tree the
//! walk started from can be reached whatever the tenant does meanwhile. Only regular
//! files and directories are copied; links, FIFOs, devices and sockets are skipped
//! and counted. What this module writes is the operator's: directories 0700, files
//! 0600, never a setuid, setgid or sticky bit, and a name that exists where a file is
//! written is replaced, never written through.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// How deep a tree may go: recursion holds one descriptor per level.
pub(crate) const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a directory (a link or another kind of file): it is not followed")]
    NotADirectory(PathBuf),
    #[error("{0} is nested more than 64 directories deep")]
    TooDeep(PathBuf),
    #[error(
        "over the budget of {max_bytes} bytes and {max_files} files: {path} ({size} bytes) makes {bytes} bytes and {files} files"
    )]
    Budget {
        path: PathBuf,
        size: u64,
        bytes: u64,
        files: u64,
        max_bytes: u64,
        max_files: u64,
    },
}

pub(crate) fn io(path: &Path, e: impl Into<std::io::Error>) -> TreeError {
    TreeError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// What one copy may take: bytes of file content and entries (files and
/// directories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub max_bytes: u64,
    pub max_files: u64,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        max_bytes: u64::MAX,
        max_files: u64::MAX,
    };
}

/// Entries a copy passed over because they are not regular files or directories.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub links: u64,
    pub fifos: u64,
    pub devices: u64,
    pub sockets: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.links + self.fifos + self.devices + self.sockets
    }

    /// Adds what another walk of the same tree skipped (the sender's, on the host).
    pub fn add(&mut self, other: Skipped) {
        self.links += other.links;
        self.fifos += other.fifos;
        self.devices += other.devices;
        self.sockets += other.sockets;
    }

    pub(crate) fn count(&mut self, kind: FileType) {
        match kind {
            FileType::Symlink => self.links += 1,
            FileType::Fifo => self.fifos += 1,
            FileType::Socket => self.sockets += 1,
            _ => self.devices += 1,
        }
    }
}

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Copied {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub skipped: Skipped,
}

/// An open directory; `path` only names it in messages.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Dir {
    /// Opens `path`, trusted up to its last component, which is not followed.
    pub fn open(path: &Path) -> Result<Dir, TreeError> {
        match rustix::fs::open(path, dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Dir {
                fd,
                path: path.to_path_buf(),
            }),
            Err(Errno::LOOP | Errno::NOTDIR) => Err(TreeError::NotADirectory(path.to_path_buf())),
            Err(e) => Err(io(path, e)),
        }
    }

    /// Makes `path` (and its missing parents) and opens it, owner-only.
    pub fn create_private(path: &Path) -> Result<Dir, TreeError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| io(path, e))?;
        let dir = Dir::open(path)?;
        rustix::fs::fchmod(&dir.fd, Mode::from_raw_mode(0o700)).map_err(|e| io(path, e))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn child(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// The directory `name` in this one; a link or anything else is refused.
    pub fn open_dir(&self, name: &OsStr) -> Result<Dir, TreeError> {
        let path = self.child(name);
        match rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Dir { fd, path }),
            Err(Errno::LOOP | Errno::NOTDIR) => Err(TreeError::NotADirectory(path)),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// The directory `name` in this one, made owner-only if it is not there. Anything
    /// else under that name (a file, a link) is removed first.
    pub fn make_dir(&self, name: &OsStr) -> Result<Dir, TreeError> {
        for _ in 0..3 {
            match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
                Ok(()) => return self.open_dir(name),
                Err(Errno::EXIST) => match self.open_dir(name) {
                    Ok(d) => return Ok(d),
                    Err(TreeError::NotADirectory(_)) => self.remove(name)?,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(io(&self.child(name), e)),
            }
        }
        Err(TreeError::NotADirectory(self.child(name)))
    }

    /// The entries of this directory, with their kinds as the directory lists them.
    pub fn entries(&self) -> Result<Vec<(OsString, FileType)>, TreeError> {
        let reader = rustix::fs::Dir::read_from(&self.fd).map_err(|e| io(&self.path, e))?;
        let mut out = Vec::new();
        for entry in reader {
            let entry = entry.map_err(|e| io(&self.path, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_os_string();
            let kind = match entry.file_type() {
                // Some file systems do not say in the listing: ask, without following.
                FileType::Unknown => rustix::fs::statat(&self.fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| FileType::from_raw_mode(s.st_mode))
                    .map_err(|e| io(&self.child(&name), e))?,
                k => k,
            };
            out.push((name, kind));
        }
        Ok(out)
    }

    /// Opens the regular file `name` for reading; `None` when it is anything else (a
    /// link, a FIFO, a device), which is never opened for real: `O_NONBLOCK` keeps a
    /// FIFO from blocking, and the kind is checked on the open descriptor.
    pub fn open_file(&self, name: &OsStr) -> Result<Option<(File, u64)>, TreeError> {
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Ok(None),
            Err(e) => return Err(io(&self.child(name), e)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| io(&self.child(name), e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        Ok(Some((File::from(fd), stat.st_size as u64)))
    }

    /// Creates the file `name`, owner-only; whatever had the name before (a file, a
    /// link, a directory) is removed first, never written through.
    pub fn create_file(&self, name: &OsStr) -> Result<File, TreeError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for _ in 0..3 {
            match rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(Errno::EXIST) => self.remove(name)?,
                Err(e) => return Err(io(&self.child(name), e)),
            }
        }
        Err(io(&self.child(name), Errno::EXIST))
    }

    /// Removes `name`: a file, link, FIFO or device is unlinked (a link itself, never
    /// what it points to); a directory is emptied through its handle, then removed.
    pub fn remove(&self, name: &OsStr) -> Result<(), TreeError> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => {
                match self.open_dir(name) {
                    Ok(d) => d.clear(&|_| false)?,
                    // Swapped for something else meanwhile: unlinked on the next try.
                    Err(TreeError::NotADirectory(_)) => return self.remove(name),
                    Err(e) => return Err(e),
                }
                match rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(io(&self.child(name), e)),
                }
            }
            Err(e) => Err(io(&self.child(name), e)),
        }
    }

    /// Removes every entry but those `keep` names.
    pub fn clear(&self, keep: &dyn Fn(&OsStr) -> bool) -> Result<(), TreeError> {
        for (name, _) in self.entries()? {
            if !keep(&name) {
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Renames `name` to `to` within this directory.
    pub fn rename(&self, name: &OsStr, to: &OsStr) -> Result<(), TreeError> {
        rustix::fs::renameat(&self.fd, name, &self.fd, to).map_err(|e| io(&self.child(name), e))
    }

    /// Gives the entries this module makes to `owner` (uid, gid): a restore hands the
    /// tenant's files back to whoever owns its data directory.
    pub fn owner(&self) -> Result<(u32, u32), TreeError> {
        let stat = rustix::fs::fstat(&self.fd).map_err(|e| io(&self.path, e))?;
        Ok((stat.st_uid, stat.st_gid))
    }

    /// Gives this directory to `owner` (uid, gid), when it must not stay ours.
    pub fn give_to(&self, owner: Option<(u32, u32)>) -> Result<(), TreeError> {
        give(owner, &self.fd, &self.path)
    }

    /// `/proc/self/fd/N`: this directory by its handle, for a library that only takes
    /// paths (SQLite): it names what was opened, whatever has been renamed since.
    pub fn handle_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_fd().as_raw_fd()))
    }
}

/// Gives what was made to `owner` (uid, gid as the kernel gave them for the data
/// directory), when it must not stay ours.
pub(crate) fn give(owner: Option<(u32, u32)>, fd: impl AsFd, path: &Path) -> Result<(), TreeError> {
    if let Some((uid, gid)) = owner {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(uid),
            rustix::fs::Gid::from_raw(gid),
        );
        rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(|e| io(path, e))?;
    }
    Ok(())
}

/// A copy of one tree into another.
pub struct Copy<'a> {
    /// Names left out at the top of the tree.
    pub leave_out: &'a [&'a str],
    pub budget: Budget,
    /// Uid and gid for what is made, when it must not stay ours.
    pub owner: Option<(u32, u32)>,
}

impl Copy<'_> {
    /// Copies the regular files and directories of `from` into `to`.
    pub fn run(&self, from: &Dir, to: &Dir) -> Result<Copied, TreeError> {
        let mut copied = Copied::default();
        self.tree(from, to, 0, &mut copied)?;
        Ok(copied)
    }

    fn tree(&self, from: &Dir, to: &Dir, depth: usize, c: &mut Copied) -> Result<(), TreeError> {
        if depth > MAX_DEPTH {
            return Err(TreeError::TooDeep(from.path.clone()));
        }
        for (name, kind) in from.entries()? {
            if depth == 0
                && self
                    .leave_out
                    .iter()
                    .any(|l| name.as_bytes() == l.as_bytes())
            {
                continue;
            }
            match kind {
                FileType::Directory => {
                    let src = match from.open_dir(&name) {
                        Ok(d) => d,
                        // Swapped for a link since the listing: not followed.
                        Err(TreeError::NotADirectory(_)) => {
                            c.skipped.links += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    self.charge(&src.path, 0, c)?;
                    let dst = to.make_dir(&name)?;
                    self.own(&dst.fd, &dst.path)?;
                    c.dirs += 1;
                    self.tree(&src, &dst, depth + 1, c)?;
                }
                FileType::RegularFile => self.file(from, to, &name, c)?,
                other => c.skipped.count(other),
            }
        }
        Ok(())
    }

    fn charge(&self, path: &Path, size: u64, c: &Copied) -> Result<(), TreeError> {
        let (bytes, files) = (c.bytes.saturating_add(size), c.files + c.dirs + 1);
        if bytes > self.budget.max_bytes || files > self.budget.max_files {
            return Err(TreeError::Budget {
                path: path.to_path_buf(),
                size,
                bytes,
                files,
                max_bytes: self.budget.max_bytes,
                max_files: self.budget.max_files,
            });
        }
        Ok(())
    }

    fn own(&self, fd: impl AsFd, path: &Path) -> Result<(), TreeError> {
        give(self.owner, fd, path)
    }

    fn file(&self, from: &Dir, to: &Dir, name: &OsStr, c: &mut Copied) -> Result<(), TreeError> {
        let Some((src, size)) = from.open_file(name)? else {
            // Swapped since the listing: counted as what it is now, not copied.
            c.skipped.links += 1;
            return Ok(());
        };
        let path = from.child(name);
        self.charge(&path, size, c)?;
        let mut dst = to.create_file(name)?;
        self.own(&dst, &to.child(name))?;
        // A file that grows while it is copied stops at the budget.
        let room = self.budget.max_bytes - c.bytes;
        let n = copy_at_most(src, &mut dst, room.saturating_add(1)).map_err(|e| io(&path, e))?;
        if n > room {
            return Err(TreeError::Budget {
                path,
                size: n,
                bytes: c.bytes.saturating_add(n),
                files: c.files + c.dirs + 1,
                max_bytes: self.budget.max_bytes,
                max_files: self.budget.max_files,
            });
        }
        c.bytes += n;
        c.files += 1;
        Ok(())
    }
}

/// Copies at most `limit` bytes of `src` into `dst`: in the kernel
/// (`copy_file_range`, no copy through this process) where it can, else through a
/// buffer. The number of bytes copied.
fn copy_at_most(src: File, dst: &mut File, limit: u64) -> std::io::Result<u64> {
    let mut done = 0u64;
    while done < limit {
        let chunk = (limit - done).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(&src, None, &*dst, None, chunk) {
            Ok(0) => return Ok(done),
            Ok(n) => done += n as u64,
            // Not between these two files (another file system on an old kernel, a
            // file system without it): the buffered copy takes over from here.
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                return Ok(done + std::io::copy(&mut src.take(limit - done), dst)?);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mai-tree-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_copy_follows_no_link_opens_no_fifo_and_makes_owner_only_entries() {
        let root = scratch("copy");
        let (src, dst, outside) = (root.join("src"), root.join("dst"), root.join("outside"));
        for d in [&src, &outside] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
        }
        std::fs::write(outside.join("secret"), b"not the tenant's").unwrap();
        std::fs::write(src.join("sub/a.txt"), b"hello").unwrap();
        std::fs::set_permissions(
            src.join("sub/a.txt"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, src.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), src.join("sub/secret")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            src.join("pipe"),
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        std::fs::write(src.join("left-out"), b"x").unwrap();
        let (from, to) = (Dir::open(&src).unwrap(), Dir::create_private(&dst).unwrap());
        let copied = Copy {
            leave_out: &["left-out"],
            budget: Budget::UNLIMITED,
            owner: None,
        }
        .run(&from, &to)
        .unwrap();
        assert_eq!((copied.files, copied.dirs, copied.bytes), (1, 1, 5));
        assert_eq!((copied.skipped.links, copied.skipped.fifos), (2, 1));
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dst.join("sub/a.txt")), 0o600);
        assert_eq!(mode(&dst.join("sub")), 0o700);
        assert!(!dst.join("escape").exists() && !dst.join("left-out").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_link_where_a_file_or_a_directory_is_written_is_replaced_not_followed() {
        let root = scratch("replace");
        let (dir, outside) = (root.join("dir"), root.join("outside"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), dir.join("f")).unwrap();
        let d = Dir::open(&dir).unwrap();
        let sub = d.make_dir(OsStr::new("sub")).unwrap();
        std::io::Write::write_all(&mut sub.create_file(OsStr::new("x")).unwrap(), b"1").unwrap();
        std::io::Write::write_all(&mut d.create_file(OsStr::new("f")).unwrap(), b"2").unwrap();
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written outside"
        );
        assert!(std::fs::symlink_metadata(dir.join("sub")).unwrap().is_dir());
        // Removing follows nothing either.
        std::os::unix::fs::symlink(&outside, dir.join("sub/link")).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        d.clear(&|_| false).unwrap();
        assert!(outside.join("keep").is_file());
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
        assert!(matches!(
            Dir::open(&dir.join("missing")),
            Err(TreeError::Io { .. })
        ));
        std::os::unix::fs::symlink(&outside, dir.join("l")).unwrap();
        assert!(matches!(
            Dir::open(&dir.join("l")),
            Err(TreeError::NotADirectory(_))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_budget_stops_a_copy_with_the_figures() {
        let root = scratch("budget");
        let (src, dst) = (root.join("src"), root.join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        File::create(src.join("sparse"))
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let (from, to) = (Dir::open(&src).unwrap(), Dir::create_private(&dst).unwrap());
        let copy = Copy {
            leave_out: &[],
            budget: Budget {
                max_bytes: 1 << 20,
                max_files: 10,
            },
            owner: None,
        };
        let e = copy.run(&from, &to).unwrap_err().to_string();
        assert!(e.contains("1099511627776") && e.contains("1048576"), "{e}");
        std::fs::remove_file(src.join("sparse")).unwrap();
        for i in 0..11 {
            std::fs::write(src.join(format!("f{i}")), b"x").unwrap();
        }
        let e = copy.run(&from, &to).unwrap_err().to_string();
        assert!(e.contains("11 files"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
