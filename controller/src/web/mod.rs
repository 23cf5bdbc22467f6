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
mod invoices;
mod metrics;
mod tenants;
pub mod throttle;
mod view;

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
    pub security: std::sync::Arc<Security>,
    /// The background jobs and the database as last seen, for `/healthz`.
    pub health: std::sync::Arc<crate::supervisor::Health>,
    /// `serve --spec`: the seller and KSeF settings for sending invoices.
    pub spec: Option<std::sync::Arc<crate::spec::FleetSpec>>,
}

/// The dashboard's defences (docs/security.md), set at `serve`.
pub struct Security {
    pub throttle: throttle::LoginThrottle,
    /// `/metrics` answers only with `Authorization: Bearer <token>`; off without one.
    pub metrics_token: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// A session unused this long ends.
    pub idle_timeout: std::time::Duration,
    /// How long a client may take to send a request's headers, and a request to be
    /// answered.
    pub header_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            throttle: throttle::LoginThrottle::new(throttle::Limits::default()),
            metrics_token: None,
            trusted_proxies: Vec::new(),
            idle_timeout: std::time::Duration::from_secs(30 * 60),
            header_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("too many failed logins; try again in {0} s")]
    TooManyAttempts(u64),
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
            WebError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            WebError::Billing(
                BillingError::AlreadyClosed { .. } | BillingError::NotEnded { .. },
            ) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
            "internal error; the controller's log says what went wrong".to_string()
        } else {
            self.to_string()
        };
        let mut res = (
            status,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            message,
        )
            .into_response();
        if let WebError::TooManyAttempts(secs) = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// A rendered askama page as an HTML response.
pub(crate) fn render(t: &impl askama::Template) -> Result<Response, WebError> {
    Ok(Html(t.render()?).into_response())
}

/// The largest login form read.
const LOGIN_BODY_LIMIT: usize = 16 * 1024;

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
        .route("/invoices", get(invoices::page))
        .route("/invoices/view", get(invoices::show))
        .route("/invoices/xml", get(invoices::xml))
        .route("/invoices/upo", get(invoices::upo))
        .route("/invoices/send", post(invoices::send))
        .route("/alerts", get(alerts::page))
        .route("/alerts/silence", post(alerts::silence))
        .route("/alerts/unsilence", post(alerts::unsilence))
        .route("/api/v1/alerts", get(alerts::api))
        .route("/hosts", get(hosts::page))
        .route("/api/v1/hosts", get(hosts::api))
        // A login form is a few hundred bytes: nothing bigger is read.
        .route(
            "/login",
            get(auth::login_page)
                .post(auth::login)
                .layer(axum::extract::DefaultBodyLimit::max(LOGIN_BODY_LIMIT)),
        )
        .route("/logout", post(auth::logout))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/static/fleet.js", get(fleet_script))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(access_log))
        .with_state(state)
}

/// One line per request: method, path (without its query, which may carry a
/// `next=`), status and latency. Target `mai_fleet::access`, so that it can be
/// filtered on its own (`RUST_LOG=info,mai_fleet::access=warn`).
async fn access_log(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().chars().take(200).collect::<String>();
    let res = next.run(req).await;
    tracing::info!(
        target: "mai_fleet::access",
        method = %method,
        path = path.as_str(),
        status = res.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    res
}

/// The fleet page's refresh, as a file: the CSP allows no inline script.
async fn fleet_script() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        include_str!("../../../templates/fleet.js"),
    )
        .into_response()
}

/// A request that takes longer than `request_timeout` is answered 503.
async fn request_timeout(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(state.security.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long; try again\n",
        )
            .into_response(),
    }
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
        // No inline script: an injected <script> does not run. Inline style attributes
        // (the limit bars) stay allowed: styles run no code.
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    res
}

/// Serves until `stop` is cancelled. Each connection has `header_timeout` to send a
/// request's headers (a client that trickles them, slowloris, is cut off).
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let header_timeout = state.security.header_timeout;
    let app = router(state);
    let mut stop = std::pin::pin!(stop.cancelled());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: wait a little, go on.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        while connections.try_join_next().is_some() {}
        let app = app.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    // In-flight requests get a moment to finish.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Resolves at SIGTERM or SIGINT.
pub async fn shutdown_signal() {
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
