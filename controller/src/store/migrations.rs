//! The schema's history. A released migration never changes: sqlx records each
//! one's SHA-384 and refuses to start on a database that ran another text.
//! `migrations/checksums.txt` lists every released one, and a unit test fails when a
//! file's text no longer matches it.
//!
//! Three migrations were edited after they first landed (0002, 0003, 0009). A
//! database that ran one of those earlier texts is brought to what the current text
//! makes, then its recorded checksum is moved to the current one, in one transaction,
//! before the migrator runs: an operator upgrading is never locked out.

use sqlx::PgPool;

use super::{StoreError, MIGRATOR};

/// A text a released migration once had: its version, that text's SHA-384 (hex), and
/// the SQL that brings a database which ran it to what the current text makes.
struct Superseded {
    version: i64,
    checksum: &'static str,
    repair: &'static str,
}

const SUPERSEDED: &[Superseded] = &[
    // 5109c71: the usage tables without `host`, which row-level security keys on.
    Superseded {
        version: 2,
        checksum: "1762a76644ff2bc54f60b9b19036ee8c25bd1a03c7ac4745c73fb823577c870a5b9e2190c687801f91c89bd87a5ca197",
        repair: r#"
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['usage_daily', 'usage_user_daily', 'usage_model_daily',
                             'usage_live_counters', 'usage_generations', 'agent_watermarks'] LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS host TEXT', t);
        EXECUTE format('UPDATE %I u SET host = coalesce((SELECT tn.host FROM tenants tn WHERE tn.id = u.tenant_id), '''') WHERE host IS NULL', t);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN host SET NOT NULL', t);
    END LOOP;
END
$$;
"#,
    },
    // 55c63f3: the agents' group role made with a check-then-create (same result).
    Superseded {
        version: 3,
        checksum: "553b1853da53c2ce3782e0541b9e0550f5720c6ef70c7a0d34dde64d166b1a2344248c1627d9204d367717ae0b79601a",
        repair: "",
    },
    // 81110a8: without the per-day table of OpenRouter's ledger.
    Superseded {
        version: 9,
        checksum: "3a0fd67ac907f49435cfce1d191fe4efec7e74e57cb987b32deb4786b8bcf7721f0bc9639c7303d6fe39eeb6afb01717",
        repair: r#"
CREATE TABLE IF NOT EXISTS openrouter_activity_days (
    key_hash       TEXT NOT NULL,
    activity_date  DATE NOT NULL,
    usage          NUMERIC(18, 6) NOT NULL,
    PRIMARY KEY (key_hash, activity_date)
);
CREATE INDEX IF NOT EXISTS openrouter_activity_days_date ON openrouter_activity_days (activity_date);
"#,
    },
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Brings a database that ran a superseded text up to the current one (see the
/// module's words); a database without sqlx's table, or with current texts, is left
/// as it is.
pub async fn repair_superseded(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut repaired = Vec::new();
    for old in SUPERSEDED {
        let Some(current) = MIGRATOR.iter().find(|m| m.version == old.version) else {
            continue;
        };
        let mut tx = pool.begin().await?;
        let recorded: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT checksum FROM _sqlx_migrations WHERE version = $1 FOR UPDATE",
        )
        .bind(old.version)
        .fetch_optional(&mut *tx)
        .await?;
        if recorded.as_deref().map(hex).as_deref() != Some(old.checksum) {
            continue;
        }
        if !old.repair.is_empty() {
            sqlx::raw_sql(old.repair).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE _sqlx_migrations SET checksum = $2 WHERE version = $1")
            .bind(old.version)
            .bind(current.checksum.as_ref())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        repaired.push(old.version);
    }
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seen failing when an old migration is edited: the recorded checksum no longer
    /// matches the text sqlx would run.
    #[test]
    fn released_migrations_never_change() {
        let recorded: Vec<(i64, String)> = include_str!("../../migrations/checksums.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once(' '))
            .map(|(v, c)| (v.parse().unwrap(), c.trim().to_string()))
            .collect();
        for m in MIGRATOR.iter() {
            let found = hex(&m.checksum);
            match recorded.iter().find(|(v, _)| *v == m.version) {
                Some((_, c)) => assert_eq!(
                    c, &found,
                    "migration {} ({}) changed after its release: restore its text and add a new migration",
                    m.version, m.description
                ),
                None => panic!(
                    "migration {} ({}) is new: add `{} {found}` to migrations/checksums.txt",
                    m.version, m.description, m.version
                ),
            }
        }
        assert_eq!(
            recorded.len(),
            MIGRATOR.iter().count(),
            "a released migration was removed"
        );
        for old in SUPERSEDED {
            assert!(recorded
                .iter()
                .any(|(v, c)| *v == old.version && *c != old.checksum));
        }
    }
}
