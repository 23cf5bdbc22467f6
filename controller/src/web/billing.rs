//! The billing page for a month, its CSV and JSON (the same figures), and closing
//! a month from the page.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::Value;

use super::auth::Authed;
use super::tenants::parse_month;
use super::view::{describe_rate, Chrome};
use super::{render, AppState, WebError};
use crate::billing::money::{format_count, format_pln, format_usd};
use crate::billing::{self as bill, fleet_today, MonthReport};

#[derive(Deserialize)]
pub struct MonthQuery {
    month: Option<String>,
}

pub struct LineView {
    pub tenant: String,
    pub in_spec: bool,
    pub tokens: String,
    pub requests: String,
    pub raw: String,
    pub markup: String,
    pub client: String,
    pub profit: String,
    pub pln: String,
    pub rate: String,
    pub adjustment: String,
}

#[derive(Template)]
#[template(path = "billing.html")]
struct BillingPage {
    chrome: Chrome,
    month: String,
    prev_month: String,
    next_month: String,
    notice: Option<String>,
    rate_note: String,
    closed: Option<String>,
    closable: bool,
    has_adjustments: bool,
    lines: Vec<LineView>,
    total_tokens: String,
    total_requests: String,
    total_raw: String,
    total_client: String,
    total_profit: String,
    total_pln: String,
    total_adjustment: String,
}

async fn report(state: &AppState, month: Option<&str>) -> Result<MonthReport, WebError> {
    let month = parse_month(month)?;
    let today = fleet_today();
    let key = format!("billing:{month}:{}:{today}", state.rate_table);
    let store = &state.store;
    Ok(state
        .cache
        .get_or_load(key, || {
            bill::month_report(store, month, state.rate_table, today)
        })
        .await?)
}

pub async fn page(
    State(state): State<AppState>,
    authed: Authed,
    Query(q): Query<MonthQuery>,
) -> Result<Response, WebError> {
    let r = report(&state, q.month.as_deref()).await?;
    let t = r.totals();
    let lines: Vec<LineView> = r
        .lines
        .iter()
        .map(|l| LineView {
            tenant: l.tenant.clone(),
            in_spec: l.in_spec,
            tokens: format_count(l.tokens),
            requests: format_count(l.requests),
            raw: format_usd(l.raw_cost_usd()),
            markup: format!(
                "{}×{}",
                l.markup_rate.normalize(),
                if l.markup_changed { " (changed)" } else { "" }
            ),
            client: format_usd(l.client_cost_usd()),
            profit: format_usd(l.profit_usd()),
            pln: l
                .client_cost_pln
                .map(format_pln)
                .unwrap_or_else(|| "USD only".into()),
            rate: l.rate.as_ref().map(describe_rate).unwrap_or_default(),
            adjustment: l
                .adjustment
                .as_ref()
                .map(|a| {
                    let pln = a
                        .client_cost_pln
                        .map(|p| format!(" ({})", format_pln(p)))
                        .unwrap_or_default();
                    format!("{:+} tokens, {}{pln}", a.tokens, format_usd(a.client_cost))
                })
                .unwrap_or_default(),
        })
        .collect();
    render(&BillingPage {
        chrome: Chrome {
            user: authed.user,
            csrf: authed.csrf,
            nav: "billing",
        },
        month: r.month.to_string(),
        prev_month: r.month.prev().to_string(),
        next_month: r.month.next().to_string(),
        notice: r.notice.clone(),
        rate_note: r.rate.as_ref().map_or_else(String::new, |rate| {
            format!(
                "Rate for {}: {} ({})",
                r.rate_day,
                describe_rate(rate),
                r.rate_table.describe()
            )
        }),
        closed: r.closed.as_ref().map(|c| {
            format!(
                "closed {} by {}",
                c.closed_at.format("%Y-%m-%d %H:%M UTC"),
                c.closed_by
            )
        }),
        closable: r.closed.is_none() && r.month.last_day() < fleet_today(),
        has_adjustments: r.lines.iter().any(|l| l.adjustment.is_some()),
        lines,
        total_tokens: format_count(t.tokens),
        total_requests: format_count(t.requests),
        total_raw: format_usd(t.raw_cost_usd),
        total_client: format_usd(t.client_cost_usd),
        total_profit: format_usd(t.profit_usd),
        total_pln: t
            .client_cost_pln
            .map(format_pln)
            .unwrap_or_else(|| "USD only".into()),
        total_adjustment: format_usd(t.adjustment_client_cost_usd),
    })
}

pub async fn csv(
    State(state): State<AppState>,
    _authed: Authed,
    Query(q): Query<MonthQuery>,
) -> Result<Response, WebError> {
    let r = report(&state, q.month.as_deref()).await?;
    let disposition = format!("attachment; filename=\"mai-fleet-billing-{}.csv\"", r.month);
    let mut res = r.to_csv().into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

pub async fn api(
    State(state): State<AppState>,
    _authed: Authed,
    Query(q): Query<MonthQuery>,
) -> Result<Json<Value>, WebError> {
    Ok(Json(report(&state, q.month.as_deref()).await?.to_json()))
}

#[derive(Deserialize)]
pub struct CloseForm {
    csrf: String,
    month: String,
}

pub async fn close(
    State(state): State<AppState>,
    authed: Authed,
    Form(f): Form<CloseForm>,
) -> Result<Response, WebError> {
    authed.check_csrf(&f.csrf)?;
    authed.require_admin()?;
    let month = parse_month(Some(&f.month))?;
    bill::close_month(
        &state.store,
        month,
        state.rate_table,
        fleet_today(),
        &format!("{} (dashboard)", authed.user),
    )
    .await?;
    Ok(Redirect::to(&format!("/billing?month={month}")).into_response())
}
