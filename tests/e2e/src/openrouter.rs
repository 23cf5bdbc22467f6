//! A local OpenRouter built from its API reference: `GET /key` with a key itself,
//! and the management endpoints with the management key — `/keys` (list, create,
//! get, patch, delete), `/activity` (per key hash or the whole account) and
//! `/credits`. Every request is logged (method, path, which key made it), so tests
//! can check what was asked and in which order. Amounts are decimals written into
//! JSON as numbers, as OpenRouter writes them.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A key the fake knows: made through `POST /keys`, or by hand (`set`).
#[derive(Clone, Debug)]
pub struct FakeKey {
    pub hash: String,
    pub name: String,
    pub key: String,
    pub disabled: bool,
    pub limit: Option<Decimal>,
    pub limit_reset: Option<String>,
    pub usage: Decimal,
    /// Made through the management API (listed by `GET /keys`).
    pub managed: bool,
}

impl FakeKey {
    fn new(key: &str, name: &str, managed: bool) -> Self {
        FakeKey {
            hash: sha256_hex(key),
            name: name.to_string(),
            key: key.to_string(),
            disabled: false,
            limit: None,
            limit_reset: None,
            usage: Decimal::ZERO,
            managed,
        }
    }

    pub fn label(&self) -> String {
        let hex = &self.key["sk-or-v1-".len()..];
        format!("sk-or-v1-{}...{}", &hex[..3], &hex[hex.len() - 3..])
    }

    fn remaining(&self) -> Option<Decimal> {
        self.limit.map(|l| (l - self.usage).max(Decimal::ZERO))
    }

    fn info(&self) -> Value {
        let num =
            |d: Decimal| -> Value { serde_json::from_str(&d.normalize().to_string()).unwrap() };
        json!({
            "hash": self.hash, "name": self.name, "label": self.label(), "disabled": self.disabled,
            "limit": self.limit.map(num), "limit_remaining": self.remaining().map(num),
            "limit_reset": self.limit_reset, "include_byok_in_limit": false,
            "usage": num(self.usage), "usage_daily": num(self.usage), "usage_weekly": num(self.usage),
            "usage_monthly": num(self.usage),
            "created_at": "2026-11-01T00:00:00Z", "updated_at": null,
        })
    }
}

/// One request as the fake saw it. `by` is the key's hash, `management`, or
/// `unknown`.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub by: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Default)]
pub struct State {
    pub management_key: String,
    /// Key string → key.
    pub keys: HashMap<String, FakeKey>,
    /// Hashes deleted through the API.
    pub deleted: Vec<String>,
    /// `api_key_hash` (or `*` for the account) → activity items.
    pub activity: HashMap<String, Vec<Value>>,
    pub credits: (Decimal, Decimal),
    pub log: Vec<Logged>,
    /// Answers queued for the next management requests (429, 500 …).
    pub fail_next: Vec<u16>,
    /// `POST /keys` makes the key, then waits this long before answering.
    pub hold_post: Option<Duration>,
}

pub struct FakeOpenRouter {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

pub const MANAGEMENT_KEY: &str =
    "sk-or-v1-mgmt0000000000000000000000000000000000000000000000000000000a";

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn dec(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

impl FakeOpenRouter {
    pub fn start(port: u16) -> Self {
        let server = tiny_http::Server::http(("127.0.0.1", port)).expect("fake OpenRouter listens");
        let state = Arc::new(Mutex::new(State {
            management_key: MANAGEMENT_KEY.to_string(),
            credits: (Decimal::from(1000), Decimal::ZERO),
            ..Default::default()
        }));
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                let st = Arc::clone(&st);
                // A held POST must not hold the other requests.
                std::thread::spawn(move || handle(req, &st));
            }
        });
        Self { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.port)
    }

    /// A key made by hand (not through the API), with its usage; `GET /key`
    /// answers for it.
    pub fn set(&self, key: &str, usage: &str) {
        self.upsert_hand_key(key, usage.parse().unwrap(), None);
    }

    fn upsert_hand_key(&self, key: &str, usage: Decimal, limit: Option<Decimal>) {
        let mut s = self.state.lock().unwrap();
        let k = s
            .keys
            .entry(key.to_string())
            .or_insert_with(|| FakeKey::new(key, "", false));
        k.usage = usage;
        k.limit = limit;
    }

    /// A key made by hand in OpenRouter's settings: listed by `GET /keys`.
    pub fn create_by_hand(&self, name: &str) -> FakeKey {
        let key = new_key();
        let k = FakeKey::new(&key, name, true);
        self.state.lock().unwrap().keys.insert(key, k.clone());
        k
    }

    /// Keys the account has (not deleted), made through the API or by hand.
    pub fn managed_keys(&self) -> Vec<FakeKey> {
        let s = self.state.lock().unwrap();
        let mut v: Vec<FakeKey> = s.keys.values().filter(|k| k.managed).cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn key_by_hash(&self, hash: &str) -> Option<FakeKey> {
        let s = self.state.lock().unwrap();
        s.keys.values().find(|k| k.hash == hash).cloned()
    }

    /// Spends on a key (by its string): the key stops at its limit.
    pub fn spend(&self, key: &str, usd: Decimal) {
        let mut s = self.state.lock().unwrap();
        if let Some(k) = s.keys.get_mut(key) {
            k.usage += usd;
        }
    }

    pub fn set_activity(&self, key_hash: &str, items: Vec<Value>) {
        self.state
            .lock()
            .unwrap()
            .activity
            .insert(key_hash.to_string(), items);
    }

    pub fn set_credits(&self, total: Decimal, used: Decimal) {
        self.state.lock().unwrap().credits = (total, used);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests of the log that change something (POST, PATCH, DELETE).
    pub fn changes(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.method != "GET")
            .collect()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

fn new_key() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("urandom");
    format!(
        "sk-or-v1-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn handle(mut req: tiny_http::Request, st: &Arc<Mutex<State>>) {
    let method = req.method().as_str().to_string();
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let path = path.trim_start_matches("/api/v1").to_string();
    let bearer = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().trim_start_matches("Bearer ").to_string())
        .unwrap_or_default();
    let mut text = String::new();
    let _ = req.as_reader().read_to_string(&mut text);
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let query: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    let mut s = st.lock().unwrap();
    let management = bearer == s.management_key;
    let by = if management {
        "management".to_string()
    } else {
        s.keys
            .get(&bearer)
            .map_or("unknown".into(), |k| k.hash.clone())
    };
    let unauthorized = (
        401,
        json!({"error": {"code": 401, "message": "No auth credentials found"}}),
    );
    let not_found = (404, json!({"error": {"code": 404, "message": "Not found"}}));
    let mut hold = None;
    let (status, answer) = if path == "/key" {
        match s.keys.get(&bearer) {
            Some(k) => (200, json!({ "data": k.info() })),
            None => unauthorized,
        }
    } else if !management {
        unauthorized
    } else if let Some(code) = (!s.fail_next.is_empty()).then(|| s.fail_next.remove(0)) {
        (
            code,
            json!({"error": {"code": code, "message": "injected"}}),
        )
    } else {
        match (method.as_str(), path.as_str()) {
            ("GET", "/keys") => {
                let offset: usize = query
                    .get("offset")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0);
                let mut all: Vec<&FakeKey> = s.keys.values().filter(|k| k.managed).collect();
                all.sort_by(|a, b| a.hash.cmp(&b.hash));
                let page: Vec<Value> = all
                    .iter()
                    .skip(offset)
                    .take(100)
                    .map(|k| k.info())
                    .collect();
                (200, json!({ "data": page }))
            }
            ("POST", "/keys") => match body["name"].as_str() {
                Some(name) if !name.is_empty() => {
                    let key = new_key();
                    let k = FakeKey {
                        limit: dec(&body["limit"]),
                        limit_reset: body["limit_reset"].as_str().map(str::to_string),
                        ..FakeKey::new(&key, name, true)
                    };
                    let info = k.info();
                    s.keys.insert(key.clone(), k);
                    hold = s.hold_post;
                    (201, json!({ "data": info, "key": key }))
                }
                _ => (
                    400,
                    json!({"error": {"code": 400, "message": "name is required"}}),
                ),
            },
            ("GET", "/activity") => {
                let which = query
                    .get("api_key_hash")
                    .cloned()
                    .unwrap_or_else(|| "*".into());
                (
                    200,
                    json!({ "data": s.activity.get(&which).cloned().unwrap_or_default() }),
                )
            }
            ("GET", "/credits") => (
                200,
                json!({ "data": {
                    "total_credits": serde_json::from_str::<Value>(&s.credits.0.normalize().to_string()).unwrap(),
                    "total_usage": serde_json::from_str::<Value>(&s.credits.1.normalize().to_string()).unwrap(),
                }}),
            ),
            (m, p) if p.starts_with("/keys/") => {
                let hash = p["/keys/".len()..].to_string();
                let found = s
                    .keys
                    .iter()
                    .find(|(_, k)| k.hash == hash && k.managed)
                    .map(|(key, _)| key.clone());
                match (m, found) {
                    (_, None) => not_found,
                    ("GET", Some(key)) => (200, json!({ "data": s.keys[&key].info() })),
                    ("PATCH", Some(key)) => {
                        let k = s.keys.get_mut(&key).unwrap();
                        if let Some(d) = body["disabled"].as_bool() {
                            k.disabled = d;
                        }
                        if body.get("limit").is_some() {
                            k.limit = dec(&body["limit"]);
                        }
                        if let Some(r) = body["limit_reset"].as_str() {
                            k.limit_reset = Some(r.to_string());
                        }
                        if let Some(n) = body["name"].as_str() {
                            k.name = n.to_string();
                        }
                        (200, json!({ "data": k.info() }))
                    }
                    ("DELETE", Some(key)) => {
                        s.keys.remove(&key);
                        s.deleted.push(hash);
                        (200, json!({ "data": { "success": true } }))
                    }
                    _ => (405, json!({})),
                }
            }
            _ => not_found,
        }
    };
    s.log.push(Logged {
        method,
        path: url.clone(),
        by,
        body,
        status,
    });
    drop(s);
    if let Some(d) = hold {
        std::thread::sleep(d);
    }
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("header");
    let _ = req.respond(
        tiny_http::Response::from_string(answer.to_string())
            .with_status_code(status)
            .with_header(header),
    );
}
