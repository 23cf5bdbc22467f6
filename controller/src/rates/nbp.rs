//! The NBP web API (api.nbp.pl, docs/billing.md): `GET
//! /exchangerates/rates/{table}/usd/{start}/{end}/`, JSON, 404 for "no table".

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{Rate, RateTable, TableCode};

pub const DEFAULT_BASE_URL: &str = "https://api.nbp.pl/api";
/// The API serves at most 93 days per range request.
const MAX_RANGE_DAYS: i64 = 93;

#[derive(Debug, thiserror::Error)]
pub enum NbpError {
    #[error("NBP API at {url} cannot be reached: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("NBP API answered {status} for {url}")]
    Status { url: String, status: u16 },
    #[error("NBP API sent an answer that is not a rates table ({url}): {detail}")]
    Malformed { url: String, detail: String },
}

#[derive(Clone)]
pub struct NbpClient {
    base_url: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Series {
    table: String,
    code: String,
    rates: Vec<SeriesRate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeriesRate {
    no: String,
    effective_date: NaiveDate,
    #[serde(default)]
    ask: Option<serde_json::Number>,
    #[serde(default)]
    mid: Option<serde_json::Number>,
}

/// NBP writes rates as JSON numbers with 4 places. The shortest decimal that reads
/// back as the same double is that 4-place literal, so going through its text gives
/// the published rate exactly, with no float arithmetic.
fn published_rate(n: &serde_json::Number) -> Option<Decimal> {
    let mut d: Decimal = n.to_string().parse().ok()?;
    d.rescale(4);
    Some(d)
}

impl NbpClient {
    /// Base URL from `MAI_FLEET_NBP_URL`, else NBP's own.
    pub fn from_env() -> Self {
        let base =
            crate::env::text("MAI_FLEET_NBP_URL").unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        Self::new(&base)
    }

    pub fn new(base_url: &str) -> Self {
        let http = crate::http::client();
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Every table of `table` published from `from` to `to`, in 93-day requests.
    /// A range without any table (a long weekend) is an empty answer, not an error.
    pub async fn fetch_range(
        &self,
        table: RateTable,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Rate>, NbpError> {
        let mut rates = Vec::new();
        let mut start = from;
        while start <= to {
            let end = (start + chrono::Duration::days(MAX_RANGE_DAYS - 1)).min(to);
            rates.extend(self.fetch_one_range(table, start, end).await?);
            start = end + chrono::Duration::days(1);
        }
        Ok(rates)
    }

    async fn fetch_one_range(
        &self,
        table: RateTable,
        start: NaiveDate,
        end: NaiveDate,
    ) -> Result<Vec<Rate>, NbpError> {
        let url = format!(
            "{}/exchangerates/rates/{}/usd/{start}/{end}/?format=json",
            self.base_url,
            table.code().to_ascii_lowercase()
        );
        let response = self
            .http
            .get(&url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|source| NbpError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(Vec::new());
        }
        if status != 200 {
            return Err(NbpError::Status { url, status });
        }
        let body = response
            .bytes()
            .await
            .map_err(|source| NbpError::Unreachable {
                url: url.clone(),
                source,
            })?;
        parse_series(table, &body).map_err(|detail| NbpError::Malformed { url, detail })
    }
}

fn parse_series(table: RateTable, body: &[u8]) -> Result<Vec<Rate>, String> {
    let series: Series = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !series.table.eq_ignore_ascii_case(table.code()) || !series.code.eq_ignore_ascii_case("USD")
    {
        return Err(format!(
            "asked for USD in table {}, got {} in table {}",
            table, series.code, series.table
        ));
    }
    series
        .rates
        .into_iter()
        .map(|r| {
            let value = match table {
                RateTable::C => r.ask.as_ref(),
                RateTable::A => r.mid.as_ref(),
            }
            .and_then(published_rate);
            match value {
                Some(rate) if rate > Decimal::ZERO => Ok(Rate {
                    rate_table: TableCode(table),
                    effective_date: r.effective_date,
                    table_no: r.no,
                    rate,
                }),
                _ => Err(format!(
                    "table {} of {} has no positive {}",
                    r.no,
                    r.effective_date,
                    if table == RateTable::C { "ask" } else { "mid" }
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_answer_exactly() {
        let body = br#"{"table":"C","currency":"dolar ameryka\u0144ski","code":"USD","rates":[{"no":"143/C/NBP/2025","effectiveDate":"2025-07-25","bid":3.5856,"ask":3.6580}]}"#;
        let rates = parse_series(RateTable::C, body).unwrap();
        assert_eq!(rates.len(), 1);
        assert_eq!(rates[0].rate.to_string(), "3.6580");
        assert_eq!(rates[0].table_no, "143/C/NBP/2025");
        assert!(parse_series(RateTable::A, body).is_err());
        let a = br#"{"table":"A","code":"USD","rates":[{"no":"143/A/NBP/2025","effectiveDate":"2025-07-25","mid":3.6183}]}"#;
        assert_eq!(
            parse_series(RateTable::A, a).unwrap()[0].rate.to_string(),
            "3.6183"
        );
    }
}
