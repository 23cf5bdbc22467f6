//! A client of the KSeF 2.0 API: authentication with a KSeF token (challenge,
//! RSA-OAEP token encryption, redeem, refresh), one online session (AES-256-CBC
//! under a session key wrapped with the Ministry's key), sending, statuses, closing
//! and the official receipt (UPO). The token and the access tokens never leave
//! this module but in an `Authorization` header; no error or log holds them.

use std::time::Duration;

use aes::cipher::{block_padding::Pkcs7, BlockModeEncrypt, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::{Digest, Sha256};
use serde_json::{json, Value};
use x509_cert::der::{Decode, Encode};

use crate::spec::{ApiKey, KsefEnvironment};

/// At most this many answers 429 in a row for one call, each waited out.
const MAX_RETRIES: u32 = 6;
/// The most of KSeF's own words (a refusal, a status) shown and kept.
const MAX_TEXT: usize = 1000;
/// The largest answer read (a receipt is a few kilobytes).
const MAX_BODY: usize = 4 << 20;
/// A `Retry-After` longer than this is waited only this long before trying again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum KsefError {
    #[error("KSeF at {base} is unreachable: {source}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("KSeF answered {status} to {what}: {detail}")]
    Api {
        what: &'static str,
        status: u16,
        detail: String,
    },
    #[error("KSeF refused the authentication ({code}: {description})")]
    AuthFailed { code: i64, description: String },
    #[error("KSeF kept answering 429 (too many requests) to {what}; try again later")]
    Throttled { what: &'static str },
    #[error("KSeF's answer to {what} is not what its contract says: {detail}")]
    Protocol { what: &'static str, detail: String },
    #[error("encryption for KSeF failed: {0}")]
    Crypto(String),
}

/// The base URL of an environment; `MAI_FLEET_KSEF_URL` points elsewhere (a proxy,
/// or a test double).
pub fn base_url(env: KsefEnvironment) -> String {
    if let Some(url) = crate::env::text("MAI_FLEET_KSEF_URL") {
        return url.trim_end_matches('/').to_string();
    }
    match env {
        KsefEnvironment::Test => "https://api-test.ksef.mf.gov.pl/v2",
        KsefEnvironment::Demo => "https://api-demo.ksef.mf.gov.pl/v2",
        KsefEnvironment::Production => "https://api.ksef.mf.gov.pl/v2",
    }
    .to_string()
}

/// An invoice's status as KSeF reports it.
#[derive(Debug, Clone)]
pub struct InvoiceStatus {
    pub code: i64,
    pub description: String,
    pub ksef_number: Option<String>,
    /// For a duplicate (440): the invoice KSeF already holds.
    pub original_ksef_number: Option<String>,
    pub original_session: Option<String>,
}

impl InvoiceStatus {
    pub fn pending(&self) -> bool {
        self.code == 100 || self.code == 150
    }
}

/// Logged in: the access token and what renews it.
pub struct Login {
    access: String,
    refresh: String,
}

/// An open online session: its reference and its symmetric key.
pub struct Session {
    pub reference: String,
    key: [u8; 32],
    iv: [u8; 16],
}

pub struct Ksef {
    http: reqwest::Client,
    base: String,
    /// The poll step while KSeF works (authentication, statuses, receipts).
    pub poll: Duration,
}

/// KSeF's refusal in its own words, cleaned and bounded: a remote host's text.
fn exception_detail(body: &Value, text: &str) -> String {
    let list = body["exception"]["exceptionDetailList"].as_array();
    let detail = match list {
        Some(l) if !l.is_empty() => l
            .iter()
            .map(|d| {
                format!(
                    "{} {}",
                    d["exceptionCode"],
                    d["exceptionDescription"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => text.to_string(),
    };
    crate::bounded(&detail, MAX_TEXT)
}

impl Ksef {
    pub fn new(base: String) -> Self {
        let http = crate::http::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Ksef {
            http,
            base,
            poll: Duration::from_millis(500),
        }
    }

    /// One call, 429s waited out as `Retry-After` says. Returns status and body.
    async fn call(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value, String), KsefError> {
        for _ in 0..=MAX_RETRIES {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .header("Accept", "application/json");
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|source| KsefError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs)
                    .min(MAX_RETRY_AFTER);
                tracing::info!(
                    what,
                    wait_s = wait.as_secs(),
                    "KSeF answered 429: waiting as Retry-After says"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let text = self.body(what, resp).await?;
            let value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Ok((status, value, text));
        }
        Err(KsefError::Throttled { what })
    }

    /// An answer's body, at most [`MAX_BODY`] bytes.
    async fn body(
        &self,
        what: &'static str,
        mut resp: reqwest::Response,
    ) -> Result<String, KsefError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| KsefError::Unreachable {
                base: self.base.clone(),
                source,
            })?
        {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(KsefError::Protocol {
                    what,
                    detail: format!("an answer over {MAX_BODY} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A call that must succeed (2xx).
    async fn expect(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, KsefError> {
        success(what, self.call(what, method, path, bearer, body).await?)
    }

    /// The Ministry's public key for `usage` (KsefTokenEncryption, SymmetricKeyEncryption).
    async fn public_key(&self, usage: &str) -> Result<rsa::PublicKey, KsefError> {
        let what = "GET /security/public-key-certificates";
        let certs = self
            .expect(
                what,
                Method::GET,
                "/security/public-key-certificates",
                None,
                None,
            )
            .await?;
        let cert = certs
            .as_array()
            .and_then(|a| {
                a.iter().find(|c| {
                    c["usage"]
                        .as_array()
                        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(usage)))
                })
            })
            .and_then(|c| c["certificate"].as_str())
            .ok_or_else(|| KsefError::Protocol {
                what,
                detail: format!("no certificate for {usage}"),
            })?;
        let der = B64.decode(cert).map_err(|e| KsefError::Protocol {
            what,
            detail: format!("certificate is not base64: {e}"),
        })?;
        let spki = x509_cert::Certificate::from_der(&der)
            .and_then(|c| c.tbs_certificate().subject_public_key_info().to_der())
            .map_err(|e| KsefError::Protocol {
                what,
                detail: format!("certificate is not X.509 DER: {e}"),
            })?;
        rsa::PublicKey::from_public_key_der(&spki).map_err(|e| KsefError::Protocol {
            what,
            detail: format!("certificate's key is not RSA: {e}"),
        })
    }

    /// Authenticates as `nip` with the KSeF token: challenge, the token encrypted
    /// with the time stamp, the operation polled, the tokens redeemed.
    pub async fn login(&self, nip: &str, token: &ApiKey) -> Result<Login, KsefError> {
        let what = "POST /auth/challenge";
        let ch = self
            .expect(what, Method::POST, "/auth/challenge", None, None)
            .await?;
        let (Some(challenge), Some(ts)) = (ch["challenge"].as_str(), ch["timestampMs"].as_i64())
        else {
            return Err(KsefError::Protocol {
                what,
                detail: "no challenge or timestampMs".into(),
            });
        };
        let key = self.public_key("KsefTokenEncryption").await?;
        let plain = format!("{}|{ts}", token.expose());
        let encrypted = key
            .oaep_encrypt::<Sha256>(plain.as_bytes())
            .map_err(|e| KsefError::Crypto(e.to_string()))?;
        let what = "POST /auth/ksef-token";
        let started = self
            .expect(
                what,
                Method::POST,
                "/auth/ksef-token",
                None,
                Some(&json!({
                    "challenge": challenge,
                    "contextIdentifier": {"type": "Nip", "value": nip},
                    "encryptedToken": B64.encode(encrypted),
                })),
            )
            .await?;
        let (Some(reference), Some(auth)) = (
            started["referenceNumber"].as_str(),
            started["authenticationToken"]["token"].as_str(),
        ) else {
            return Err(KsefError::Protocol {
                what,
                detail: "no referenceNumber or authenticationToken".into(),
            });
        };
        let path = format!("/auth/{}", reference_in(what, reference)?);
        for _ in 0..240 {
            let s = self
                .expect("GET /auth/{ref}", Method::GET, &path, Some(auth), None)
                .await?;
            let code = s["status"]["code"].as_i64().unwrap_or(0);
            match code {
                100 => tokio::time::sleep(self.poll).await,
                200 => {
                    let what = "POST /auth/token/redeem";
                    let t = self
                        .expect(what, Method::POST, "/auth/token/redeem", Some(auth), None)
                        .await?;
                    let (Some(access), Some(refresh)) = (
                        t["accessToken"]["token"].as_str(),
                        t["refreshToken"]["token"].as_str(),
                    ) else {
                        return Err(KsefError::Protocol {
                            what,
                            detail: "no accessToken or refreshToken".into(),
                        });
                    };
                    return Ok(Login {
                        access: access.to_string(),
                        refresh: refresh.to_string(),
                    });
                }
                _ => {
                    return Err(KsefError::AuthFailed {
                        code,
                        description: status_text(&s["status"]),
                    })
                }
            }
        }
        Err(KsefError::Protocol {
            what: "GET /auth/{ref}",
            detail: "authentication still pending after 2 minutes".into(),
        })
    }

    /// A new access token from the refresh token (the access token expired: 401).
    async fn refresh(&self, login: &mut Login) -> Result<(), KsefError> {
        let what = "POST /auth/token/refresh";
        let t = self
            .expect(
                what,
                Method::POST,
                "/auth/token/refresh",
                Some(&login.refresh),
                None,
            )
            .await?;
        login.access = t["accessToken"]["token"]
            .as_str()
            .ok_or(KsefError::Protocol {
                what,
                detail: "no accessToken".into(),
            })?
            .to_string();
        Ok(())
    }

    /// An authenticated call; a 401 renews the access token once and tries again.
    async fn authed(
        &self,
        login: &mut Login,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value, String), KsefError> {
        let first = self
            .call(what, method.clone(), path, Some(&login.access), body)
            .await?;
        if first.0 != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        self.refresh(login).await?;
        self.call(what, method, path, Some(&login.access), body)
            .await
    }

    async fn authed_ok(
        &self,
        login: &mut Login,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, KsefError> {
        success(what, self.authed(login, what, method, path, body).await?)
    }

    /// Opens an online session for FA(3) with a fresh AES-256 key.
    pub async fn open_session(&self, login: &mut Login) -> Result<Session, KsefError> {
        let key_bytes =
            crate::crypto::random_bytes::<32>().map_err(|e| KsefError::Crypto(e.to_string()))?;
        let iv =
            crate::crypto::random_bytes::<16>().map_err(|e| KsefError::Crypto(e.to_string()))?;
        let ministry = self.public_key("SymmetricKeyEncryption").await?;
        let wrapped = ministry
            .oaep_encrypt::<Sha256>(&key_bytes)
            .map_err(|e| KsefError::Crypto(e.to_string()))?;
        let what = "POST /sessions/online";
        let s = self
            .authed_ok(
                login,
                what,
                Method::POST,
                "/sessions/online",
                Some(&json!({
                    "formCode": {"systemCode": "FA (3)", "schemaVersion": "1-0E", "value": "FA"},
                    "encryption": {
                        "encryptedSymmetricKey": B64.encode(wrapped),
                        "initializationVector": B64.encode(iv),
                    },
                })),
            )
            .await?;
        let reference =
            reference_in(what, s["referenceNumber"].as_str().unwrap_or(""))?.to_string();
        Ok(Session {
            reference,
            key: key_bytes,
            iv,
        })
    }

    /// Sends one invoice in `session`: its reference number, or KSeF's refusal.
    pub async fn send(
        &self,
        login: &mut Login,
        session: &Session,
        xml: &str,
    ) -> Result<String, KsefError> {
        let plain = xml.as_bytes();
        let encrypted = cbc::Encryptor::<aes::Aes256>::new(&session.key.into(), &session.iv.into())
            .encrypt_padded_vec::<Pkcs7>(plain);
        let what = "POST /sessions/online/{ref}/invoices";
        let body = json!({
            "invoiceHash": B64.encode(Sha256::digest(plain)),
            "invoiceSize": plain.len(),
            "encryptedInvoiceHash": B64.encode(Sha256::digest(&encrypted)),
            "encryptedInvoiceSize": encrypted.len(),
            "encryptedInvoiceContent": B64.encode(&encrypted),
        });
        let path = format!("/sessions/online/{}/invoices", session.reference);
        let r = self
            .authed_ok(login, what, Method::POST, &path, Some(&body))
            .await?;
        reference_in(what, r["referenceNumber"].as_str().unwrap_or("")).map(str::to_string)
    }

    pub async fn status(
        &self,
        login: &mut Login,
        session: &str,
        invoice: &str,
    ) -> Result<InvoiceStatus, KsefError> {
        let what = "GET /sessions/{ref}/invoices/{invoiceRef}";
        let path = format!("/sessions/{session}/invoices/{invoice}");
        let s = self
            .authed_ok(login, what, Method::GET, &path, None)
            .await?;
        let st = &s["status"];
        let ext = &st["extensions"];
        let text = status_text(st);
        // Numbers and references go into URLs and the fleet's records: only
        // well-formed ones are taken.
        let number = |v: &Value| -> Result<Option<String>, KsefError> {
            match v.as_str() {
                None => Ok(None),
                Some(n) if valid_number(n) => Ok(Some(n.to_string())),
                Some(n) => Err(KsefError::Protocol {
                    what,
                    detail: format!("`{}` is not a KSeF number", crate::bounded(n, 60)),
                }),
            }
        };
        Ok(InvoiceStatus {
            code: st["code"].as_i64().ok_or(KsefError::Protocol {
                what,
                detail: "no status.code".into(),
            })?,
            ksef_number: number(&s["ksefNumber"])?,
            original_ksef_number: number(&ext["originalKsefNumber"])?
                .or_else(|| find_ksef_number(&text)),
            original_session: match ext["originalSessionReferenceNumber"].as_str() {
                Some(r) => Some(reference_in(what, r)?.to_string()),
                None => None,
            },
            description: text,
        })
    }

    /// Polls until the status is final, `limit` at most.
    pub async fn final_status(
        &self,
        login: &mut Login,
        session: &str,
        invoice: &str,
        limit: Duration,
    ) -> Result<InvoiceStatus, KsefError> {
        let start = std::time::Instant::now();
        loop {
            let s = self.status(login, session, invoice).await?;
            if !s.pending() || start.elapsed() >= limit {
                return Ok(s);
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    pub async fn close(&self, login: &mut Login, session: &str) -> Result<(), KsefError> {
        let path = format!("/sessions/online/{session}/close");
        self.authed_ok(
            login,
            "POST /sessions/online/{ref}/close",
            Method::POST,
            &path,
            None,
        )
        .await
        .map(|_| ())
    }

    /// The receipt (UPO) of an accepted invoice; `None` while KSeF has not made it.
    pub async fn upo(
        &self,
        login: &mut Login,
        session: &str,
        ksef_number: &str,
    ) -> Result<Option<String>, KsefError> {
        let what = "GET /sessions/{ref}/invoices/ksef/{ksefNumber}/upo";
        let path = format!("/sessions/{session}/invoices/ksef/{ksef_number}/upo");
        let (status, _, text) = self.authed(login, what, Method::GET, &path, None).await?;
        match status {
            s if s.is_success() && !text.trim().is_empty() => Ok(Some(text)),
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(None),
            s => Err(KsefError::Api {
                what,
                status: s.as_u16(),
                detail: crate::bounded(&text, 300),
            }),
        }
    }
}

/// The body of a 2xx answer; any other is KSeF's refusal, in its own words.
fn success(
    what: &'static str,
    (status, value, text): (StatusCode, Value, String),
) -> Result<Value, KsefError> {
    if status.is_success() {
        return Ok(value);
    }
    Err(KsefError::Api {
        what,
        status: status.as_u16(),
        detail: exception_detail(&value, &text),
    })
}

/// A status's description and details, as one line, cleaned and bounded.
fn status_text(st: &Value) -> String {
    let mut t = st["description"].as_str().unwrap_or("").to_string();
    if let Some(details) = st["details"].as_array() {
        for d in details.iter().filter_map(Value::as_str) {
            if t.len() > MAX_TEXT * 4 {
                break;
            }
            t.push_str(" — ");
            t.push_str(d);
        }
    }
    crate::bounded(&t, MAX_TEXT)
}

/// A reference number KSeF gave, checked before it goes into a URL path.
fn reference_in<'a>(what: &'static str, r: &'a str) -> Result<&'a str, KsefError> {
    let ok = !r.is_empty()
        && r.len() <= 100
        && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(r)
    } else {
        Err(KsefError::Protocol {
            what,
            detail: format!("`{}` is not a reference number", crate::bounded(r, 60)),
        })
    }
}

/// A KSeF number in free text (a duplicate's details name the original).
fn find_ksef_number(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| valid_number(w))
        .map(str::to_string)
}

/// `NIP-YYYYMMDD-XXXXXXXXXXXX-CC`: 35 characters, CC the CRC-8 (polynomial 0x07,
/// init 0) of the first 32, as two upper-case hex digits.
pub fn valid_number(n: &str) -> bool {
    if n.len() != 35 || !n.is_ascii() {
        return false;
    }
    let (body, cc) = (&n[..32], &n[33..]);
    n.as_bytes()[32] == b'-' && format!("{:02X}", crc8(body.as_bytes())) == cc
}

pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for b in bytes {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ksef_numbers_carry_their_checksum() {
        let body = "5260250274-20261201-0A1B2C3D4E5F";
        let n = format!("{body}-{:02X}", crc8(body.as_bytes()));
        assert!(valid_number(&n));
        assert!(!valid_number(&n.replace("0A1B", "0A1C")));
        assert_eq!(
            find_ksef_number(&format!(
                "Duplikat faktury. Faktura o numerze KSeF: {n} została już przesłana"
            )),
            Some(n)
        );
        // CRC-8/SMBUS check value of "123456789".
        assert_eq!(crc8(b"123456789"), 0xF4);
    }
}
