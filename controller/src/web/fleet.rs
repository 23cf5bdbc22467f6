//! The fleet page: a row per tenant, totals, sortable, refreshed in place.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Json;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Authed;
use super::view::{age, describe_rate, usd_pln, Chrome};
use super::{render, AppState, WebError};
use crate::billing::fleet_today;
use crate::billing::money::{format_count, format_usd, pln_grosze, usd_micros};
use crate::rates::Rate;
use crate::store::dashboard::FleetRow;

#[derive(Deserialize, Default)]
pub struct SortQuery {
    sort: Option<String>,
    dir: Option<String>,
}

pub struct RowView {
    pub tenant: String,
    pub host: String,
    pub state: String,
    pub tracking: mai_fleet_core::Tracking,
    pub reasons: String,
    pub in_spec: bool,
    pub today_tokens: String,
    pub today_cost: String,
    pub month_usd: String,
    pub month_pln: String,
    /// Width of the monthly-limit bar in percent (capped at 100) and its label.
    pub limit_pct: u32,
    pub limit_text: String,
    pub limit_class: &'static str,
    pub data_age: String,
    pub firing_alerts: i64,
}

#[derive(Template)]
#[template(path = "fleet_table.html")]
pub struct FleetTable {
    pub rows: Vec<RowView>,
    pub sort: String,
    pub dir: String,
    pub total_today_tokens: String,
    pub total_today_cost: String,
    pub total_month_usd: String,
    pub total_month_pln: String,
    pub inactive: usize,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    chrome: Chrome,
    /// The rendered [`FleetTable`], the same HTML the refresh fetches.
    table_html: String,
    rate_note: String,
}

const SORT_KEYS: [&str; 9] = [
    "tenant",
    "host",
    "state",
    "tracking",
    "today_tokens",
    "today_cost",
    "month_cost",
    "limit",
    "data_age",
];

fn sort_rows(rows: &mut [FleetRow], key: &str, desc: bool) {
    let used = |r: &FleetRow| match r.monthly_limit_usd {
        Some(l) if !l.is_zero() => r.month_client_cost / l,
        _ => Decimal::MIN,
    };
    match key {
        "host" => rows.sort_by(|a, b| a.host.cmp(&b.host)),
        "state" => rows.sort_by(|a, b| a.container_state.cmp(&b.container_state)),
        "tracking" => rows.sort_by_key(|a| a.tracking),
        "today_tokens" => rows.sort_by_key(|r| r.today_tokens),
        "today_cost" => rows.sort_by_key(|r| r.today_client_cost),
        "month_cost" => rows.sort_by_key(|r| r.month_client_cost),
        "limit" => rows.sort_by_key(|r| used(r)),
        "data_age" => rows.sort_by_key(|r| r.data_age_s.unwrap_or(i64::MAX)),
        _ => rows.sort_by(|a, b| a.tenant.cmp(&b.tenant)),
    }
    if desc {
        rows.reverse();
    }
}

async fn load(
    state: &AppState,
    q: &SortQuery,
) -> Result<(Vec<FleetRow>, Option<Rate>, String, String), WebError> {
    let store = &state.store;
    let mut rows = state
        .cache
        .get_or_load("fleet".into(), || store.fleet_rows())
        .await?;
    let sort = q
        .sort
        .as_deref()
        .filter(|s| SORT_KEYS.contains(s))
        .unwrap_or("tenant")
        .to_string();
    let dir = if q.dir.as_deref() == Some("desc") {
        "desc"
    } else {
        "asc"
    }
    .to_string();
    sort_rows(&mut rows, &sort, dir == "desc");
    let rate = state.store.rate_on(state.rate_table, fleet_today()).await?;
    Ok((rows, rate, sort, dir))
}

fn table(rows: &[FleetRow], rate: Option<&Rate>, sort: String, dir: String) -> FleetTable {
    let mut today_tokens = 0;
    let mut today_cost = Decimal::ZERO;
    let mut month = Decimal::ZERO;
    let mut month_pln = Decimal::ZERO;
    let views = rows
        .iter()
        .map(|r| {
            today_tokens = r.today_tokens.saturating_add(today_tokens);
            today_cost += usd_micros(r.today_client_cost);
            month += usd_micros(r.month_client_cost);
            if let Some(rate) = rate {
                month_pln += pln_grosze(r.month_client_cost * rate.rate);
            }
            let (month_usd, month_pln) = usd_pln(r.month_client_cost, rate);
            let (limit_pct, limit_text, limit_class) = match r.monthly_limit_usd {
                Some(limit) if limit > Decimal::ZERO => {
                    let pct = (r.month_client_cost * Decimal::from(100) / limit).round();
                    let pct: u32 = pct.try_into().unwrap_or(u32::MAX);
                    let class = if pct >= 100 {
                        "over"
                    } else if pct >= 80 {
                        "near"
                    } else {
                        "ok"
                    };
                    (
                        pct.min(100),
                        format!("{pct}% of {}", format_usd(limit)),
                        class,
                    )
                }
                _ => (0, "no limit".to_string(), "none"),
            };
            RowView {
                tenant: r.tenant.clone(),
                host: r.host.clone().unwrap_or_default(),
                state: r
                    .container_state
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
                tracking: r.tracking,
                reasons: r.reasons.join("; "),
                in_spec: r.in_spec,
                today_tokens: format_count(r.today_tokens),
                today_cost: format_usd(r.today_client_cost),
                month_usd,
                month_pln,
                limit_pct,
                limit_text,
                limit_class,
                data_age: age(r.data_age_s),
                firing_alerts: r.firing_alerts,
            }
        })
        .collect();
    FleetTable {
        rows: views,
        sort,
        dir,
        total_today_tokens: format_count(today_tokens),
        total_today_cost: format_usd(today_cost),
        total_month_usd: format_usd(month),
        total_month_pln: rate
            .map(|_| crate::billing::money::format_pln(month_pln))
            .unwrap_or_default(),
        inactive: rows.iter().filter(|r| !r.tracking.is_active()).count(),
    }
}

fn rate_note(state: &AppState, rate: Option<&Rate>) -> String {
    match rate {
        Some(r) => format!("PLN at {}", describe_rate(r)),
        None => format!(
            "USD only: no {} rate for today or the {} days before it",
            state.rate_table.describe(),
            crate::rates::LOOKBACK_DAYS
        ),
    }
}

pub async fn page(
    State(state): State<AppState>,
    authed: Authed,
    Query(q): Query<SortQuery>,
) -> Result<Response, WebError> {
    let (rows, rate, sort, dir) = load(&state, &q).await?;
    render(&FleetPage {
        rate_note: rate_note(&state, rate.as_ref()),
        table_html: askama::Template::render(&table(&rows, rate.as_ref(), sort, dir))?,
        chrome: Chrome {
            user: authed.user,
            csrf: authed.csrf,
            nav: "fleet",
        },
    })
}

/// The table alone, for the page's 30-second refresh.
pub async fn rows_fragment(
    State(state): State<AppState>,
    _authed: Authed,
    Query(q): Query<SortQuery>,
) -> Result<Response, WebError> {
    let (rows, rate, sort, dir) = load(&state, &q).await?;
    render(&table(&rows, rate.as_ref(), sort, dir))
}

pub async fn api(
    State(state): State<AppState>,
    _authed: Authed,
    Query(q): Query<SortQuery>,
) -> Result<Json<Value>, WebError> {
    let (rows, rate, _, _) = load(&state, &q).await?;
    let tenants: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            v["month_client_cost_pln"] = json!(rate
                .as_ref()
                .map(|rate| pln_grosze(r.month_client_cost * rate.rate).to_string()));
            v
        })
        .collect();
    Ok(Json(json!({
        "rate": rate,
        "rate_note": rate_note(&state, rate.as_ref()),
        "tenants": tenants,
    })))
}
