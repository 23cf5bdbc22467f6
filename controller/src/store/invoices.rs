//! Invoices as stored: drafts made under their month's lock (numbers without gaps),
//! then what KSeF said of each. A stored draft's XML never changes.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};

use super::{Store, StoreError};

/// An invoice without its XML and receipt (lists, alerts, sending decisions).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct InvoiceRow {
    pub id: i64,
    pub month: NaiveDate,
    pub seq: i32,
    pub number: String,
    pub kind: String,
    pub corrects: Option<i64>,
    pub tenant_id: String,
    pub buyer_nip: String,
    pub buyer_name: String,
    pub issue_date: NaiveDate,
    pub currency: String,
    pub vat_rate: i32,
    #[serde(with = "rust_decimal::serde::str")]
    pub net: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub vat: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub gross: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub rate: Option<Decimal>,
    pub rate_date: Option<NaiveDate>,
    pub rate_table_no: Option<String>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub vat_pln: Option<Decimal>,
    pub xml_sha256: String,
    pub state: String,
    pub ksef_session: Option<String>,
    pub ksef_reference: Option<String>,
    pub ksef_number: Option<String>,
    pub ksef_code: Option<i32>,
    pub ksef_text: Option<String>,
    pub has_upo: bool,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub accepted_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, month, seq, number, kind, corrects, tenant_id, buyer_nip, buyer_name, issue_date,
    currency, vat_rate, net, vat, gross, rate, rate_date, rate_table_no, vat_pln, xml_sha256, state,
    ksef_session, ksef_reference, ksef_number, ksef_code, ksef_text, upo IS NOT NULL AS has_upo,
    created_at, created_by, sent_at, accepted_at";

/// An invoice with its documents, read in one query.
#[derive(sqlx::FromRow)]
struct Shown {
    #[sqlx(flatten)]
    row: InvoiceRow,
    xml: String,
    upo: Option<String>,
}

/// A draft to store.
#[derive(Debug, Clone)]
pub struct NewInvoice {
    pub month: NaiveDate,
    pub seq: i32,
    pub number: String,
    pub kind: &'static str,
    pub corrects: Option<i64>,
    pub tenant_id: String,
    pub buyer_nip: String,
    pub buyer_name: String,
    pub issue_date: NaiveDate,
    pub currency: &'static str,
    pub vat_rate: i32,
    pub net: Decimal,
    pub vat: Decimal,
    pub gross: Decimal,
    pub rate: Option<Decimal>,
    pub rate_date: Option<NaiveDate>,
    pub rate_table_no: Option<String>,
    pub vat_pln: Option<Decimal>,
    pub xml: String,
    pub xml_sha256: String,
    pub created_by: String,
}

/// A closed month's invoices, read and extended under the month's row lock: two
/// drafting runs at once take numbers one after the other, never the same.
pub struct MonthInvoices {
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<InvoiceRow>,
}

impl MonthInvoices {
    pub async fn insert(&mut self, i: &NewInvoice) -> Result<i64, StoreError> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO invoices (month, seq, number, kind, corrects, tenant_id, buyer_nip, buyer_name, issue_date,
                 currency, vat_rate, net, vat, gross, rate, rate_date, rate_table_no, vat_pln, xml, xml_sha256, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
             RETURNING id",
        )
        .bind(i.month)
        .bind(i.seq)
        .bind(&i.number)
        .bind(i.kind)
        .bind(i.corrects)
        .bind(&i.tenant_id)
        .bind(&i.buyer_nip)
        .bind(&i.buyer_name)
        .bind(i.issue_date)
        .bind(i.currency)
        .bind(i.vat_rate)
        .bind(i.net)
        .bind(i.vat)
        .bind(i.gross)
        .bind(i.rate)
        .bind(i.rate_date)
        .bind(&i.rate_table_no)
        .bind(i.vat_pln)
        .bind(&i.xml)
        .bind(&i.xml_sha256)
        .bind(&i.created_by)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(id)
    }

    /// Rows by id as this transaction sees them (its own inserts included).
    pub async fn read(&mut self, ids: &[i64]) -> Result<Vec<InvoiceRow>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM invoices WHERE id = ANY($1) ORDER BY seq"
        )))
        .bind(ids)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Stores the run's drafts; dropped without this, the run leaves nothing.
    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }
}

/// A closed month's state for `invoice_unsent`: tenants billed but not accepted.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UnsentMonth {
    pub month: NaiveDate,
    pub closed_at: DateTime<Utc>,
    /// Tenants with an invoice KSeF has not accepted, or (no draft at all for the
    /// month) every tenant the month bills.
    pub tenants: Vec<String>,
    pub drafted: bool,
}

/// Held while invoices are sent; dropping it closes the session and frees the lock.
pub struct SendingLock {
    _conn: sqlx::PgConnection,
}

/// The advisory lock `invoices send` holds (`pg_locks` shows it as classid/objid).
pub const SENDING_LOCK_SQL: &str = "SELECT pg_try_advisory_lock(hashtext('mai-fleet.invoices'), 0)";

impl Store {
    /// One sender at a time for the whole fleet database.
    pub async fn lock_sending(&self) -> Result<SendingLock, StoreError> {
        let mut conn = self.pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar(SENDING_LOCK_SQL)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            return Err(StoreError::SendingLocked);
        }
        Ok(SendingLock { _conn: conn })
    }

    /// Locks `month`'s close row (None: the month is not closed) and reads its invoices.
    pub async fn lock_month_invoices(
        &self,
        month: NaiveDate,
    ) -> Result<Option<MonthInvoices>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let closed: Option<(NaiveDate,)> =
            sqlx::query_as("SELECT month FROM billing_closes WHERE month = $1 FOR UPDATE")
                .bind(month)
                .fetch_optional(&mut *tx)
                .await?;
        if closed.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM invoices WHERE month = $1 ORDER BY seq"
        )))
        .bind(month)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Some(MonthInvoices { tx, rows }))
    }

    /// A month's invoices (every month when `None`), by month and number.
    pub async fn invoices(&self, month: Option<NaiveDate>) -> Result<Vec<InvoiceRow>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM invoices WHERE $1::date IS NULL OR month = $1 ORDER BY month DESC, seq"
        )))
        .bind(month)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One invoice by number, with its XML and receipt (UPO).
    pub async fn invoice(
        &self,
        number: &str,
    ) -> Result<Option<(InvoiceRow, String, Option<String>)>, StoreError> {
        let found: Option<Shown> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, xml, upo FROM invoices WHERE number = $1"
        )))
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(|s| (s.row, s.xml, s.upo)))
    }

    pub async fn invoice_xml(&self, id: i64) -> Result<String, StoreError> {
        let (xml,): (String,) = sqlx::query_as("SELECT xml FROM invoices WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(xml)
    }

    /// Handed to KSeF in `session` as `reference`: its status is still to be read.
    pub async fn invoice_sending(
        &self,
        id: i64,
        session: &str,
        reference: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE invoices SET state = 'sending', ksef_session = $2, ksef_reference = $3,
                 ksef_code = NULL, ksef_text = NULL, sent_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(session)
        .bind(reference)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Accepted as `ksef_number` (`code` 200, or 440 for a duplicate of an accepted one).
    pub async fn invoice_accepted(
        &self,
        id: i64,
        ksef_number: &str,
        code: i32,
        text: &str,
        session: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE invoices SET state = 'accepted', ksef_number = $2, ksef_code = $3, ksef_text = $4,
                 ksef_session = COALESCE($5, ksef_session), accepted_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(ksef_number)
        .bind(code)
        .bind(text)
        .bind(session)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn invoice_rejected(&self, id: i64, code: i32, text: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE invoices SET state = 'rejected', ksef_code = $2, ksef_text = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(code)
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn invoice_upo(&self, id: i64, upo: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE invoices SET upo = $2 WHERE id = $1")
            .bind(id)
            .bind(upo)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closed months, closed more than `days` ago, whose invoices KSeF has not all
    /// accepted, or that were never drafted while they bill somebody and an earlier
    /// month was invoiced (a fleet that does not invoice gets no alert).
    pub async fn unsent_months(&self, days: i64) -> Result<Vec<UnsentMonth>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT c.month, c.closed_at,
                    CASE WHEN EXISTS (SELECT 1 FROM invoices i WHERE i.month = c.month)
                         THEN ARRAY(SELECT DISTINCT i.tenant_id FROM invoices i
                                    WHERE i.month = c.month AND i.state <> 'accepted' ORDER BY 1)
                         ELSE ARRAY(SELECT l.tenant_id FROM billing_closed_lines l
                                    WHERE l.month = c.month AND l.client_cost > 0 ORDER BY 1)
                    END AS tenants,
                    EXISTS (SELECT 1 FROM invoices i WHERE i.month = c.month) AS drafted
             FROM billing_closes c
             WHERE c.closed_at < now() - make_interval(days => $1::int)
               -- A fleet that does not invoice is not nagged: a month counts once the
               -- fleet has invoiced it or a month before it.
               AND EXISTS (SELECT 1 FROM invoices i WHERE i.month <= c.month)
             ORDER BY c.month",
        )
        .bind(days as i32)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .filter(|m: &UnsentMonth| !m.tenants.is_empty())
        .collect())
    }
}
