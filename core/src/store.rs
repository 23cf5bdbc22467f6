//! Opening a tenant's usage store, which the tenant wrote every byte of: the agent's
//! reads and the controller's backup and restore checks share these defences. The
//! store is opened read-only and `query_only`, with the tenant's schema untrusted
//! (no function with side effects runs from a view, a default or a trigger), values
//! bounded, and SQLite interrupted past a time budget; a usage table must be a plain
//! table, since a view or a virtual table under its name runs the tenant's code (a
//! recursive view never ends).

use crate::Invalid;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

/// What one look at a store may cost.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// Wall time of everything done on the connection; SQLite is interrupted past it.
    pub time: Duration,
    /// Largest string or blob SQLite will hand over.
    pub max_value_bytes: i32,
}

/// Opens `path` read-only under `guard` (the file's kinds are checked first by
/// [`crate::contract::check_store_files`]; links are refused at every component).
pub fn open(path: &Path, guard: &Guard) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, guard.max_value_bytes)?;
    let deadline = Instant::now() + guard.time;
    // Called every few thousand VM steps: true interrupts the statement.
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline));
    conn.busy_timeout(Duration::from_millis(2000))?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "trusted_schema", false)?;
    Ok(conn)
}

/// Why a statement on a guarded connection was refused, when it was the guard.
pub fn refusal(e: &rusqlite::Error) -> Option<&'static str> {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::TooBig) => {
            Some("a value in a usage table is too big (longer than a usage row may hold)")
        }
        Some(rusqlite::ErrorCode::OperationInterrupted) => {
            Some("reading took longer than the store read budget (a view, a huge table?)")
        }
        _ => None,
    }
}

/// `Ok(Err(why))` when `table` exists and is not a plain table (a view, a virtual
/// table); `Ok(Ok(()))` when it is one or is absent.
pub fn plain_table(conn: &Connection, table: &str) -> rusqlite::Result<Result<(), Invalid>> {
    let kind: Option<(String, String)> = conn
        .query_row(
            "SELECT type, coalesce(sql, '') FROM sqlite_schema WHERE name = ?1 COLLATE NOCASE",
            [table],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok(match kind {
        Some((kind, _)) if kind != "table" => {
            Err(format!("{table} is a {kind}, not a table").into())
        }
        Some((_, sql))
            if sql
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE VIRTUAL") =>
        {
            Err(format!("{table} is a virtual table, not a table").into())
        }
        _ => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_under_a_usage_tables_name_is_refused_and_a_long_read_interrupted() {
        let path = std::env::temp_dir().join(format!("mai-core-store-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t (x);
             CREATE VIEW v AS WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r;",
        )
        .unwrap();
        drop(c);
        let guard = Guard {
            time: Duration::from_millis(300),
            max_value_bytes: 1024,
        };
        let conn = open(&path, &guard).unwrap();
        assert_eq!(plain_table(&conn, "t").unwrap(), Ok(()));
        assert_eq!(plain_table(&conn, "absent").unwrap(), Ok(()));
        assert!(plain_table(&conn, "V")
            .unwrap()
            .unwrap_err()
            .0
            .contains("view"));
        let started = Instant::now();
        let e = conn
            .query_row("SELECT count(*) FROM v", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(refusal(&e).is_some_and(|w| w.contains("budget")), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_file(&path);
    }
}

/// Why [`online_copy`] made no copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the usage store {what}: {source}")]
    Sqlite {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the store stayed locked by the app for 30 s")]
    Locked,
}

fn sqlite(what: &'static str) -> impl FnOnce(rusqlite::Error) -> CopyError {
    move |source| CopyError::Sqlite { what, source }
}

/// SQLite's online backup API, all pages in one step: one read transaction, so the
/// copy is the store as of one moment while the app keeps writing. `recover`: the
/// source is a frozen copy of ours, opened writable so that SQLite rolls back a
/// journal left hot by a pause (read-only, it refuses: "attempt to write a readonly
/// database"). The copy is made a standalone rollback-journal file.
pub fn online_copy(db: &Path, to: &Path, recover: bool) -> Result<(), CopyError> {
    let access = if recover {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let flags = access | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let src = Connection::open_with_flags(db, flags).map_err(sqlite("cannot be opened"))?;
    src.busy_timeout(Duration::from_secs(10))
        .map_err(sqlite("cannot be opened"))?;
    let mut dst = Connection::open(to).map_err(sqlite("copy cannot be made"))?;
    {
        let backup =
            rusqlite::backup::Backup::new(&src, &mut dst).map_err(sqlite("cannot be copied"))?;
        // -1: every page in one step, so one read transaction sees one moment. Busy or
        // locked (a writer holds the store in rollback-journal mode): wait, try again.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1).map_err(sqlite("cannot be copied"))? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return Err(CopyError::Locked),
            }
        }
    }
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sqlite("copy cannot be made standalone"))
}
