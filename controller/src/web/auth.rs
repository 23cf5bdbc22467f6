//! Login against `dashboard_users` (argon2), an HttpOnly SameSite session cookie,
//! a CSRF token per session for every form, logout. Everything but `/login`,
//! `/healthz` and `/metrics` needs a session: pages redirect to the login form,
//! the API answers 401.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use askama::Template;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{render, AppState, WebError};
use crate::crypto::{hex, random_bytes};

pub const SESSION_COOKIE: &str = "mai_session";
const LOGIN_CSRF_COOKIE: &str = "mai_login_csrf";
const SESSION_TTL_S: i64 = 12 * 3600;

/// A logged-in user; handlers that take it are behind login.
pub struct Authed {
    pub user: String,
    pub csrf: String,
    /// `viewer` reads; `admin` also closes months, silences alerts, manages users.
    pub role: String,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let session = match cookie(&parts.headers, SESSION_COOKIE) {
            Some(token) => state
                .store
                .session(
                    &token_digest(&token),
                    state.security.idle_timeout.as_secs() as i64,
                )
                .await
                .map_err(|e| WebError::from(e).into_response())?,
            None => None,
        };
        match session {
            Some(s) => Ok(Authed {
                user: s.user_name,
                csrf: s.csrf_token,
                role: s.role,
            }),
            None if parts.uri.path().starts_with("/api/")
                || parts.uri.path().ends_with(".csv")
                || parts.uri.path().ends_with(".json") =>
            {
                Err((
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Cookie")],
                    "login required: POST /login",
                )
                    .into_response())
            }
            None => {
                let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                Err(Redirect::to(&format!("/login?next={}", url_encode(next))).into_response())
            }
        }
    }
}

impl Authed {
    /// What only an admin may do.
    pub fn require_admin(&self) -> Result<(), WebError> {
        if self.role == "admin" {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!(
                "user {} is a viewer; an admin may do this",
                self.user
            )))
        }
    }

    /// Forms carry the session's CSRF token; a form posted from elsewhere does not.
    pub fn check_csrf(&self, sent: &str) -> Result<(), WebError> {
        if constant_time_eq(self.csrf.as_bytes(), sent.as_bytes()) {
            Ok(())
        } else {
            Err(WebError::Forbidden(
                "the form is stale or came from another site; reload the page and try again".into(),
            ))
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_page(
    State(state): State<AppState>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, WebError> {
    login_form(&state, safe_next(q.next.as_deref()), None, StatusCode::OK)
}

fn login_form(
    state: &AppState,
    next: String,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, WebError> {
    let csrf = random_token()?;
    let mut res = render(&LoginPage {
        csrf: csrf.clone(),
        next,
        error,
    })?;
    *res.status_mut() = status;
    set_cookie(
        &mut res,
        LOGIN_CSRF_COOKIE,
        &csrf,
        600,
        state.secure_cookies,
    );
    Ok(res)
}

#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, WebError> {
    let next = safe_next(f.next.as_deref());
    let client = client_address(peer.ip(), &headers, &state.security.trusted_proxies);
    let name = f.name.trim().to_string();
    if let Err(wait) = state.security.throttle.check(client, &name) {
        tracing::warn!(user = ?shown(&name), client = %client, "login refused: too many failures");
        return Err(WebError::TooManyAttempts(wait.as_secs().max(1)));
    }
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), f.csrf.as_bytes()) {
        return login_form(
            &state,
            next,
            Some("The login form expired; please try again.".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let hash = state.store.user_password_hash(&name).await?;
    // An unknown user costs the same work as a wrong password, and gets the same words.
    // Argon2 takes tens of milliseconds of CPU: off the async workers.
    let known = hash.is_some();
    let password = f.password;
    let verified = tokio::task::spawn_blocking(move || {
        verify_password(hash.as_deref().unwrap_or(DUMMY_HASH), &password)
    })
    .await
    .map_err(|e| WebError::Internal(format!("password check: {e}")))?;
    if !(verified && known) {
        state.security.throttle.failed(client, &name);
        tracing::warn!(user = ?shown(&name), client = %client, "failed login");
        return login_form(
            &state,
            next,
            Some("Wrong user name or password.".into()),
            StatusCode::UNAUTHORIZED,
        );
    }
    let token = random_token()?;
    state
        .store
        .create_session(
            &token_digest(&token),
            &name,
            &random_token()?,
            SESSION_TTL_S,
        )
        .await?;
    let mut res = Redirect::to(&next).into_response();
    set_cookie(
        &mut res,
        SESSION_COOKIE,
        &token,
        SESSION_TTL_S,
        state.secure_cookies,
    );
    set_cookie(&mut res, LOGIN_CSRF_COOKIE, "", 0, state.secure_cookies);
    Ok(res)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    authed: Authed,
    Form(f): Form<CsrfForm>,
) -> Result<Response, WebError> {
    authed.check_csrf(&f.csrf)?;
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        state.store.delete_session(&token_digest(&token)).await?;
    }
    let mut res = Redirect::to("/login").into_response();
    set_cookie(&mut res, SESSION_COOKIE, "", 0, state.secure_cookies);
    Ok(res)
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("no randomness for a salt: {0}")]
    Random(#[source] std::io::Error),
    #[error("hashing the password failed: {0}")]
    Hash(argon2::password_hash::Error),
}

/// An argon2id PHC string for `controller user add`.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let bytes = random_bytes::<16>().map_err(HashError::Random)?;
    let salt = SaltString::encode_b64(&bytes).map_err(HashError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError::Hash)
}

// A valid hash of a random password, verified against when the user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2xVNXd8N0HNZqLqYJWMNtqgzGEr1BXOYHGSEJc8Fj0Y";

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

fn random_token() -> Result<String, WebError> {
    random_bytes::<32>()
        .map(|b| hex(&b))
        .map_err(|e| WebError::Internal(format!("no randomness for a token: {e}")))
}

fn token_digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Only a local path: a login link cannot send the user to another site. Browsers
/// drop tabs and newlines from URLs and read `\\` as `/`, so `/\t/evil` and `/\\evil`
/// would be `//evil`: any control character, space or backslash refuses the path.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '\\') =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// The client's address: the peer's, or, behind a trusted reverse proxy, the last
/// address that proxy saw in `X-Forwarded-For`.
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .next_back()
        .unwrap_or(peer)
}

/// A user name as typed, for a log line: the typist controls it.
fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

fn set_cookie(res: &mut Response, name: &str, value: &str, max_age: i64, secure: bool) {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&text) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_dummy_hash_parses() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct hors"));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password(DUMMY_HASH, ""));
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(
            safe_next(Some("/billing?month=2026-10")),
            "/billing?month=2026-10"
        );
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\t/evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example/")), "/");
        assert_eq!(safe_next(Some("/%0a/x")), "/%0a/x", "still a path here");
        assert_eq!(safe_next(None), "/");
    }
}
