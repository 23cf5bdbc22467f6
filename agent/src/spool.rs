//! The on-disk spool: batches that could not reach Postgres, delivered in order when
//! it returns. Bounded: when full, nothing more is spooled and the store itself (whose
//! rows are updated in place) holds the rest until the database is back.

use std::collections::HashMap;
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
}

impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            next_seq: 0,
        };
        spool.next_seq = spool
            .pending()?
            .last()
            .and_then(|p| seq_of(p))
            .map_or(0, |s| s + 1);
        Ok(spool)
    }

    /// Spooled batches, oldest first.
    pub fn pending(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|source| io(&self.dir, source))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && seq_of(p).is_some())
            .collect();
        files.sort_by_key(|p| seq_of(p));
        Ok(files)
    }

    pub fn has_pending_for(&self, tenant: &str) -> Result<bool, SpoolError> {
        let suffix = format!("-{tenant}.json");
        Ok(self.pending()?.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        }))
    }

    fn used_bytes(&self) -> Result<u64, SpoolError> {
        Ok(self
            .pending()?
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum())
    }

    /// Writes a batch atomically (temporary file, then rename) after the others.
    pub fn push(&mut self, batch: &Batch) -> Result<PathBuf, SpoolError> {
        let bytes =
            serde_json::to_vec(batch).map_err(|e| io(&self.dir, std::io::Error::other(e)))?;
        let used = self.used_bytes()?;
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

    pub fn remove(path: &Path) -> Result<(), SpoolError> {
        std::fs::remove_file(path).map_err(|source| io(path, source))
    }
}

fn seq_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.split('-').next()?.parse().ok()
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
            .unwrap()
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
        assert!(spool.has_pending_for("a").unwrap() && !spool.has_pending_for("d").unwrap());
        let mut small = Spool::open(&dir, 100).unwrap();
        assert!(matches!(
            small.push(&batch("x", 1)),
            Err(SpoolError::Full { .. })
        ));
        for p in spool.pending().unwrap() {
            Spool::remove(&p).unwrap();
        }
        assert!(spool.pending().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
