//! `controller serve`: the fleet dashboard (server-rendered with askama), its JSON
//! API under `/api/v1`, `/metrics` and `/healthz`. Routes are grouped by resource,
//! one module each; every handler returns `Result<_, WebError>`.

mod alerts;
mod auth;
mod billing;
pub mod cache;
mod chart;
mod fleet;
mod hosts;
mod metrics;
mod tenants;
mod view;

use std::net::SocketAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::billing::BillingError;
use crate::rates::RateTable;
use crate::store::{Store, StoreError};

pub use auth::{hash_password, SESSION_COOKIE};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// The table the fleet bills with.
    pub rate_table: RateTable,
    /// Mark cookies `Secure` (serve behind TLS).
    pub secure_cookies: bool,
    pub cache: std::sync::Arc<cache::PageCache>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Billing(#[from] BillingError),
    #[error("{0}")]
    Internal(String),
    #[error("rendering a page failed: {0}")]
    Template(#[from] askama::Error),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::Billing(
                BillingError::AlreadyClosed { .. } | BillingError::NotEnded { .. },
            ) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            eprintln!("serve: error: {self}");
            "internal error; the controller's log says what went wrong".to_string()
        } else {
            self.to_string()
        };
        (
            status,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            message,
        )
            .into_response()
    }
}

/// A rendered askama page as an HTML response.
pub(crate) fn render(t: &impl askama::Template) -> Result<Response, WebError> {
    Ok(Html(t.render()?).into_response())
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(fleet::page))
        .route("/fleet/rows", get(fleet::rows_fragment))
        .route("/api/v1/fleet", get(fleet::api))
        .route("/tenants/{id}", get(tenants::page))
        .route("/api/v1/tenants/{id}", get(tenants::api))
        .route("/billing", get(billing::page))
        .route("/billing/close", post(billing::close))
        .route("/billing.csv", get(billing::csv))
        .route("/billing.json", get(billing::api))
        .route("/api/v1/billing", get(billing::api))
        .route("/alerts", get(alerts::page))
        .route("/alerts/silence", post(alerts::silence))
        .route("/alerts/unsilence", post(alerts::unsilence))
        .route("/api/v1/alerts", get(alerts::api))
        .route("/hosts", get(hosts::page))
        .route("/api/v1/hosts", get(hosts::api))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Pages are private and framed by nobody.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    res
}

pub async fn serve(state: AppState, listen: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("serve: dashboard on http://{}", listener.local_addr()?);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
