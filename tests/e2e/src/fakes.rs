//! Local stand-ins for the internet services alerts talk to, built from their
//! documented contracts: OpenRouter (its API reference; `crate::openrouter`), a
//! webhook receiver (Alertmanager's payload, also Slack's `{"text"}`), and an SMTP
//! server that keeps what it is sent.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use crate::openrouter::FakeOpenRouter;

/// A webhook receiver: keeps every POST (path, JSON body, when); answers 500
/// until `fail_until`.
pub struct FakeWebhook {
    pub port: u16,
    pub received: Arc<Mutex<Vec<(String, serde_json::Value, Instant)>>>,
    pub attempts: Arc<Mutex<usize>>,
    pub fail_until: Arc<Mutex<Option<Instant>>>,
}

impl FakeWebhook {
    pub fn start(port: u16) -> Self {
        let server = tiny_http::Server::http(("127.0.0.1", port)).expect("fake webhook listens");
        let received: Arc<Mutex<Vec<(String, serde_json::Value, Instant)>>> = Arc::default();
        let attempts = Arc::new(Mutex::new(0));
        let fail_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (r, a, f) = (
            Arc::clone(&received),
            Arc::clone(&attempts),
            Arc::clone(&fail_until),
        );
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                *a.lock().unwrap() += 1;
                let failing = f.lock().unwrap().is_some_and(|t| Instant::now() < t);
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let status = if failing {
                    500
                } else {
                    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    r.lock()
                        .unwrap()
                        .push((req.url().to_string(), v, Instant::now()));
                    200
                };
                let _ = req.respond(tiny_http::Response::from_string("").with_status_code(status));
            }
        });
        Self {
            port,
            received,
            attempts,
            fail_until,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Bodies received on `path`.
    pub fn bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, b, _)| b.clone())
            .collect()
    }
}

/// An SMTP server (enough of RFC 5321 for a client to deliver) keeping each
/// message's text and when it arrived.
pub struct FakeSmtp {
    pub port: u16,
    pub messages: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl FakeSmtp {
    pub fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("fake SMTP listens");
        let messages: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let m = Arc::clone(&messages);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().expect("clone stream");
                    let mut lines = BufReader::new(stream);
                    let _ = out.write_all(b"220 fake-smtp ESMTP\r\n");
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if lines.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.trim_end().to_ascii_uppercase();
                        let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                            b"250-fake-smtp\r\n250 8BITMIME\r\n"
                        } else if cmd.starts_with("DATA") {
                            let _ = out.write_all(b"354 go ahead\r\n");
                            let mut text = String::new();
                            loop {
                                let mut l = String::new();
                                if lines.read_line(&mut l).unwrap_or(0) == 0 {
                                    return;
                                }
                                if l == ".\r\n" || l == ".\n" {
                                    break;
                                }
                                text.push_str(&l);
                            }
                            m.lock().unwrap().push((text, Instant::now()));
                            b"250 queued\r\n"
                        } else if cmd.starts_with("QUIT") {
                            let _ = out.write_all(b"221 bye\r\n");
                            return;
                        } else {
                            b"250 OK\r\n"
                        };
                        let _ = out.write_all(reply);
                    }
                });
            }
        });
        Self { port, messages }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn texts(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }
}
