//! The on-disk spool: batches that could not reach Postgres, delivered in order when
//! it returns. Bounded: when full, nothing more is spooled and the store itself (whose
//! rows are updated in place) holds the rest until the database is back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::health::Health;
use crate::reader::Snapshot;
#[cfg(test)]
use crate::sink::watermarks_after;
use crate::sink::Watermark;

/// One tenant's cycle, as it would have been shipped.
#[derive(Serialize, Deserialize)]
pub struct Batch {
    pub tenant: String,
    pub snapshot: Snapshot,
    /// The watermarks the batch was read after (regressions are judged against them).
    pub previous: HashMap<String, Watermark>,
    pub health: Health,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {dir} is full ({used} of {max} bytes): not spooling; the store keeps the rows until Postgres is back")]
    Full { dir: String, used: u64, max: u64 },
    #[error("spooled batch {file} is unreadable: {reason}")]
    Corrupt { file: String, reason: String },
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    next_seq: u64,
    /// What is on disk, by sequence: path, tenant, size. Read from the directory once
    /// at open and kept up to date here, so that a cycle asks the disk nothing per
    /// tenant.
    index: BTreeMap<u64, (PathBuf, String, u64)>,
}

impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let mut index = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|source| io(dir, source))? {
            let path = entry.map_err(|source| io(dir, source))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some((seq, tenant)) = parse_name(&path) else {
                continue;
            };
            let bytes = std::fs::metadata(&path)
                .map_err(|source| io(&path, source))?
                .len();
            index.insert(seq, (path, tenant, bytes));
        }
        let next_seq = index.keys().next_back().map_or(0, |s| s + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            next_seq,
            index,
        })
    }

    /// Spooled batches, oldest first.
    pub fn pending(&self) -> Vec<PathBuf> {
        self.index.values().map(|(p, _, _)| p.clone()).collect()
    }

    pub fn has_pending_for(&self, tenant: &str) -> bool {
        self.index.values().any(|(_, t, _)| t == tenant)
    }

    /// What the spool holds on disk.
    pub fn used_bytes(&self) -> u64 {
        self.index.values().map(|(_, _, b)| b).sum()
    }

    /// Writes a batch atomically (temporary file, then rename) after the others.
    pub fn push(&mut self, batch: &Batch) -> Result<PathBuf, SpoolError> {
        let bytes =
            serde_json::to_vec(batch).map_err(|e| io(&self.dir, std::io::Error::other(e)))?;
        let used = self.used_bytes();
        if used + bytes.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                dir: self.dir.display().to_string(),
                used,
                max: self.max_bytes,
            });
        }
        let path = self
            .dir
            .join(format!("{:020}-{}.json", self.next_seq, batch.tenant));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).map_err(|source| io(&self.dir, source))?;
        std::fs::rename(&tmp, &path).map_err(|source| io(&self.dir, source))?;
        self.index.insert(
            self.next_seq,
            (path.clone(), batch.tenant.clone(), bytes.len() as u64),
        );
        self.next_seq += 1;
        Ok(path)
    }

    pub fn load(path: &Path) -> Result<Batch, SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt {
            file: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))
    }

    /// A delivered batch.
    pub fn remove(&mut self, path: &Path) -> Result<(), SpoolError> {
        std::fs::remove_file(path).map_err(|source| io(path, source))?;
        self.forget(path);
        Ok(())
    }

    /// A batch the database refused for good: kept beside the spool as `.rejected`
    /// for a person to look at, out of the way of the batches behind it.
    pub fn set_aside(&mut self, path: &Path) -> Result<(), SpoolError> {
        std::fs::rename(path, path.with_extension("rejected"))
            .map_err(|source| io(path, source))?;
        self.forget(path);
        Ok(())
    }

    fn forget(&mut self, path: &Path) {
        if let Some((seq, _)) = parse_name(path) {
            self.index.remove(&seq);
        }
    }
}

/// `<sequence>-<tenant>.json` -> (sequence, tenant); tenant ids may hold '-'.
fn parse_name(path: &Path) -> Option<(u64, String)> {
    let stem = path.file_stem()?.to_str()?;
    let (seq, tenant) = stem.split_once('-')?;
    Some((seq.parse().ok()?, tenant.to_string()))
}

fn io(dir: &Path, source: std::io::Error) -> SpoolError {
    SpoolError::Io {
        dir: dir.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tenant: &str, rows: usize) -> Batch {
        let mut snapshot = Snapshot::default();
        snapshot
            .max_updated
            .insert("client_daily_usage".into(), 100 + rows as i64);
        snapshot
            .row_counts
            .insert("client_daily_usage".into(), rows as i64);
        Batch {
            tenant: tenant.into(),
            snapshot,
            previous: HashMap::new(),
            health: serde_json::from_value(serde_json::json!({
                "tenant": tenant, "container": "c", "container_state": "running", "restart_count": 0,
                "started_at": null, "in_spec": true, "env_missing": [], "store_status": "ok",
                "schema_variant": "migration", "org_row_present": true, "last_usage_change": null,
                "live_counter_date": null, "tracking": "active", "reasons": []
            }))
            .unwrap(),
        }
    }

    #[test]
    fn batches_come_back_in_order_across_reopen_and_the_bound_holds() {
        let dir = std::env::temp_dir().join(format!("mai-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 10_000).unwrap();
        for (i, t) in ["b", "a", "b"].iter().enumerate() {
            spool.push(&batch(t, i)).unwrap();
        }
        // A restarted agent continues the sequence after what is on disk.
        let mut spool = Spool::open(&dir, 10_000).unwrap();
        spool.push(&batch("c", 3)).unwrap();
        let order: Vec<(String, i64)> = spool
            .pending()
            .iter()
            .map(|p| {
                let b = Spool::load(p).unwrap();
                (
                    b.tenant.clone(),
                    watermarks_after(&b.snapshot)["client_daily_usage"].row_count,
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                ("b".into(), 0),
                ("a".into(), 1),
                ("b".into(), 2),
                ("c".into(), 3)
            ]
        );
        assert!(spool.has_pending_for("a") && !spool.has_pending_for("d"));
        let mut small = Spool::open(&dir, 100).unwrap();
        assert!(matches!(
            small.push(&batch("x", 1)),
            Err(SpoolError::Full { .. })
        ));
        for p in spool.pending() {
            spool.remove(&p).unwrap();
        }
        assert!(spool.pending().is_empty());
        // What the index says is what a reopened spool reads from the disk.
        assert!(Spool::open(&dir, 10_000).unwrap().pending().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
