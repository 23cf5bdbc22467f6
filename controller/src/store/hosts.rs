//! Per-host agent credentials: a login role per host, member of `mai_agent`, which the
//! row-level security of migration 0003 confines to that host's rows.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::crypto::random_bytes;

use super::{Store, StoreError};

/// A new agent role and its password, shown once and kept nowhere.
pub struct AgentCredentials {
    pub role: String,
    pub password: String,
}

/// `mai_agent_<host>` (`-` becomes `_`: host names are `[a-z0-9-]`).
pub fn role_name(host: &str) -> String {
    format!("mai_agent_{}", host.replace('-', "_"))
}

impl Store {
    /// New credentials for the host's agent: its role made, or given a new password.
    pub async fn agent_credentials(&self, host: &str) -> Result<AgentCredentials, StoreError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agent_roles WHERE role_name = $1)")
                .bind(role_name(host))
                .fetch_one(&self.pool)
                .await?;
        self.add_agent_host(host, exists).await
    }

    /// The database's clock, to compare its own time stamps with.
    pub async fn now(&self) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Whether the host's agent has reported since `since` (the database's clock).
    pub async fn heartbeat_since(
        &self,
        host: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM agent_heartbeats WHERE host = $1 AND seen_at >= $2)",
        )
        .bind(host)
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Creates the host's agent role, or with `rotate` gives it a new password. The
    /// password reaches the server only as a SCRAM-SHA-256 verifier, so it is in no
    /// statement, log or catalog in plain text.
    pub async fn add_agent_host(
        &self,
        host: &str,
        rotate: bool,
    ) -> Result<AgentCredentials, StoreError> {
        let role = role_name(host);
        let password = crate::crypto::hex(&random_bytes::<24>().map_err(StoreError::Random)?);
        let verifier = scram_verifier(
            &password,
            &random_bytes::<16>().map_err(StoreError::Random)?,
        );
        let mut tx = self.pool.begin().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&role)
                .fetch_one(&mut *tx)
                .await?;
        let ours: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agent_roles WHERE role_name = $1)")
                .bind(&role)
                .fetch_one(&mut *tx)
                .await?;
        match (exists, ours, rotate) {
            (true, true, false) => {
                return Err(StoreError::HostExists {
                    host: host.to_string(),
                })
            }
            (true, false, _) => return Err(StoreError::RoleTaken { role }),
            (false, _, true) => {
                return Err(StoreError::NoSuchHost {
                    host: host.to_string(),
                })
            }
            _ => {}
        }
        // Identifiers and the verifier are quoted by the server's format(); DDL takes
        // no bind parameters.
        let ddl: String = if rotate {
            sqlx::query_scalar("SELECT format('ALTER ROLE %I PASSWORD %L', $1, $2)")
        } else {
            sqlx::query_scalar(
                "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE mai_agent', $1, $2)",
            )
        }
        .bind(&role)
        .bind(&verifier)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await?;
        if !rotate {
            sqlx::query("INSERT INTO agent_roles (role_name, host) VALUES ($1, $2)")
                .bind(&role)
                .bind(host)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(AgentCredentials { role, password })
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802/7677), the
/// form PostgreSQL stores and accepts in `PASSWORD`.
pub fn scram_verifier(password: &str, salt: &[u8]) -> String {
    const ITERATIONS: u32 = 4096;
    let mac = |key: &[u8], data: &[u8]| -> Vec<u8> {
        // HMAC takes keys of any length: this cannot fail.
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    // Hi() = PBKDF2-HMAC-SHA-256 with one output block.
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = mac(password.as_bytes(), &block);
    let mut salted = u.clone();
    for _ in 1..ITERATIONS {
        u = mac(password.as_bytes(), &u);
        salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
    }
    let client_key = mac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let server_key = mac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verifier PostgreSQL's own client library computes for this password and
    /// salt (`PQencryptPasswordConn`), checked against the server in the e2e test.
    #[test]
    fn verifier_has_postgres_form() {
        let v = scram_verifier("secret", b"0123456789abcdef");
        assert!(
            v.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"),
            "{v}"
        );
        assert_eq!(v.matches(':').count(), 2);
        assert_eq!(role_name("hel1-a"), "mai_agent_hel1_a");
    }
}
