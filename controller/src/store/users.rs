//! Dashboard users (argon2 hashes, made by the caller) and their sessions (only a
//! SHA-256 of each session token is stored).

use super::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    pub user_name: String,
    pub csrf_token: String,
}

/// The SQL of [`Store::session`] (the benchmark runs it bare in psql).
pub const SESSION_SQL: &str = "SELECT user_name, csrf_token FROM dashboard_sessions WHERE token_sha256 = $1 AND expires_at > now()";

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

    pub async fn session(&self, token_sha256: &str) -> Result<Option<Session>, StoreError> {
        Ok(sqlx::query_as(SESSION_SQL)
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn delete_session(&self, token_sha256: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dashboard_sessions WHERE token_sha256 = $1")
            .bind(token_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
