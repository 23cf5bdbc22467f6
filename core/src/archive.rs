//! A directory tree as a tar stream and back, by handles ([`crate::tree`]): how a
//! tenant's data directory leaves a node it cannot be read on directly, and how a
//! backup goes back in. Packing follows no link and opens no FIFO (they are skipped
//! and counted); unpacking writes regular files and directories only, each name one
//! plain component below the target, owner-only or given to the directory's owner,
//! within a budget. Both sides treat the names as the tenant's: hostile.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use rustix::fs::FileType;

use crate::tree::{give, io, Budget, Copied, Dir, TreeError, MAX_DEPTH};

/// A tree written as tar entries under `prefix`.
pub struct Pack<'a> {
    /// The first component of every entry's name (`data`), or none.
    pub prefix: Option<&'a str>,
    /// Names left out at the top of the tree.
    pub leave_out: &'a [&'a str],
    pub budget: Budget,
}

impl Pack<'_> {
    /// Appends the regular files and directories of `from`; the builder is not
    /// finished (the caller may add entries).
    pub fn run<W: Write>(
        &self,
        from: &Dir,
        out: &mut tar::Builder<W>,
    ) -> Result<Copied, TreeError> {
        let mut c = Copied::default();
        let base = self.prefix.map(PathBuf::from).unwrap_or_default();
        if self.prefix.is_some() {
            entry(out, &base, tar::EntryType::Directory, 0, std::io::empty())?;
        }
        self.tree(from, &base, 0, out, &mut c)?;
        Ok(c)
    }

    fn tree<W: Write>(
        &self,
        from: &Dir,
        rel: &Path,
        depth: usize,
        out: &mut tar::Builder<W>,
        c: &mut Copied,
    ) -> Result<(), TreeError> {
        if depth > MAX_DEPTH {
            return Err(TreeError::TooDeep(from.path().to_path_buf()));
        }
        for (name, kind) in from.entries()? {
            if depth == 0 && self.leave_out.iter().any(|l| OsStr::new(l) == name) {
                continue;
            }
            let path = rel.join(&name);
            match kind {
                FileType::Directory => {
                    let sub = match from.open_dir(&name) {
                        Ok(d) => d,
                        // Swapped for a link since the listing: not followed.
                        Err(TreeError::NotADirectory(_)) => {
                            c.skipped.links += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    charge(&self.budget, sub.path(), 0, c)?;
                    entry(out, &path, tar::EntryType::Directory, 0, std::io::empty())?;
                    c.dirs += 1;
                    self.tree(&sub, &path, depth + 1, out, c)?;
                }
                FileType::RegularFile => {
                    let Some((file, size)) = from.open_file(&name)? else {
                        c.skipped.links += 1;
                        continue;
                    };
                    charge(&self.budget, &from.child(&name), size, c)?;
                    // Exactly `size` bytes whatever the file does meanwhile: a file
                    // that grows is cut, one that shrinks is padded with zeros.
                    let body = file.take(size).chain(std::io::repeat(0)).take(size);
                    entry(out, &path, tar::EntryType::Regular, size, body)?;
                    c.bytes += size;
                    c.files += 1;
                }
                other => {
                    // Named for the receiver to count (as the Docker engine's archive
                    // does), with no content: a link's target is never read.
                    let kind = match other {
                        FileType::Symlink => Some(tar::EntryType::Symlink),
                        FileType::Fifo => Some(tar::EntryType::Fifo),
                        FileType::CharacterDevice => Some(tar::EntryType::Char),
                        FileType::BlockDevice => Some(tar::EntryType::Block),
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        entry(out, &path, kind, 0, std::io::empty())?;
                    }
                    c.skipped.count(other);
                }
            }
        }
        Ok(())
    }
}

fn charge(budget: &Budget, path: &Path, size: u64, c: &Copied) -> Result<(), TreeError> {
    let (bytes, files) = (c.bytes.saturating_add(size), c.files + c.dirs + 1);
    if bytes > budget.max_bytes || files > budget.max_files {
        return Err(TreeError::Budget {
            path: path.to_path_buf(),
            size,
            bytes,
            files,
            max_bytes: budget.max_bytes,
            max_files: budget.max_files,
        });
    }
    Ok(())
}

/// One entry, owner-only (0600 files, 0700 directories), of `size` bytes of `body`.
pub fn entry<W: Write>(
    out: &mut tar::Builder<W>,
    path: &Path,
    kind: tar::EntryType,
    size: u64,
    body: impl Read,
) -> Result<(), TreeError> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(if kind.is_dir() { 0o700 } else { 0o600 });
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    out.append_data(&mut header, path, body)
        .map_err(|e| io(path, e))
}

/// A tar stream unpacked into a directory.
pub struct Unpack {
    /// Leading components dropped from every name (`data/uploads/x` with 1 is
    /// `uploads/x`).
    pub strip: usize,
    pub budget: Budget,
    /// Uid and gid for what is made (the data directory's owner on a restore).
    pub owner: Option<(u32, u32)>,
}

impl Unpack {
    /// Reads entries up to the archive's end marker (not to end of file: a stream
    /// that stays open after it is fine). Regular files and directories only; a
    /// name with anything but plain components (`..`, `/`) is refused; a name that
    /// exists is replaced, never written through.
    pub fn run(&self, from: impl Read, into: &Dir) -> Result<Copied, TreeError> {
        let archive_path = Path::new("the archive");
        let mut archive = tar::Archive::new(from);
        let mut c = Copied::default();
        for item in archive.entries().map_err(|e| io(archive_path, e))? {
            let mut item = item.map_err(|e| io(archive_path, e))?;
            let kind = item.header().entry_type();
            let path = item.path().map_err(|e| io(archive_path, e))?.into_owned();
            let mut names = Vec::new();
            for part in path.components() {
                match part {
                    Component::Normal(n) => names.push(n.to_os_string()),
                    Component::CurDir => {}
                    _ => {
                        return Err(io(
                            &path,
                            std::io::Error::other("not a plain name below the directory"),
                        ))
                    }
                }
            }
            let names = names.get(self.strip..).unwrap_or_default();
            let Some((last, parents)) = names.split_last() else {
                continue;
            };
            if !(kind.is_dir() || kind.is_file()) {
                let skipped = &mut c.skipped;
                match kind {
                    tar::EntryType::Symlink | tar::EntryType::Link => skipped.links += 1,
                    tar::EntryType::Fifo => skipped.fifos += 1,
                    tar::EntryType::Char | tar::EntryType::Block => skipped.devices += 1,
                    _ => {}
                }
                continue;
            }
            let size = item.size();
            charge(&self.budget, &path, size, &c)?;
            let mut made: Option<Dir> = None;
            for p in parents {
                let dir = made.as_ref().unwrap_or(into).make_dir(p)?;
                dir.give_to(self.owner)?;
                made = Some(dir);
            }
            let dir = made.as_ref().unwrap_or(into);
            if kind.is_dir() {
                dir.make_dir(last)?.give_to(self.owner)?;
                c.dirs += 1;
            } else {
                let mut out = dir.create_file(last)?;
                give(self.owner, &out, &path)?;
                let n = std::io::copy(&mut item, &mut out).map_err(|e| io(&path, e))?;
                c.bytes += n;
                c.files += 1;
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mai-archive-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A tenant's links and FIFO are never followed or opened by a pack; what it
    /// packs unpacks into the same files, owner-only.
    #[test]
    fn a_pack_follows_no_link_and_unpacks_into_the_same_files() {
        let root = scratch("roundtrip");
        let (src, dst, outside) = (root.join("src"), root.join("dst"), root.join("outside"));
        std::fs::create_dir_all(src.join("uploads")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"the controller's").unwrap();
        std::fs::write(src.join("uploads/offer.txt"), b"oferta").unwrap();
        std::fs::set_permissions(
            src.join("uploads/offer.txt"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, src.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), src.join("uploads/s")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            src.join("pipe"),
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        std::fs::create_dir_all(src.join("cache")).unwrap();
        let mut out = tar::Builder::new(Vec::new());
        let packed = Pack {
            prefix: Some("data"),
            leave_out: &["cache"],
            budget: Budget::UNLIMITED,
        }
        .run(&Dir::open(&src).unwrap(), &mut out)
        .unwrap();
        assert_eq!((packed.files, packed.dirs, packed.bytes), (1, 1, 6));
        assert_eq!((packed.skipped.links, packed.skipped.fifos), (2, 1));
        let bytes = out.into_inner().unwrap();
        let into = Dir::create_private(&dst).unwrap();
        let unpacked = Unpack {
            strip: 1,
            budget: Budget::UNLIMITED,
            owner: None,
        }
        .run(&bytes[..], &into)
        .unwrap();
        assert_eq!((unpacked.files, unpacked.dirs), (1, 1));
        let (links, fifos) = (unpacked.skipped.links, unpacked.skipped.fifos);
        assert_eq!(
            (links, fifos),
            (2, 1),
            "the receiver counts what was skipped"
        );
        assert_eq!(
            std::fs::read(dst.join("uploads/offer.txt")).unwrap(),
            b"oferta"
        );
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dst.join("uploads/offer.txt")), 0o600);
        assert!(!dst.join("escape").exists() && !dst.join("cache").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// An archive naming `../x` or holding a link is refused or skipped, a link where
    /// a file is written is replaced, and the budget holds.
    #[test]
    fn an_unpack_writes_nowhere_but_below_its_directory() {
        let root = scratch("hostile");
        let (dst, outside) = (root.join("dst"), root.join("outside"));
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(outside.join("planted"), dst.join("planted")).unwrap();
        let into = Dir::open(&dst).unwrap();
        let unpack = |b: &[u8], budget| {
            Unpack {
                strip: 0,
                budget,
                owner: None,
            }
            .run(b, &into)
        };
        // `tar::Builder` refuses `..`: the hostile name is written by hand.
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o600);
        header.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../escaped.x");
        header.set_cksum();
        let mut raw = header.as_bytes().to_vec();
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0; 1024]);
        let e = unpack(&raw, Budget::UNLIMITED).unwrap_err().to_string();
        assert!(e.contains("not a plain name"), "{e}");
        assert!(!root.join("escaped.x").exists());

        let mut b = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "l", "/etc").unwrap();
        entry(
            &mut b,
            Path::new("planted"),
            tar::EntryType::Regular,
            2,
            &b"ok"[..],
        )
        .unwrap();
        let bytes = b.into_inner().unwrap();
        let done = unpack(&bytes, Budget::UNLIMITED).unwrap();
        assert_eq!((done.files, done.skipped.links), (1, 1));
        assert!(!dst.join("l").exists() && !outside.join("planted").exists());
        assert_eq!(std::fs::read(dst.join("planted")).unwrap(), b"ok");
        let e = unpack(
            &bytes,
            Budget {
                max_bytes: 1,
                max_files: 10,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("over the budget of 1 bytes"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
