//! Dashboard sessions (migration 0004): rows keyed by the SHA-256 of the cookie's random id.

use super::{Result, Store};

impl Store {
    /// Records a new session that ends at `expires_at`.
    pub async fn create_session(
        &self,
        id_sha256: &str,
        token_sha256: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO dashboard_sessions (id_sha256, token_sha256, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id_sha256)
        .bind(token_sha256)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token hash of a live session (not expired at `now`); `None`: no such session.
    pub async fn session_token(&self, id_sha256: &str, now: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT token_sha256 FROM dashboard_sessions WHERE id_sha256 = $1 AND expires_at > $2",
        )
        .bind(id_sha256)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ends a session (logout); true when it existed.
    pub async fn delete_session(&self, id_sha256: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM dashboard_sessions WHERE id_sha256 = $1")
                .bind(id_sha256)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    /// Removes sessions that expired before `now`; returns how many.
    pub async fn prune_sessions(&self, now: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
