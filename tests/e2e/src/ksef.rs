//! A local stand-in for the KSeF 2.0 API, built from its documented contract: token
//! authentication (challenge, the token RSA-OAEP encrypted with the time stamp,
//! status, redeem, refresh), online sessions (the AES key RSA-OAEP wrapped), invoices
//! AES-256-CBC encrypted with their hashes and sizes, statuses, close and receipts
//! (UPO). Its own key pair (made by openssl) stands in for the Ministry's
//! certificates. It decrypts every invoice, checks hashes, sizes and the FA(3)
//! schema (xmllint, offline), refuses a repeated (seller, kind, number) as a
//! duplicate (440), and can answer 429 (`throttle`), 450 (`reject`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rsa::pkcs8::DecodePrivateKey;
use rsa::sha2::{Digest, Sha256};
use serde_json::{json, Value};

/// What the fake saw and how it misbehaves; the test reads and sets it.
#[derive(Default)]
pub struct KsefState {
    /// Every invoice received and decrypted: (P_2, XML).
    pub received: Vec<(String, String)>,
    /// Every request: method and path (no bodies: they are encrypted anyway).
    pub requests: Vec<String>,
    /// Answer this many 429s (Retry-After: 1) to the next invoice sends.
    pub throttle: u32,
    /// Invoice numbers (P_2) answered with 450 (semantic error).
    pub reject: Vec<String>,
    /// A hostile KSeF: refusals (450) with this text instead of its own.
    pub hostile_text: Option<String>,
    /// A hostile KSeF: acceptances with this as the KSeF number.
    pub hostile_number: Option<String>,
    /// At the next invoice sent, every access token expires (401): the client must
    /// renew its access with the refresh token.
    pub expire_access: bool,
    /// Accepted invoices by (seller NIP, kind, P_2): their KSeF number and session.
    accepted: HashMap<(String, String, String), (String, String)>,
    challenges: HashMap<String, i64>,
    auth_tokens: HashMap<String, u32>,
    redeemed: Vec<String>,
    access: Vec<String>,
    refresh: Vec<String>,
    /// session → (key, iv, closed)
    sessions: HashMap<String, ([u8; 32], [u8; 16], bool)>,
    /// invoice reference → (session, status polls, final status)
    invoices: HashMap<String, (String, u32, Value)>,
    /// KSeF number → receipt
    upos: HashMap<String, String>,
    counter: u64,
}

pub struct FakeKsef {
    pub port: u16,
    pub state: Arc<Mutex<KsefState>>,
    _dir: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FakeKsef {
    /// Listens on `port`; `token` is the KSeF token, `nip` the seller it belongs to,
    /// `schemas` the directory of the FA(3) XSDs.
    pub fn start(port: u16, dir: &Path, token: &str, nip: &str, schemas: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let key = dir.join("ksef-key.der");
        let cert = dir.join("ksef-cert.der");
        let pem = dir.join("ksef-key.pem");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            pem.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            cert.to_str().unwrap(),
            "-subj",
            "/CN=fake KSeF",
            "-days",
            "2",
        ]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            pem.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            key.to_str().unwrap(),
        ]);
        let private =
            rsa::PrivateKey::from_pkcs8_der(&std::fs::read(&key).unwrap()).expect("fake KSeF key");
        let cert_b64 = B64.encode(std::fs::read(&cert).unwrap());
        let server = tiny_http::Server::http(("127.0.0.1", port)).expect("fake KSeF listens");
        let state: Arc<Mutex<KsefState>> = Arc::default();
        let ctx = Ctx {
            state: Arc::clone(&state),
            private,
            cert: cert_b64,
            token: token.to_string(),
            nip: nip.to_string(),
            schemas: schemas.to_path_buf(),
            work: dir.to_path_buf(),
        };
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let bearer = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .and_then(|h| h.value.as_str().strip_prefix("Bearer ").map(str::to_string));
                let method = req.method().to_string();
                let path = req.url().split('?').next().unwrap_or("").to_string();
                ctx.state
                    .lock()
                    .unwrap()
                    .requests
                    .push(format!("{method} {path}"));
                let (status, out, retry) = ctx.answer(&method, &path, bearer.as_deref(), &body);
                let mut resp = tiny_http::Response::from_string(out).with_status_code(status);
                let ct = if path.ends_with("/upo") {
                    "application/xml"
                } else {
                    "application/json"
                };
                resp.add_header(tiny_http::Header::from_bytes("Content-Type", ct).unwrap());
                if retry {
                    resp.add_header(tiny_http::Header::from_bytes("Retry-After", "1").unwrap());
                }
                let _ = req.respond(resp);
            }
        });
        FakeKsef {
            port,
            state,
            _dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }

    /// How many times an invoice numbered `p2` was received.
    pub fn received(&self, p2: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|(n, _)| n == p2)
            .count()
    }

    pub fn sends(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }
}

struct Ctx {
    state: Arc<Mutex<KsefState>>,
    private: rsa::PrivateKey,
    cert: String,
    token: String,
    nip: String,
    schemas: PathBuf,
    work: PathBuf,
}

fn error(code: u16, exception: i64, text: &str) -> (u16, String, bool) {
    (
        code,
        json!({"exception": {"exceptionDetailList": [{"exceptionCode": exception, "exceptionDescription": text}]}}).to_string(),
        false,
    )
}

fn ok(code: u16, v: Value) -> (u16, String, bool) {
    (code, v.to_string(), false)
}

/// `NIP-YYYYMMDD-XXXXXXXXXXXX-CC` with its CRC-8 (polynomial 0x07, init 0).
pub fn ksef_number(nip: &str, counter: u64) -> String {
    let body = format!(
        "{nip}-{}-{:012X}",
        chrono::Utc::now().format("%Y%m%d"),
        0xA1B2_0000_0000u64 + counter
    );
    let mut crc = 0u8;
    for b in body.as_bytes() {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    format!("{body}-{crc:02X}")
}

fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

impl Ctx {
    fn next(&self, s: &mut KsefState, prefix: &str) -> String {
        s.counter += 1;
        format!("{prefix}-{:08}", s.counter)
    }

    fn answer(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> (u16, String, bool) {
        let parts: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
        let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let mut s = self.state.lock().unwrap();
        let access_ok = bearer.is_some_and(|b| s.access.iter().any(|a| a == b));
        match (method, parts.as_slice()) {
            ("POST", ["auth", "challenge"]) => {
                let c = self.next(&mut s, "CH");
                let ms = chrono::Utc::now().timestamp_millis();
                s.challenges.insert(c.clone(), ms);
                ok(
                    200,
                    json!({"challenge": c, "timestamp": chrono::Utc::now().to_rfc3339(), "timestampMs": ms}),
                )
            }
            ("GET", ["security", "public-key-certificates"]) => ok(
                200,
                json!([{"certificate": self.cert, "publicKeyId": "fake-1", "usage": ["KsefTokenEncryption", "SymmetricKeyEncryption"],
                        "validFrom": "2026-01-01T00:00:00Z", "validTo": "2030-01-01T00:00:00Z"}]),
            ),
            ("POST", ["auth", "ksef-token"]) => {
                let Some(ms) = body["challenge"]
                    .as_str()
                    .and_then(|c| s.challenges.remove(c))
                else {
                    return error(400, 21401, "Nieprawidłowe wyzwanie autoryzacyjne.");
                };
                if body["contextIdentifier"]["type"] != "Nip"
                    || body["contextIdentifier"]["value"] != self.nip.as_str()
                {
                    return error(400, 21401, "Nieprawidłowy identyfikator kontekstu.");
                }
                let plain = B64
                    .decode(body["encryptedToken"].as_str().unwrap_or(""))
                    .ok()
                    .and_then(|e| self.private.oaep_decrypt::<Sha256>(&e).ok())
                    .and_then(|p| String::from_utf8(p).ok());
                if plain != Some(format!("{}|{ms}", self.token)) {
                    return error(400, 21401, "Nieprawidłowy token KSeF.");
                }
                let r = self.next(&mut s, "AU");
                let t = self.next(&mut s, "AUTHTOKEN");
                s.auth_tokens.insert(t.clone(), 0);
                ok(
                    202,
                    json!({"referenceNumber": r, "authenticationToken": {"token": t, "validUntil": "2030-01-01T00:00:00Z"}}),
                )
            }
            ("GET", ["auth", _]) => {
                let Some(polls) = bearer.and_then(|b| s.auth_tokens.get_mut(b)) else {
                    return error(401, 0, "Unauthorized");
                };
                *polls += 1;
                // Pending once: the client polls.
                let code = if *polls == 1 { 100 } else { 200 };
                ok(
                    200,
                    json!({"status": {"code": code, "description": if code == 100 { "Uwierzytelnianie w toku" } else { "Uwierzytelnianie zakończone sukcesem" }}}),
                )
            }
            ("POST", ["auth", "token", "redeem"]) => {
                let Some(b) = bearer.filter(|b| s.auth_tokens.contains_key(*b)) else {
                    return error(401, 0, "Unauthorized");
                };
                if s.redeemed.iter().any(|r| r == b) {
                    return error(400, 21301, "Tokeny zostały już pobrane.");
                }
                s.redeemed.push(b.to_string());
                let (a, r) = (self.next(&mut s, "ACCESS"), self.next(&mut s, "REFRESH"));
                s.access.push(a.clone());
                s.refresh.push(r.clone());
                ok(
                    200,
                    json!({"accessToken": {"token": a, "validUntil": "2030-01-01T00:00:00Z"}, "refreshToken": {"token": r, "validUntil": "2030-01-01T00:00:00Z"}}),
                )
            }
            ("POST", ["auth", "token", "refresh"]) => {
                if !bearer.is_some_and(|b| s.refresh.iter().any(|r| r == b)) {
                    return error(401, 0, "Unauthorized");
                }
                let a = self.next(&mut s, "ACCESS");
                s.access.push(a.clone());
                ok(
                    200,
                    json!({"accessToken": {"token": a, "validUntil": "2030-01-01T00:00:00Z"}}),
                )
            }
            _ if !access_ok => error(401, 0, "Unauthorized"),
            ("POST", ["sessions", "online"]) => {
                if body["formCode"]
                    != json!({"systemCode": "FA (3)", "schemaVersion": "1-0E", "value": "FA"})
                {
                    return error(400, 21405, "Nieprawidłowy kod formularza.");
                }
                let key = B64
                    .decode(
                        body["encryption"]["encryptedSymmetricKey"]
                            .as_str()
                            .unwrap_or(""),
                    )
                    .ok()
                    .and_then(|e| self.private.oaep_decrypt::<Sha256>(&e).ok())
                    .and_then(|k| <[u8; 32]>::try_from(k).ok());
                let iv = B64
                    .decode(
                        body["encryption"]["initializationVector"]
                            .as_str()
                            .unwrap_or(""),
                    )
                    .ok()
                    .and_then(|v| <[u8; 16]>::try_from(v).ok());
                let (Some(key), Some(iv)) = (key, iv) else {
                    return error(400, 21405, "Nieprawidłowy klucz szyfrujący.");
                };
                let r = self.next(&mut s, "SO");
                s.sessions.insert(r.clone(), (key, iv, false));
                ok(
                    201,
                    json!({"referenceNumber": r, "validUntil": "2030-01-01T00:00:00Z"}),
                )
            }
            ("POST", ["sessions", "online", session, "invoices"]) => {
                if s.expire_access {
                    s.expire_access = false;
                    s.access.clear();
                    return error(401, 0, "Token wygasł");
                }
                if s.throttle > 0 {
                    s.throttle -= 1;
                    return (
                        429,
                        json!({"status": {"code": 429, "description": "Too Many Requests"}})
                            .to_string(),
                        true,
                    );
                }
                let Some(&(key, iv, closed)) = s.sessions.get(*session) else {
                    return error(404, 21170, "Sesja nie istnieje.");
                };
                if closed {
                    return error(400, 21180, "Sesja jest zamknięta.");
                }
                self.receive(&mut s, session, key, iv, &body)
            }
            ("GET", ["sessions", _, "invoices", reference]) => {
                let Some((_, polls, status)) = s.invoices.get_mut(*reference) else {
                    return error(404, 21165, "Faktura nie istnieje.");
                };
                *polls += 1;
                // In processing on the first look: the client polls to the end.
                if *polls == 1 {
                    return ok(
                        200,
                        json!({"referenceNumber": reference, "status": {"code": 150, "description": "Trwa przetwarzanie"}}),
                    );
                }
                ok(200, status.clone())
            }
            ("POST", ["sessions", "online", session, "close"]) => {
                match s.sessions.get_mut(*session) {
                    Some(sess) => {
                        sess.2 = true;
                        (204, String::new(), false)
                    }
                    None => error(404, 21170, "Sesja nie istnieje."),
                }
            }
            ("GET", ["sessions", session, "invoices", "ksef", number, "upo"]) => {
                let closed = s.sessions.get(*session).is_some_and(|x| x.2);
                match s.upos.get(*number) {
                    Some(u) if closed => (200, u.clone(), false),
                    _ => error(404, 21178, "UPO nie jest jeszcze dostępne."),
                }
            }
            _ => error(404, 0, "Not found"),
        }
    }

    fn receive(
        &self,
        s: &mut KsefState,
        session: &str,
        key: [u8; 32],
        iv: [u8; 16],
        body: &Value,
    ) -> (u16, String, bool) {
        let field = |k: &str| body[k].as_str().unwrap_or("").to_string();
        let Ok(encrypted) = B64.decode(field("encryptedInvoiceContent")) else {
            return error(400, 21405, "Treść nie jest w base64.");
        };
        if B64.encode(Sha256::digest(&encrypted)) != field("encryptedInvoiceHash")
            || body["encryptedInvoiceSize"].as_u64() != Some(encrypted.len() as u64)
        {
            return error(
                400,
                21405,
                "Skrót lub rozmiar zaszyfrowanej faktury się nie zgadza.",
            );
        }
        let Ok(plain) = cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into())
            .decrypt_padded_vec::<Pkcs7>(&encrypted)
        else {
            return error(400, 21405, "Nie można odszyfrować faktury.");
        };
        if B64.encode(Sha256::digest(&plain)) != field("invoiceHash")
            || body["invoiceSize"].as_u64() != Some(plain.len() as u64)
            || plain.len() > 1_000_000
        {
            return error(400, 21405, "Skrót lub rozmiar faktury się nie zgadza.");
        }
        let xml = String::from_utf8(plain).unwrap_or_default();
        let p2 = element(&xml, "P_2").unwrap_or_default();
        s.received.push((p2.clone(), xml.clone()));
        let reference = self.next(s, "INV");
        let status = if xml.starts_with('\u{feff}') || !self.validates(&xml, &reference) {
            json!({"code": 430, "description": "Błąd weryfikacji pliku faktury", "details": ["Dokument nie jest zgodny ze schematem FA(3)"]})
        } else if let (true, Some(text)) = (s.reject.contains(&p2), &s.hostile_text) {
            json!({"code": 450, "description": text, "details": [text]})
        } else if s.reject.contains(&p2) {
            json!({"code": 450, "description": "Błąd weryfikacji semantyki dokumentu faktury", "details": [format!("Faktura {p2}: data wystawienia nie może być wcześniejsza niż data sprzedaży.")]})
        } else if let Some(number) = &s.hostile_number {
            json!({"code": 200, "description": "Sukces", "ksefNumber": number})
        } else {
            let seller = element(&xml, "NIP").unwrap_or_default();
            let kind = element(&xml, "RodzajFaktury").unwrap_or_default();
            let id = (seller.clone(), kind, p2.clone());
            match s.accepted.get(&id) {
                Some((number, original_session)) => {
                    json!({"code": 440, "description": "Duplikat faktury",
                    "details": [format!("Faktura o numerze {p2} została już przyjęta jako {number}.")],
                    "extensions": {"originalKsefNumber": number, "originalSessionReferenceNumber": original_session}})
                }
                None => {
                    s.counter += 1;
                    let number = ksef_number(&seller, s.counter);
                    s.accepted.insert(id, (number.clone(), session.to_string()));
                    let hash = B64.encode(Sha256::digest(xml.as_bytes()));
                    s.upos.insert(number.clone(), format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Potwierdzenie><NumerKSeFDokumentu>{number}</NumerKSeFDokumentu><NumerFaktury>{p2}</NumerFaktury><SkrotDokumentu>{hash}</SkrotDokumentu><NumerReferencyjnySesji>{session}</NumerReferencyjnySesji></Potwierdzenie>"
                    ));
                    json!({"code": 200, "description": "Sukces", "ksefNumber": number})
                }
            }
        };
        let mut answer = json!({"referenceNumber": reference, "invoiceNumber": p2, "status": {
            "code": status["code"], "description": status["description"], "details": status["details"], "extensions": status["extensions"]}});
        if let Some(n) = status["ksefNumber"].as_str() {
            answer["ksefNumber"] = json!(n);
        }
        s.invoices
            .insert(reference.clone(), (session.to_string(), 0, answer));
        ok(202, json!({"referenceNumber": reference}))
    }

    fn validates(&self, xml: &str, name: &str) -> bool {
        let file = self.work.join(format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        let out = Command::new("xmllint")
            .args(["--noout", "--nonet", "--schema"])
            .arg(self.schemas.join("schemat_FA(3)_v1-0E.xsd"))
            .arg(&file)
            .output()
            .expect("run xmllint");
        let _ = std::fs::remove_file(&file);
        out.status.success()
    }
}
