//! `/metrics` (Prometheus text format 0.0.4), behind a bearer token of its own, and
//! `/healthz`, open: whether the database answers and the background jobs run.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{AppState, WebError};
use crate::billing::fleet_today;
use crate::billing::money::usd_micros;

/// From memory only, so it answers at once whatever the database does: the database
/// as its probe last saw it, and every background job (running, restarting after a
/// failure, or late). 200 when all is well, else 503 naming what is not.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let report = state.health.report();
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// A label value escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Whether the request carries the metrics bearer token (compared in constant time).
fn bearer_ok(headers: &axum::http::HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|sent| {
            let (a, b) = (sent.trim().as_bytes(), token.as_bytes());
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        })
}

/// `/metrics` carries every client's money: only for the scraper holding the token
/// (Prometheus' `authorization` scrape setting), and off when no token is set.
pub async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, WebError> {
    let Some(token) = state.security.metrics_token.as_deref() else {
        return Ok((
            StatusCode::NOT_FOUND,
            "metrics are off: start serve with MAI_FLEET_METRICS_TOKEN_FILE\n",
        )
            .into_response());
    };
    if !bearer_ok(&headers, token) {
        return Ok((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            "metrics need Authorization: Bearer <token>\n",
        )
            .into_response());
    }
    let store = &state.store;
    let rows = state
        .cache
        .get_or_load("fleet".into(), || store.fleet_rows())
        .await?;
    let hosts = state
        .cache
        .get_or_load("hosts".into(), || store.host_rows())
        .await?;
    let last_apply = state.store.last_apply().await?;
    let rate = state.store.rate_on(state.rate_table, fleet_today()).await?;
    let mut out = String::new();
    tenant_metrics(&mut out, &rows);
    host_metrics(&mut out, &hosts);
    fleet_metrics(&mut out, last_apply.as_ref(), rate.as_ref());
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}

/// Per tenant: tokens, cost, tracking, data age, the monthly limit.
fn tenant_metrics(out: &mut String, rows: &[crate::store::dashboard::FleetRow]) {
    type Pick = fn(&crate::store::dashboard::FleetRow) -> Option<String>;
    let per_tenant: [(&str, &str, Pick); 6] = [
        (
            "mai_fleet_tenant_tokens_today",
            "Tokens recorded today (tenant's timezone).",
            |r| Some(r.today_tokens.to_string()),
        ),
        (
            "mai_fleet_tenant_tokens_month",
            "Tokens recorded this calendar month (tenant's timezone).",
            |r| Some(r.month_tokens.to_string()),
        ),
        (
            "mai_fleet_tenant_raw_cost_usd_month",
            "OpenRouter cost this month, USD.",
            |r| Some(usd_micros(r.month_raw_cost).to_string()),
        ),
        (
            "mai_fleet_tenant_client_cost_usd_month",
            "Client cost (raw x markup) this month, USD.",
            |r| Some(usd_micros(r.month_client_cost).to_string()),
        ),
        (
            "mai_fleet_tenant_tracking_active",
            "1 when the tenant's usage tracking is active, 0 when inactive or unknown.",
            |r| Some(u8::from(r.tracking.is_active()).to_string()),
        ),
        (
            "mai_fleet_tenant_data_age_seconds",
            "Seconds since the tenant's store last recorded usage.",
            |r| r.data_age_s.map(|s| s.to_string()),
        ),
    ];
    for (name, help, pick) in per_tenant {
        family(out, name, help);
        for r in rows {
            if let Some(v) = pick(r) {
                let _ = writeln!(
                    out,
                    "{name}{{tenant=\"{}\",host=\"{}\"}} {v}",
                    label(&r.tenant),
                    label(r.host.as_deref().unwrap_or(""))
                );
            }
        }
    }
    family(
        out,
        "mai_fleet_tenant_monthly_limit_usd",
        "The tenant's monthly limit, USD.",
    );
    for r in rows {
        if let Some(l) = r.monthly_limit_usd {
            let _ = writeln!(
                out,
                "mai_fleet_tenant_monthly_limit_usd{{tenant=\"{}\"}} {l}",
                label(&r.tenant)
            );
        }
    }
}

/// Per host: the agent's heartbeat age and cycle time.
fn host_metrics(out: &mut String, hosts: &[crate::store::dashboard::HostRow]) {
    family(
        out,
        "mai_fleet_agent_heartbeat_age_seconds",
        "Seconds since the host's agent last reported (agent lag).",
    );
    for h in hosts {
        if let Some(age) = h.heartbeat_age_s {
            let _ = writeln!(
                out,
                "mai_fleet_agent_heartbeat_age_seconds{{host=\"{}\"}} {age}",
                label(&h.host)
            );
        }
    }
    family(
        out,
        "mai_fleet_agent_cycle_seconds",
        "Duration of the agent's last cycle.",
    );
    for h in hosts {
        if let Some(ms) = h.cycle_ms {
            let _ = writeln!(
                out,
                "mai_fleet_agent_cycle_seconds{{host=\"{}\"}} {:.3}",
                label(&h.host),
                ms as f64 / 1000.0
            );
        }
    }
}

/// The fleet's: the last apply and the exchange rate in force.
fn fleet_metrics(
    out: &mut String,
    last_apply: Option<&crate::store::dashboard::LastApply>,
    rate: Option<&crate::rates::Rate>,
) {
    if let Some(a) = last_apply {
        family(
            out,
            "mai_fleet_last_apply_success",
            "1 when the last apply succeeded for every tenant.",
        );
        let _ = writeln!(
            out,
            "mai_fleet_last_apply_success{{fleet=\"{}\",status=\"{}\"}} {}",
            label(&a.fleet),
            label(&a.status),
            u8::from(a.status == "succeeded")
        );
        family(
            out,
            "mai_fleet_last_apply_timestamp_seconds",
            "When the last apply started (Unix time).",
        );
        let _ = writeln!(
            out,
            "mai_fleet_last_apply_timestamp_seconds{{fleet=\"{}\"}} {}",
            label(&a.fleet),
            a.started_at.timestamp()
        );
    }
    family(
        out,
        "mai_fleet_exchange_rate_pln",
        "USD->PLN rate in force today (absent: USD only).",
    );
    if let Some(r) = rate {
        let _ = writeln!(
            out,
            "mai_fleet_exchange_rate_pln{{table=\"{}\"}} {}",
            r.rate_table.0.code(),
            r.rate
        );
        family(
            out,
            "mai_fleet_exchange_rate_age_days",
            "Days since the rate in force was published.",
        );
        let _ = writeln!(
            out,
            "mai_fleet_exchange_rate_age_days{{table=\"{}\"}} {}",
            r.rate_table.0.code(),
            (fleet_today() - r.effective_date).num_days()
        );
    }
}
