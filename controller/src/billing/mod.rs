//! Fleet billing: per tenant and calendar month (the tenant's local days), tokens,
//! requests, raw cost as OpenRouter charged it, client cost = raw × the markup in
//! force on each day, profit, and PLN at the NBP rate of the month's billing day.
//! Closed months are frozen; later usage shows as an adjustment.
//! Rounding rules: [`money`] and docs/billing.md.

pub mod money;
pub mod month;

use chrono::{NaiveDate, Utc};
use chrono_tz::Europe::Warsaw;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};

pub use month::Month;

use crate::rates::{Rate, RateTable};
use crate::store::billing::{Close, ClosedLine, TenantUsage};
use crate::store::{Store, StoreError};
use money::{pln_grosze, usd_micros};

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{month} is already closed (at {closed_at} by {closed_by}); a closed month is never recomputed")]
    AlreadyClosed {
        month: Month,
        closed_at: String,
        closed_by: String,
    },
    #[error("{month} has not ended yet (it ends {last_day}); close it from {next} on")]
    NotEnded {
        month: Month,
        last_day: NaiveDate,
        next: NaiveDate,
    },
}

/// One tenant's month. Amounts are exact; [`Line::to_json`] rounds them.
#[derive(Debug, Clone)]
pub struct Line {
    pub tenant: String,
    pub in_spec: bool,
    pub tokens: i64,
    pub requests: i64,
    pub raw_cost: Decimal,
    pub markup_rate: Decimal,
    pub markup_changed: bool,
    pub client_cost: Decimal,
    pub rate: Option<Rate>,
    /// Rounded to the grosz.
    pub client_cost_pln: Option<Decimal>,
    /// For a closed month: what arrived after closing (current minus frozen).
    pub adjustment: Option<Adjustment>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adjustment {
    pub tokens: i64,
    pub requests: i64,
    pub raw_cost: Decimal,
    pub client_cost: Decimal,
    pub client_cost_pln: Option<Decimal>,
}

impl Line {
    pub fn raw_cost_usd(&self) -> Decimal {
        usd_micros(self.raw_cost)
    }
    pub fn client_cost_usd(&self) -> Decimal {
        usd_micros(self.client_cost)
    }
    /// Client minus raw as presented, so the three figures add up on paper.
    pub fn profit_usd(&self) -> Decimal {
        self.client_cost_usd() - self.raw_cost_usd()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tenant": self.tenant,
            "in_spec": self.in_spec,
            "tokens": self.tokens,
            "requests": self.requests,
            "raw_cost_usd": self.raw_cost_usd().to_string(),
            "markup_rate": self.markup_rate.normalize().to_string(),
            "markup_changed_in_month": self.markup_changed,
            "client_cost_usd": self.client_cost_usd().to_string(),
            "profit_usd": self.profit_usd().to_string(),
            "rate_pln": self.rate.as_ref().map(|r| money::format_rate(r.rate)),
            "rate_date": self.rate.as_ref().map(|r| r.effective_date.to_string()),
            "rate_table": self.rate.as_ref().map(|r| r.table_no.clone()),
            "client_cost_pln": self.client_cost_pln.map(|d| d.to_string()),
            "adjustment": self.adjustment.as_ref().map(|a| json!({
                "tokens": a.tokens,
                "requests": a.requests,
                "raw_cost_usd": usd_micros(a.raw_cost).to_string(),
                "client_cost_usd": usd_micros(a.client_cost).to_string(),
                "profit_usd": (usd_micros(a.client_cost) - usd_micros(a.raw_cost)).to_string(),
                "client_cost_pln": a.client_cost_pln.map(|d| d.to_string()),
            })),
        })
    }
}

/// Sums of the lines as presented (so a total equals the sum of its column).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub tokens: i64,
    pub requests: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub raw_cost_usd: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub client_cost_usd: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub profit_usd: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub client_cost_pln: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub adjustment_client_cost_usd: Decimal,
}

#[derive(Debug, Clone)]
pub struct MonthReport {
    pub month: Month,
    pub rate_table: RateTable,
    /// The day whose rate converts the month: its last day, or today while it runs.
    pub rate_day: NaiveDate,
    pub rate: Option<Rate>,
    pub closed: Option<Close>,
    pub lines: Vec<Line>,
    /// Why amounts are in USD only, when they are.
    pub notice: Option<String>,
}

impl MonthReport {
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            client_cost_pln: self.rate.as_ref().map(|_| Decimal::ZERO),
            ..Totals::default()
        };
        for l in &self.lines {
            t.tokens += l.tokens;
            t.requests += l.requests;
            t.raw_cost_usd += l.raw_cost_usd();
            t.client_cost_usd += l.client_cost_usd();
            t.profit_usd += l.profit_usd();
            t.client_cost_pln = match (t.client_cost_pln, l.client_cost_pln) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
            if let Some(a) = &l.adjustment {
                t.adjustment_client_cost_usd += usd_micros(a.client_cost);
            }
        }
        t
    }

    pub fn to_json(&self) -> Value {
        json!({
            "month": self.month,
            "currency_rate": {
                "source": self.rate_table.describe(),
                "for_day": self.rate_day,
                "rate_pln": self.rate.as_ref().map(|r| money::format_rate(r.rate)),
                "rate_date": self.rate.as_ref().map(|r| r.effective_date),
                "rate_table": self.rate.as_ref().map(|r| r.table_no.clone()),
            },
            "closed": self.closed,
            "notice": self.notice,
            "tenants": self.lines.iter().map(Line::to_json).collect::<Vec<_>>(),
            "totals": self.totals(),
        })
    }

    /// The same figures as the JSON, one row per tenant and a total row.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "month,tenant,tokens,requests,raw_cost_usd,markup_rate,client_cost_usd,profit_usd,rate_pln,rate_date,rate_table,client_cost_pln,adjustment_tokens,adjustment_raw_cost_usd,adjustment_client_cost_usd,adjustment_client_cost_pln\n",
        );
        let opt = |d: Option<Decimal>| d.map(|d| d.to_string()).unwrap_or_default();
        for l in &self.lines {
            let a = l.adjustment.as_ref();
            let row = [
                self.month.to_string(),
                l.tenant.clone(),
                l.tokens.to_string(),
                l.requests.to_string(),
                l.raw_cost_usd().to_string(),
                l.markup_rate.normalize().to_string(),
                l.client_cost_usd().to_string(),
                l.profit_usd().to_string(),
                l.rate
                    .as_ref()
                    .map(|r| money::format_rate(r.rate))
                    .unwrap_or_default(),
                l.rate
                    .as_ref()
                    .map(|r| r.effective_date.to_string())
                    .unwrap_or_default(),
                l.rate
                    .as_ref()
                    .map(|r| r.table_no.clone())
                    .unwrap_or_default(),
                opt(l.client_cost_pln),
                a.map(|a| a.tokens.to_string()).unwrap_or_default(),
                opt(a.map(|a| usd_micros(a.raw_cost))),
                opt(a.map(|a| usd_micros(a.client_cost))),
                opt(a.and_then(|a| a.client_cost_pln)),
            ];
            push_csv_row(&mut out, &row);
        }
        let t = self.totals();
        let total = [
            self.month.to_string(),
            "TOTAL".to_string(),
            t.tokens.to_string(),
            t.requests.to_string(),
            t.raw_cost_usd.to_string(),
            String::new(),
            t.client_cost_usd.to_string(),
            t.profit_usd.to_string(),
            String::new(),
            String::new(),
            String::new(),
            opt(t.client_cost_pln),
            String::new(),
            String::new(),
            t.adjustment_client_cost_usd.to_string(),
            String::new(),
        ];
        push_csv_row(&mut out, &total);
        out
    }
}

fn push_csv_row(out: &mut String, fields: &[String]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if f.contains([',', '"', '\n']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push('\n');
}

/// Today in Warsaw: the fleet's business day (NBP's calendar).
pub fn fleet_today() -> NaiveDate {
    Utc::now().with_timezone(&Warsaw).date_naive()
}

/// The billing of a month as of `today`.
pub async fn month_report(
    store: &Store,
    month: Month,
    table: RateTable,
    today: NaiveDate,
) -> Result<MonthReport, BillingError> {
    let closed = store.month_close(month.first_day()).await?;
    let current = store
        .usage_by_tenant(month.first_day(), month.last_day())
        .await?;
    let rate_day = month.last_day().min(today);
    let (rate, lines) = match &closed {
        None => {
            let rate = store.rate_on(table, rate_day).await?;
            let lines = current
                .iter()
                .map(|u| live_line(u, rate.as_ref()))
                .collect();
            (rate, lines)
        }
        Some(_) => {
            // A closed month keeps the rate it was closed with.
            let lines = with_adjustments(&store.closed_lines(month.first_day()).await?, &current);
            let rate = lines.iter().find_map(|l: &Line| l.rate.clone());
            (rate, lines)
        }
    };
    let notice = match &rate {
        Some(_) => None,
        None => {
            let why = match store.last_rate_fetch(table).await? {
                Some(f) if !f.ok => format!(
                    " (last fetch at {}: {})",
                    f.started_at.format("%Y-%m-%d %H:%M UTC"),
                    f.detail
                ),
                _ => String::new(),
            };
            Some(format!(
                "USD only: no {} rate for {rate_day} or the {} days before it{why}",
                table.describe(),
                crate::rates::LOOKBACK_DAYS
            ))
        }
    };
    Ok(MonthReport {
        month,
        rate_table: table,
        rate_day,
        rate,
        closed,
        lines,
        notice,
    })
}

fn live_line(u: &TenantUsage, rate: Option<&Rate>) -> Line {
    Line {
        tenant: u.tenant.clone(),
        in_spec: u.in_spec,
        tokens: u.tokens,
        requests: u.requests,
        raw_cost: u.raw_cost,
        markup_rate: u.markup_rate,
        markup_changed: u.markup_changed,
        client_cost: u.client_cost,
        rate: rate.cloned(),
        client_cost_pln: rate.map(|r| pln_grosze(u.client_cost * r.rate)),
        adjustment: None,
    }
}

/// Frozen lines as they were closed, each with what changed since (if anything).
fn with_adjustments(frozen: &[ClosedLine], current: &[TenantUsage]) -> Vec<Line> {
    let mut lines: Vec<Line> = frozen
        .iter()
        .map(|f| {
            let rate = match (f.rate, f.rate_date, &f.rate_table_no) {
                (Some(rate), Some(effective_date), Some(no)) => Some(Rate {
                    rate_table: crate::rates::TableCode(table_of(no)),
                    effective_date,
                    table_no: no.clone(),
                    rate,
                }),
                _ => None,
            };
            let now = current.iter().find(|c| c.tenant == f.tenant);
            Line {
                tenant: f.tenant.clone(),
                in_spec: now.is_none_or(|c| c.in_spec),
                tokens: f.tokens,
                requests: f.requests,
                raw_cost: f.raw_cost,
                markup_rate: f.markup_rate,
                markup_changed: now.is_some_and(|c| c.markup_changed),
                client_cost: f.client_cost,
                adjustment: now.and_then(|c| {
                    adjustment(f.tokens, f.requests, f.raw_cost, f.client_cost, c, f.rate)
                }),
                rate,
                client_cost_pln: f.client_cost_pln,
            }
        })
        .collect();
    // Usage from a tenant that had none when the month was closed is all adjustment.
    for c in current {
        if !frozen.iter().any(|f| f.tenant == c.tenant) {
            if let Some(adj) = adjustment(0, 0, Decimal::ZERO, Decimal::ZERO, c, None) {
                lines.push(Line {
                    tenant: c.tenant.clone(),
                    in_spec: c.in_spec,
                    tokens: 0,
                    requests: 0,
                    raw_cost: Decimal::ZERO,
                    markup_rate: c.markup_rate,
                    markup_changed: c.markup_changed,
                    client_cost: Decimal::ZERO,
                    rate: None,
                    client_cost_pln: None,
                    adjustment: Some(adj),
                });
            }
        }
    }
    lines.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    lines
}

fn adjustment(
    tokens: i64,
    requests: i64,
    raw: Decimal,
    client: Decimal,
    now: &TenantUsage,
    rate: Option<Decimal>,
) -> Option<Adjustment> {
    let a = Adjustment {
        tokens: now.tokens - tokens,
        requests: now.requests - requests,
        raw_cost: now.raw_cost - raw,
        client_cost: now.client_cost - client,
        client_cost_pln: rate.map(|r| pln_grosze((now.client_cost - client) * r)),
    };
    let nothing =
        a.tokens == 0 && a.requests == 0 && a.raw_cost.is_zero() && a.client_cost.is_zero();
    (!nothing).then_some(a)
}

fn table_of(table_no: &str) -> RateTable {
    if table_no.contains("/A/") {
        RateTable::A
    } else {
        RateTable::C
    }
}

/// Freezes `month` as billed now. Only a month that has ended (in Warsaw) closes.
pub async fn close_month(
    store: &Store,
    month: Month,
    table: RateTable,
    today: NaiveDate,
    closed_by: &str,
) -> Result<MonthReport, BillingError> {
    if month.last_day() >= today {
        return Err(BillingError::NotEnded {
            month,
            last_day: month.last_day(),
            next: month.next().first_day(),
        });
    }
    let mut report = month_report(store, month, table, today).await?;
    if let Some(c) = report.closed {
        return Err(BillingError::AlreadyClosed {
            month,
            closed_at: c.closed_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            closed_by: c.closed_by,
        });
    }
    let frozen: Vec<ClosedLine> = report
        .lines
        .iter()
        .map(|l| ClosedLine {
            tenant: l.tenant.clone(),
            tokens: l.tokens,
            requests: l.requests,
            raw_cost: l.raw_cost,
            client_cost: l.client_cost,
            markup_rate: l.markup_rate,
            rate: l.rate.as_ref().map(|r| r.rate),
            rate_date: l.rate.as_ref().map(|r| r.effective_date),
            rate_table_no: l.rate.as_ref().map(|r| r.table_no.clone()),
            client_cost_pln: l.client_cost_pln,
        })
        .collect();
    // The frozen lines are this report's lines: it only needs its close.
    report.closed = Some(
        store
            .close_month(month.first_day(), closed_by, table.code(), &frozen)
            .await?
            .ok_or_else(|| BillingError::AlreadyClosed {
                month,
                closed_at: "just now".into(),
                closed_by: "another controller".into(),
            })?,
    );
    Ok(report)
}
