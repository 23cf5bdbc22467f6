//! A tenant's page: 30 days of client cost, per-user and per-model usage of a
//! chosen month, its health and apply history.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Authed;
use super::view::{describe_rate, usd_pln, Chrome};
use super::{render, AppState, WebError};
use crate::billing::money::{format_count, format_usd, format_usd_or_dash, pln_grosze, usd_micros};
use crate::billing::{fleet_today, Month};
use crate::rates::Rate;
use crate::store::billing::{Breakdown, DayLine, UsageLine};
use crate::store::dashboard::{ApplyEvent, HealthChange, TenantRecord};
use crate::store::keys::ReconcileDay;

#[derive(Deserialize)]
pub struct MonthQuery {
    month: Option<String>,
}

pub fn parse_month(q: Option<&str>) -> Result<Month, WebError> {
    Month::parse_or_current(q).map_err(|e| WebError::BadRequest(e.0))
}

#[derive(Clone)]
struct TenantData {
    record: Option<TenantRecord>,
    month: Month,
    days: Vec<DayLine>,
    users: Vec<UsageLine>,
    models: Vec<UsageLine>,
    health: Vec<HealthChange>,
    applies: Vec<ApplyEvent>,
    rate: Option<Rate>,
    /// OpenRouter's daily ledger against the store, for the month.
    ledger: Vec<ReconcileDay>,
}

async fn load(state: &AppState, id: &str, month: Month) -> Result<TenantData, WebError> {
    let key = format!("tenant:{id}:{month}:{}:{}", state.rate_table, fleet_today());
    state
        .cache
        .get_or_load(key, || load_fresh(state, id, month))
        .await
}

async fn load_fresh(state: &AppState, id: &str, month: Month) -> Result<TenantData, WebError> {
    let store = &state.store;
    if !store.tenant_known(id).await? {
        return Err(WebError::NotFound(format!(
            "no tenant `{id}` in this fleet"
        )));
    }
    let today = fleet_today();
    let (from, to) = (month.first_day(), month.last_day());
    Ok(TenantData {
        record: store.tenant_record(id).await?,
        month,
        days: store
            .usage_per_day(id, today - chrono::Duration::days(29), today)
            .await?,
        users: store.usage_breakdown(id, Breakdown::User, from, to).await?,
        models: store
            .usage_breakdown(id, Breakdown::Model, from, to)
            .await?,
        health: store.health_history(id, 50).await?,
        applies: store.apply_history(id, 20).await?,
        rate: store.rate_on(state.rate_table, to.min(today)).await?,
        ledger: store.reconcile_days(id, from, to).await?,
    })
}

pub struct LineView {
    pub key: String,
    pub tokens: String,
    pub requests: String,
    pub raw: String,
    pub client: String,
    pub pln: String,
}

fn line_views(lines: &[UsageLine], rate: Option<&Rate>) -> Vec<LineView> {
    lines
        .iter()
        .map(|l| {
            let (client, pln) = usd_pln(l.client_cost, rate);
            LineView {
                key: l.key.clone(),
                tokens: format_count(l.tokens),
                requests: format_count(l.requests),
                raw: format_usd(l.raw_cost),
                client,
                pln,
            }
        })
        .collect()
}

pub struct Section {
    pub title: &'static str,
    pub key: &'static str,
    pub lines: Vec<LineView>,
}

pub struct HealthView {
    pub at: String,
    pub host: String,
    pub tracking: mai_fleet_core::Tracking,
    pub reasons: String,
}

pub struct ApplyView {
    pub at: String,
    pub run: i64,
    pub actor: String,
    pub action: String,
    pub status: String,
    pub detail: String,
    pub duration: String,
}

/// A day of OpenRouter's ledger against the store, as the page shows it.
pub struct LedgerView {
    pub day: String,
    pub openrouter: String,
    pub recorded: String,
    pub difference: String,
    /// Beyond a cent: worth a look.
    pub differs: bool,
}

fn ledger_views(days: &[ReconcileDay]) -> Vec<LedgerView> {
    days.iter()
        .map(|d| LedgerView {
            day: d.day.to_string(),
            openrouter: format_usd_or_dash(d.openrouter_usd),
            recorded: format_usd_or_dash(d.recorded_usd),
            difference: format_usd(d.difference_usd),
            differs: d.difference_usd.abs() >= rust_decimal::Decimal::new(1, 2),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "tenant.html")]
struct TenantPage {
    chrome: Chrome,
    id: String,
    record: Option<TenantRecord>,
    limit: String,
    month: String,
    prev_month: String,
    next_month: String,
    rate_note: String,
    chart: String,
    month_tokens: String,
    month_client: String,
    month_pln: String,
    sections: Vec<Section>,
    health: Vec<HealthView>,
    applies: Vec<ApplyView>,
    /// Empty when OpenRouter's ledger holds nothing for the tenant's keys.
    ledger: Vec<LedgerView>,
}

pub async fn page(
    State(state): State<AppState>,
    authed: Authed,
    Path(id): Path<String>,
    Query(q): Query<MonthQuery>,
) -> Result<Response, WebError> {
    let month = parse_month(q.month.as_deref())?;
    let d = load(&state, &id, month).await?;
    let rate = d.rate.as_ref();
    let month_tokens: i64 = d
        .models
        .iter()
        .fold(0i64, |acc, l| acc.saturating_add(l.tokens));
    let month_client: rust_decimal::Decimal = d.models.iter().map(|l| l.client_cost).sum();
    let (month_client, month_pln) = usd_pln(month_client, rate);
    render(&TenantPage {
        chrome: Chrome {
            user: authed.user,
            csrf: authed.csrf,
            nav: "fleet",
        },
        limit: d
            .record
            .as_ref()
            .and_then(|r| r.monthly_limit_usd)
            .map_or("none".into(), format_usd),
        record: d.record,
        month: d.month.to_string(),
        prev_month: d.month.prev().to_string(),
        next_month: d.month.next().to_string(),
        rate_note: rate.map_or_else(
            || {
                format!(
                    "USD only: no {} rate for this month",
                    state.rate_table.describe()
                )
            },
            |r| format!("PLN at {}", describe_rate(r)),
        ),
        chart: super::chart::daily_svg(&d.days),
        month_tokens: format_count(month_tokens),
        month_client,
        month_pln,
        sections: vec![
            Section {
                title: "Per user",
                key: "User",
                lines: line_views(&d.users, rate),
            },
            Section {
                title: "Per model",
                key: "Model",
                lines: line_views(&d.models, rate),
            },
        ],
        health: d
            .health
            .iter()
            .map(|h| HealthView {
                at: h.observed_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                host: h.host.clone(),
                tracking: h.tracking,
                reasons: h.reasons.join("; "),
            })
            .collect(),
        applies: d
            .applies
            .iter()
            .map(|a| ApplyView {
                at: a.recorded_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                run: a.run_id,
                actor: a.actor.clone(),
                action: a.action.clone(),
                status: a.status.clone(),
                detail: a.detail.clone(),
                duration: format!("{:.1} s", a.duration_ms as f64 / 1000.0),
            })
            .collect(),
        ledger: if d.ledger.iter().any(|l| l.openrouter_usd.is_some()) {
            ledger_views(&d.ledger)
        } else {
            Vec::new()
        },
        id,
    })
}

fn lines_json(lines: &[UsageLine], rate: Option<&Rate>) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            json!({
                "key": l.key,
                "tokens": l.tokens,
                "requests": l.requests,
                "raw_cost_usd": usd_micros(l.raw_cost).to_string(),
                "client_cost_usd": usd_micros(l.client_cost).to_string(),
                "client_cost_pln": rate.map(|r| pln_grosze(l.client_cost * r.rate).to_string()),
            })
        })
        .collect()
}

pub async fn api(
    State(state): State<AppState>,
    _authed: Authed,
    Path(id): Path<String>,
    Query(q): Query<MonthQuery>,
) -> Result<Json<Value>, WebError> {
    let month = parse_month(q.month.as_deref())?;
    let d = load(&state, &id, month).await?;
    let rate = d.rate.as_ref();
    Ok(Json(json!({
        "tenant": id,
        "record": d.record,
        "month": d.month,
        "rate": d.rate,
        "days": d.days.iter().map(|x| json!({
            "date": x.day, "tokens": x.tokens, "requests": x.requests,
            "raw_cost_usd": usd_micros(x.raw_cost).to_string(),
            "client_cost_usd": usd_micros(x.client_cost).to_string(),
        })).collect::<Vec<_>>(),
        "users": lines_json(&d.users, rate),
        "models": lines_json(&d.models, rate),
        "health_history": d.health,
        "apply_history": d.applies,
        "openrouter_ledger": d.ledger,
    })))
}
