//! Dashboard users (argon2 hashes, made by the caller) and their sessions (only a
//! SHA-256 of each session token is stored).

use super::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    pub user_name: String,
    pub csrf_token: String,
    pub role: String,
    /// Seconds since the session was last used (as last recorded).
    pub idle_s: f64,
}

/// A dashboard user as `controller user list` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct User {
    pub name: String,
    pub role: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub sessions: i64,
}

/// The SQL of [`Store::session`] (the benchmark runs it bare in psql): a session
/// neither expired nor idle for longer than $2 seconds.
pub const SESSION_SQL: &str = "SELECT s.user_name, s.csrf_token, u.role, extract(epoch FROM now() - s.last_seen_at)::float8 AS idle_s
     FROM dashboard_sessions s JOIN dashboard_users u ON u.name = s.user_name
     WHERE s.token_sha256 = $1 AND s.expires_at > now() AND s.last_seen_at > now() - make_interval(secs => $2)";

impl Store {
    /// Creates or replaces a user's password hash; true when the user is new.
    pub async fn put_user(&self, name: &str, password_hash: &str) -> Result<bool, StoreError> {
        let created: bool = sqlx::query_scalar(
            "INSERT INTO dashboard_users (name, password_hash) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = now()
             RETURNING (xmax = 0)",
        )
        .bind(name)
        .bind(password_hash)
        .fetch_one(&self.pool)
        .await?;
        // A new password ends every session of the old one.
        if !created {
            sqlx::query("DELETE FROM dashboard_sessions WHERE user_name = $1")
                .bind(name)
                .execute(&self.pool)
                .await?;
        }
        Ok(created)
    }

    pub async fn user_password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT password_hash FROM dashboard_users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn create_session(
        &self,
        token_sha256: &str,
        user: &str,
        csrf_token: &str,
        ttl_s: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at < now()")
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO dashboard_sessions (token_sha256, user_name, csrf_token, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        )
        .bind(token_sha256)
        .bind(user)
        .bind(csrf_token)
        .bind(ttl_s as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session of a token; its idle clock restarts (recorded at most once a
    /// minute, so that reading pages does not write on every request).
    pub async fn session(
        &self,
        token_sha256: &str,
        idle_timeout_s: i64,
    ) -> Result<Option<Session>, StoreError> {
        let session: Option<Session> = sqlx::query_as(SESSION_SQL)
            .bind(token_sha256)
            .bind(idle_timeout_s as f64)
            .fetch_optional(&self.pool)
            .await?;
        if session.as_ref().is_some_and(|s| s.idle_s > 60.0) {
            sqlx::query(
                "UPDATE dashboard_sessions SET last_seen_at = now() WHERE token_sha256 = $1",
            )
            .bind(token_sha256)
            .execute(&self.pool)
            .await?;
        }
        Ok(session)
    }

    /// Sets a user's role (`viewer` or `admin`).
    pub async fn set_user_role(&self, name: &str, role: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE dashboard_users SET role = $2, updated_at = now() WHERE name = $1")
            .bind(name)
            .bind(role)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT u.name, u.role, u.created_at,
                    (SELECT count(*) FROM dashboard_sessions s WHERE s.user_name = u.name AND s.expires_at > now()) AS sessions
             FROM dashboard_users u ORDER BY u.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes a user and so their sessions; false when there was none.
    pub async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM dashboard_users WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_session(&self, token_sha256: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dashboard_sessions WHERE token_sha256 = $1")
            .bind(token_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
