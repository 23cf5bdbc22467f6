//! Stored NBP rates and the record of each fetch.

use chrono::{DateTime, NaiveDate, Utc};

use super::{Store, StoreError};
use crate::rates::{Rate, RateTable, LOOKBACK_DAYS};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct RateFetch {
    pub started_at: DateTime<Utc>,
    pub ok: bool,
    pub stored: i32,
    pub detail: String,
}

/// The SQL of [`Store::rate_on`] (the benchmark runs it bare in psql).
pub const RATE_ON_SQL: &str =
    "SELECT rate_table, effective_date, table_no, rate FROM exchange_rates
             WHERE rate_table = $1 AND effective_date <= $2 AND effective_date >= $2 - $3::int
             ORDER BY effective_date DESC LIMIT 1";

impl Store {
    /// Stores rates; a table NBP corrected replaces the earlier copy.
    pub async fn upsert_rates(&self, rates: &[Rate]) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        for r in rates {
            sqlx::query(
                "INSERT INTO exchange_rates (rate_table, effective_date, table_no, rate) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (rate_table, effective_date) DO UPDATE
                 SET table_no = EXCLUDED.table_no, rate = EXCLUDED.rate, fetched_at = now()
                 WHERE (exchange_rates.table_no, exchange_rates.rate) IS DISTINCT FROM (EXCLUDED.table_no, EXCLUDED.rate)",
            )
            .bind(r.rate_table.0.code())
            .bind(r.effective_date)
            .bind(&r.table_no)
            .bind(r.rate)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rates.len())
    }

    pub async fn record_rate_fetch(
        &self,
        table: RateTable,
        ok: bool,
        stored: usize,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO exchange_rate_fetches (rate_table, ok, stored, detail) VALUES ($1, $2, $3, $4)")
            .bind(table.code())
            .bind(ok)
            .bind(i32::try_from(stored).unwrap_or(i32::MAX))
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The rate that applies on `day`: that day's table or the last one before it,
    /// at most [`LOOKBACK_DAYS`] back.
    pub async fn rate_on(
        &self,
        table: RateTable,
        day: NaiveDate,
    ) -> Result<Option<Rate>, StoreError> {
        Ok(sqlx::query_as(RATE_ON_SQL)
            .bind(table.code())
            .bind(day)
            .bind(LOOKBACK_DAYS as i32)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn last_rate_fetch(&self, table: RateTable) -> Result<Option<RateFetch>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT started_at, ok, stored, detail FROM exchange_rate_fetches
             WHERE rate_table = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(table.code())
        .fetch_optional(&self.pool)
        .await?)
    }
}
