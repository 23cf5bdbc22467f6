//! The alerts page: what fires and why, silences, and the form to add one.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Authed;
use super::view::Chrome;
use super::{render, AppState, WebError};
use crate::alerts::Rule;
use crate::store::alerts::{AlertRow, SilenceRow};

#[derive(Deserialize)]
pub struct AlertsQuery {
    tenant: Option<String>,
}

pub struct AlertView {
    pub state: String,
    pub rule: String,
    pub tenant: String,
    pub since: String,
    pub summary: String,
    pub notified: String,
}

pub struct SilenceView {
    pub id: i64,
    pub matcher: String,
    pub until: String,
    pub by: String,
    pub comment: String,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    chrome: Chrome,
    tenant: String,
    alerts: Vec<AlertView>,
    silences: Vec<SilenceView>,
    rules: Vec<&'static str>,
}

fn views(rows: &[AlertRow], tenant: Option<&str>) -> Vec<AlertView> {
    rows.iter()
        .filter(|a| tenant.is_none_or(|t| a.tenant_id.as_deref() == Some(t)))
        .map(|a| AlertView {
            state: a.state.clone(),
            rule: a.rule.clone(),
            tenant: a.tenant_id.clone().unwrap_or_default(),
            since: a
                .fired_at
                .unwrap_or(a.active_since)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string(),
            summary: a.annotations["summary"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            notified: a
                .last_notified_at
                .map(|t| {
                    format!(
                        "{} {}",
                        a.notified_state.as_deref().unwrap_or(""),
                        t.format("%H:%M:%S")
                    )
                })
                .unwrap_or_else(|| "not yet".into()),
        })
        .collect()
}

fn silence_views(rows: &[SilenceRow]) -> Vec<SilenceView> {
    rows.iter()
        .map(|s| SilenceView {
            id: s.id,
            matcher: match (&s.tenant_id, &s.rule) {
                (Some(t), Some(r)) => format!("tenant {t}, rule {r}"),
                (Some(t), None) => format!("tenant {t}"),
                (None, Some(r)) => format!("rule {r}"),
                (None, None) => String::new(),
            },
            until: s.expires_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            by: s.created_by.clone(),
            comment: s.comment.clone(),
        })
        .collect()
}

pub async fn page(
    State(state): State<AppState>,
    authed: Authed,
    Query(q): Query<AlertsQuery>,
) -> Result<Response, WebError> {
    let alerts = state.store.alerts_listed(true).await?;
    let silences = state.store.silences(true).await?;
    let tenant = q.tenant.filter(|t| !t.is_empty());
    render(&AlertsPage {
        chrome: Chrome {
            user: authed.user,
            csrf: authed.csrf,
            nav: "alerts",
        },
        alerts: views(&alerts, tenant.as_deref()),
        silences: silence_views(&silences),
        tenant: tenant.unwrap_or_default(),
        rules: Rule::ALL.iter().map(|r| r.name()).collect(),
    })
}

pub async fn api(State(state): State<AppState>, _authed: Authed) -> Result<Json<Value>, WebError> {
    Ok(Json(json!({
        "alerts": state.store.alerts_listed(true).await?,
        "silences": state.store.silences(true).await?,
    })))
}

#[derive(Deserialize)]
pub struct SilenceForm {
    csrf: String,
    tenant: String,
    rule: String,
    duration: String,
    comment: String,
}

pub async fn silence(
    State(state): State<AppState>,
    authed: Authed,
    Form(f): Form<SilenceForm>,
) -> Result<Response, WebError> {
    authed.check_csrf(&f.csrf)?;
    authed.require_admin()?;
    let tenant = Some(f.tenant.trim()).filter(|t| !t.is_empty());
    let rule = match f.rule.trim() {
        "" => None,
        r => Some(
            r.parse::<Rule>()
                .map_err(|e| WebError::BadRequest(e.to_string()))?,
        ),
    };
    if tenant.is_none() && rule.is_none() {
        return Err(WebError::BadRequest(
            "say what to silence: a tenant, a rule, or both".into(),
        ));
    }
    let d = crate::duration::parse(&f.duration).map_err(|e| WebError::BadRequest(e.0))?;
    state
        .store
        .add_silence(
            tenant,
            rule,
            d.as_secs() as i64,
            &format!("{} (dashboard)", authed.user),
            f.comment.trim(),
        )
        .await?;
    Ok(Redirect::to("/alerts").into_response())
}

#[derive(Deserialize)]
pub struct UnsilenceForm {
    csrf: String,
    id: i64,
}

pub async fn unsilence(
    State(state): State<AppState>,
    authed: Authed,
    Form(f): Form<UnsilenceForm>,
) -> Result<Response, WebError> {
    authed.check_csrf(&f.csrf)?;
    authed.require_admin()?;
    if !state.store.end_silence(f.id).await? {
        return Err(WebError::NotFound(format!("no active silence #{}", f.id)));
    }
    Ok(Redirect::to("/alerts").into_response())
}
