//! OpenRouter's API as the controller uses it: `GET /key` with a tenant's own key,
//! and the management endpoints (`/keys`, `/activity`, `/credits`) with the fleet's
//! management key. Every call is bounded in time (the shared client's timeout);
//! 429 and 5xx are retried with jittered exponential back-off, other 4xx never.
//! No key, management key included, is ever part of an error or a log line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::Method;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::spec::ApiKey;

pub const DEFAULT_BASE_URL: &str = "https://openrouter.ai/api/v1";
pub use crate::spec::{MANAGEMENT_KEY_ENV, MANAGEMENT_KEY_FILE_ENV};
/// `GET /keys` answers this many keys a page.
const PAGE: usize = 100;

/// `MAI_FLEET_OPENROUTER_URL`, else OpenRouter's own.
pub fn base_url_from_env() -> String {
    crate::env::text("MAI_FLEET_OPENROUTER_URL")
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
        .trim_end_matches('/')
        .to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum OpenRouterError {
    #[error("OpenRouter cannot be reached: {0}")]
    Unreachable(String),
    #[error("OpenRouter answered {status} to {what}")]
    Status { status: u16, what: String },
    #[error("OpenRouter's answer to {what} is not what its API documents: {detail}")]
    Malformed { what: String, detail: String },
}

impl OpenRouterError {
    /// 429 and 5xx pass, and so may a failed connection; other answers will not
    /// change by asking again.
    pub fn transient(&self) -> bool {
        match self {
            OpenRouterError::Status { status, .. } => *status == 429 || *status >= 500,
            OpenRouterError::Unreachable(_) => true,
            OpenRouterError::Malformed { .. } => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            OpenRouterError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A JSON number as OpenRouter wrote it, as a decimal (no float arithmetic).
pub fn dec(n: &serde_json::Number) -> Option<Decimal> {
    n.to_string().parse::<Decimal>().ok().map(|d| d.round_dp(6))
}

/// An amount as the JSON number OpenRouter takes, written from its decimal digits
/// (no float on the way). Limits are whole cents (`NUMERIC(14, 2)`).
pub fn decimal_json(d: Decimal) -> Value {
    serde_json::from_str(&d.normalize().to_string()).unwrap_or(Value::Null)
}

fn dec_opt(v: &Option<serde_json::Number>) -> Option<Decimal> {
    v.as_ref().and_then(dec)
}

/// The management key: never printed (`Debug` hides it), sent only as a bearer.
#[derive(Clone)]
pub struct ManagementKey(String);

impl fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ManagementKey(•••)")
    }
}

impl ManagementKey {
    /// From `MAI_FLEET_OPENROUTER_MANAGEMENT_KEY` or the owner-only file named by
    /// `MAI_FLEET_OPENROUTER_MANAGEMENT_KEY_FILE`; `Ok(None)` when neither is set.
    pub fn from_env() -> Result<Option<Self>, String> {
        if let Some(v) = crate::env::text(MANAGEMENT_KEY_ENV) {
            return Ok(Some(Self(v.trim().to_string())));
        }
        match crate::env::text(MANAGEMENT_KEY_FILE_ENV) {
            Some(path) => crate::crypto::read_secret_file(&PathBuf::from(path))
                .map(|k| Some(Self(k)))
                .map_err(|e| format!("{MANAGEMENT_KEY_FILE_ENV}: {e}")),
            None => Ok(None),
        }
    }

    /// The key itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A key as `GET /keys`, `GET /keys/{hash}` and `POST /keys` describe it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub hash: String,
    pub name: String,
    /// The masked key, e.g. `sk-or-v1-au7...890`.
    pub label: String,
    pub disabled: bool,
    pub limit: Option<Decimal>,
    pub limit_remaining: Option<Decimal>,
    pub limit_reset: Option<String>,
    pub usage: Decimal,
    pub usage_monthly: Option<Decimal>,
    pub created_at: Option<String>,
}

#[derive(Deserialize)]
struct RawKeyInfo {
    hash: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    disabled: bool,
    limit: Option<serde_json::Number>,
    limit_remaining: Option<serde_json::Number>,
    limit_reset: Option<String>,
    usage: Option<serde_json::Number>,
    usage_monthly: Option<serde_json::Number>,
    created_at: Option<String>,
}

impl From<RawKeyInfo> for KeyInfo {
    fn from(r: RawKeyInfo) -> Self {
        KeyInfo {
            hash: r.hash,
            name: r.name,
            label: r.label,
            disabled: r.disabled,
            limit: dec_opt(&r.limit),
            limit_remaining: dec_opt(&r.limit_remaining),
            limit_reset: r.limit_reset,
            usage: dec_opt(&r.usage).unwrap_or_default(),
            usage_monthly: dec_opt(&r.usage_monthly),
            created_at: r.created_at,
        }
    }
}

/// What `GET /key` says of one key, asked with the key itself.
#[derive(Debug, Clone)]
pub struct KeyUsage {
    pub usage: Decimal,
    pub usage_daily: Option<Decimal>,
    pub usage_monthly: Option<Decimal>,
    pub limit: Option<Decimal>,
    pub limit_remaining: Option<Decimal>,
}

#[derive(Deserialize)]
struct RawKeyUsage {
    usage: serde_json::Number,
    usage_daily: Option<serde_json::Number>,
    usage_monthly: Option<serde_json::Number>,
    limit: Option<serde_json::Number>,
    limit_remaining: Option<serde_json::Number>,
}

/// One item of `GET /activity`: a completed UTC day × model × endpoint.
#[derive(Debug, Clone)]
pub struct ActivityItem {
    pub date: chrono::NaiveDate,
    pub model: String,
    pub endpoint_id: String,
    pub provider_name: Option<String>,
    pub usage: Decimal,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
}

#[derive(Deserialize)]
struct RawActivity {
    date: String,
    model: String,
    #[serde(default)]
    endpoint_id: Option<String>,
    provider_name: Option<String>,
    usage: serde_json::Number,
    #[serde(default)]
    requests: Option<i64>,
    #[serde(default)]
    prompt_tokens: Option<i64>,
    #[serde(default)]
    completion_tokens: Option<i64>,
    #[serde(default)]
    reasoning_tokens: Option<i64>,
}

/// `GET /credits`: bought and spent; the account stops when they meet.
#[derive(Debug, Clone, Copy)]
pub struct Credits {
    pub total_credits: Decimal,
    pub total_usage: Decimal,
}

impl Credits {
    pub fn remaining(&self) -> Decimal {
        self.total_credits - self.total_usage
    }
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

/// A key just created: the string is returned this once only.
pub struct Created {
    pub info: KeyInfo,
    pub key: ApiKey,
}

/// The HTTP side: base URL, the shared client, the retry policy.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    retry: ExponentialBuilder,
}

impl Client {
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: crate::http::client(),
            retry: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(20))
                .with_max_times(4)
                .with_jitter(),
        }
    }

    pub fn from_env() -> Self {
        Self::new(base_url_from_env())
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Vec<u8>, OpenRouterError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.map_err(|e| {
            OpenRouterError::Unreachable(if e.is_timeout() {
                format!("{what} timed out")
            } else {
                format!("{what}: connection failed")
            })
        })?;
        let status = res.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(OpenRouterError::Status {
                status,
                what: what.to_string(),
            });
        }
        res.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|_| OpenRouterError::Unreachable(format!("{what}: answer cut off")))
    }

    /// One call, retried while it fails transiently (`retry`), within the policy.
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
        what: &str,
        retry: fn(&OpenRouterError) -> bool,
    ) -> Result<Vec<u8>, OpenRouterError> {
        (|| self.once(method.clone(), path, bearer, body, what))
            .retry(self.retry)
            .when(retry)
            .notify(|e, wait| {
                tracing::debug!(error = %e, wait_ms = wait.as_millis() as u64, "OpenRouter call retried")
            })
            .await
    }

    fn parse<T: serde::de::DeserializeOwned>(
        bytes: &[u8],
        what: &str,
    ) -> Result<T, OpenRouterError> {
        serde_json::from_slice(bytes).map_err(|e| OpenRouterError::Malformed {
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    /// `GET /key` with the key itself: its ledger, and proof that it is accepted.
    pub async fn key_usage(&self, key: &ApiKey) -> Result<KeyUsage, OpenRouterError> {
        // Polls have their own back-off per tenant: one attempt here.
        let bytes = self
            .once(Method::GET, "/key", key.expose(), None, "GET /key")
            .await?;
        let a: Data<RawKeyUsage> = Self::parse(&bytes, "GET /key")?;
        Ok(KeyUsage {
            usage: dec(&a.data.usage).ok_or_else(|| OpenRouterError::Malformed {
                what: "GET /key".into(),
                detail: "usage".into(),
            })?,
            usage_daily: dec_opt(&a.data.usage_daily),
            usage_monthly: dec_opt(&a.data.usage_monthly),
            limit: dec_opt(&a.data.limit),
            limit_remaining: dec_opt(&a.data.limit_remaining),
        })
    }
}

/// The management endpoints, with the management key.
#[derive(Clone)]
pub struct Management {
    client: Client,
    key: ManagementKey,
}

impl Management {
    pub fn new(client: Client, key: ManagementKey) -> Self {
        Self { client, key }
    }

    /// From the environment, when a management key is configured.
    pub fn from_env() -> Result<Option<Self>, String> {
        Ok(ManagementKey::from_env()?.map(|k| Self::new(Client::from_env(), k)))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A management call, retried on 429 and 5xx.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Vec<u8>, OpenRouterError> {
        self.client
            .call(
                method,
                path,
                self.key.expose(),
                body,
                what,
                OpenRouterError::transient,
            )
            .await
    }

    /// `POST /keys`. Retried on 429 only: after a 5xx or a lost answer the key may
    /// exist all the same, and a second POST would make another; the caller sweeps
    /// keys of the name it does not know before it creates (see `keys::prepare`).
    pub async fn create_key(
        &self,
        name: &str,
        limit: Option<Decimal>,
    ) -> Result<Created, OpenRouterError> {
        let mut body = json!({ "name": name });
        if let Some(l) = limit {
            body["limit"] = decimal_json(l);
            body["limit_reset"] = json!("monthly");
        }
        let what = "POST /keys";
        let bytes = self
            .client
            .call(
                Method::POST,
                "/keys",
                self.key.expose(),
                Some(&body),
                what,
                |e| e.status() == Some(429),
            )
            .await?;
        #[derive(Deserialize)]
        struct Answer {
            data: RawKeyInfo,
            key: String,
        }
        let a: Answer = Client::parse(&bytes, what)?;
        if crate::spec::check_openrouter_key(&a.key).is_err() {
            return Err(OpenRouterError::Malformed {
                what: what.into(),
                detail: "the key returned is not an OpenRouter API key".into(),
            });
        }
        Ok(Created {
            info: a.data.into(),
            key: ApiKey::new(a.key),
        })
    }

    pub async fn get_key(&self, hash: &str) -> Result<KeyInfo, OpenRouterError> {
        let what = "GET /keys/{hash}";
        let bytes = self
            .send(Method::GET, &format!("/keys/{}", encode(hash)), None, what)
            .await?;
        Ok(Client::parse::<Data<RawKeyInfo>>(&bytes, what)?.data.into())
    }

    /// `PATCH /keys/{hash}` with the fields given (`limit`, `disabled`, …).
    pub async fn patch_key(&self, hash: &str, fields: Value) -> Result<(), OpenRouterError> {
        self.send(
            Method::PATCH,
            &format!("/keys/{}", encode(hash)),
            Some(&fields),
            "PATCH /keys/{hash}",
        )
        .await
        .map(drop)
    }

    /// `DELETE /keys/{hash}`; a key OpenRouter no longer knows counts as deleted.
    pub async fn delete_key(&self, hash: &str) -> Result<(), OpenRouterError> {
        match self
            .send(
                Method::DELETE,
                &format!("/keys/{}", encode(hash)),
                None,
                "DELETE /keys/{hash}",
            )
            .await
        {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Every key of the account, page by page.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, OpenRouterError> {
        let what = "GET /keys";
        let mut all = Vec::new();
        loop {
            let bytes = self
                .send(
                    Method::GET,
                    &format!("/keys?offset={}", all.len()),
                    None,
                    what,
                )
                .await?;
            let page: Data<Vec<RawKeyInfo>> = Client::parse(&bytes, what)?;
            let n = page.data.len();
            all.extend(page.data.into_iter().map(KeyInfo::from));
            // A page short of full is the last; a bound keeps a misbehaving
            // server from paging forever.
            if n < PAGE || all.len() >= 100_000 {
                return Ok(all);
            }
        }
    }

    /// `GET /activity`, for one key's hash or (None) the whole account.
    pub async fn activity(
        &self,
        key_hash: Option<&str>,
    ) -> Result<Vec<ActivityItem>, OpenRouterError> {
        let what = "GET /activity";
        let path = match key_hash {
            Some(h) => format!("/activity?api_key_hash={}", encode(h)),
            None => "/activity".to_string(),
        };
        let bytes = self.send(Method::GET, &path, None, what).await?;
        let raw: Data<Vec<RawActivity>> = Client::parse(&bytes, what)?;
        raw.data
            .into_iter()
            .map(|r| {
                let bad = |detail: String| OpenRouterError::Malformed {
                    what: what.into(),
                    detail,
                };
                let date = chrono::NaiveDate::parse_from_str(
                    r.date.get(..10).unwrap_or(&r.date),
                    "%Y-%m-%d",
                )
                .map_err(|_| bad(format!("date {:?}", r.date)))?;
                Ok(ActivityItem {
                    date,
                    model: r.model,
                    endpoint_id: r.endpoint_id.unwrap_or_default(),
                    provider_name: r.provider_name,
                    usage: dec(&r.usage).ok_or_else(|| bad("usage".into()))?,
                    requests: r.requests.unwrap_or(0),
                    prompt_tokens: r.prompt_tokens.unwrap_or(0),
                    completion_tokens: r.completion_tokens.unwrap_or(0),
                    reasoning_tokens: r.reasoning_tokens.unwrap_or(0),
                })
            })
            .collect()
    }

    pub async fn credits(&self) -> Result<Credits, OpenRouterError> {
        let what = "GET /credits";
        let bytes = self.send(Method::GET, "/credits", None, what).await?;
        #[derive(Deserialize)]
        struct Raw {
            total_credits: serde_json::Number,
            total_usage: serde_json::Number,
        }
        let r: Data<Raw> = Client::parse(&bytes, what)?;
        let bad = |f: &str| OpenRouterError::Malformed {
            what: what.into(),
            detail: f.into(),
        };
        Ok(Credits {
            total_credits: dec(&r.data.total_credits).ok_or_else(|| bad("total_credits"))?,
            total_usage: dec(&r.data.total_usage).ok_or_else(|| bad("total_usage"))?,
        })
    }
}

/// A hash as a path or query segment: OpenRouter's are hex, but what comes back
/// from a server is not trusted to be.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
