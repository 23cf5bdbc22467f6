//! A stand-in for the mAI app (an Open WebUI fork) that honours the tenant contract
//! of DESIGN.md, faults included. Tests, benchmarks and the demo run it as
//! `mai-fleet/tenant:*` images; it is never deployed to clients.
//!
//! What it reproduces on purpose:
//! - with `OPENROUTER_API_KEY`, `OPENROUTER_EXTERNAL_USER` or `ORGANIZATION_NAME`
//!   missing it starts, serves, answers chats and records nothing (seed 000);
//! - usage rows are updated in place per day, user and model; live counters are
//!   reset when the day changes; `processed_generations` dedups by generation id.
//!
//! Fault switches (baked into the fault images, see tests/tenant/build-images.sh):
//! `MAI_TENANT_FAULT=crash` exits at start; `MAI_TENANT_FAULT=uninit` never
//! initialises tracking even with the env present.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mai_tenant::store::{self, Store, Usage};
use mai_tenant::MODELS;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

const REQUIRED_ENV: [&str; 3] = [
    "OPENROUTER_API_KEY",
    "OPENROUTER_EXTERNAL_USER",
    "ORGANIZATION_NAME",
];

const CANNED_ANSWER: &str = "Dzień dobry! To jest odpowiedź testowa najemcy mAI.";

struct App {
    store: Mutex<Store>,
    org_id: Option<String>,
    generation_seq: AtomicU64,
}

fn main() {
    // `mai-tenant connect HOST:PORT`: whether this container can open a TCP connection
    // there (the image has no shell or tools; the isolation test runs this with exec).
    let args: Vec<String> = std::env::args().collect();
    // Installed as /bin/sleep too, as an app's image based on a distribution has it
    // (the fleet's Kubernetes pods drain with `preStop: /bin/sleep N`).
    if args.first().is_some_and(|a| a.ends_with("/sleep")) {
        let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        std::thread::sleep(Duration::from_secs(seconds));
        return;
    }
    if args.get(1).map(String::as_str) == Some("connect") {
        std::process::exit(probe_connect(args.get(2).map_or("", String::as_str)));
    }
    // `SIM_LEAK_ENV=NAME`: one hostile log line at start, 100 kB with terminal escape
    // sequences and the value of $NAME in it (an app that logs a secret).
    if let Ok(name) = std::env::var("SIM_LEAK_ENV") {
        let value = std::env::var(&name).unwrap_or_default();
        eprintln!(
            "\x1b[31m{}\x1b]0;owned\x07 {name}={value}\x1b[0m",
            "A".repeat(100_000)
        );
    }
    let fault = std::env::var("MAI_TENANT_FAULT").unwrap_or_default();
    if fault == "crash" {
        eprintln!("mai-tenant: fatal: simulated start-up failure (MAI_TENANT_FAULT=crash)");
        std::process::exit(3);
    }
    if let Err(e) = run(fault == "uninit") {
        eprintln!("mai-tenant: fatal: {e}");
        std::process::exit(1);
    }
}

fn probe_connect(target: &str) -> i32 {
    use std::net::ToSocketAddrs;
    let Some(addr) = target.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        eprintln!("connect: bad address {target:?}");
        return 2;
    };
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(_) => {
            println!("connected to {addr}");
            0
        }
        Err(e) => {
            println!("cannot connect to {addr}: {e}");
            1
        }
    }
}

fn run(never_initialise: bool) -> Result<(), String> {
    let data_dir = env_or("DATA_DIR", "/app/backend/data");
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("create {data_dir}: {e}"))?;
    let db_path = format!("{data_dir}/webui.db");
    let journal = env_or("MAI_SQLITE_JOURNAL", "delete");
    let clock = store::Clock::from_env()?;
    let mut store =
        Store::open(&db_path, &journal, clock).map_err(|e| format!("open {db_path}: {e}"))?;

    let missing: Vec<&str> = REQUIRED_ENV
        .iter()
        .copied()
        .filter(|v| std::env::var(v).map(|s| s.is_empty()).unwrap_or(true))
        .collect();
    let org_id = if !missing.is_empty() {
        eprintln!(
            "WARNING: Environment-based usage tracking not configured (missing: {})",
            missing.join(", ")
        );
        None
    } else if never_initialise {
        eprintln!("WARNING: usage tracking initialisation failed (MAI_TENANT_FAULT=uninit)");
        None
    } else {
        let org = std::env::var("OPENROUTER_EXTERNAL_USER").unwrap_or_default();
        let name = std::env::var("ORGANIZATION_NAME").unwrap_or_default();
        let key = std::env::var("OPENROUTER_API_KEY").unwrap_or_default();
        let markup: f64 = env_or("DEFAULT_MARKUP_RATE", "1.3").parse().unwrap_or(1.3);
        store
            .ensure_organization(&org, &name, &key, markup)
            .map_err(|e| format!("initialise organization: {e}"))?;
        eprintln!("INFO: Usage tracking initialized for {name}");
        Some(org)
    };

    if let Some(org) = &org_id {
        record_history(&mut store, org)?;
    }

    let app = Arc::new(App {
        store: Mutex::new(store),
        org_id,
        generation_seq: AtomicU64::new(0),
    });

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }

    if let Some(per_min) = std::env::var("SIM_USAGE_PER_MIN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n > 0)
    {
        let app = Arc::clone(&app);
        std::thread::spawn(move || simulate_load(&app, per_min));
    }

    let port = env_or("PORT", "8080");
    let server = Arc::new(
        Server::http(format!("0.0.0.0:{port}")).map_err(|e| format!("listen :{port}: {e}"))?,
    );
    eprintln!("INFO: listening on :{port}");
    let mut workers = Vec::new();
    for _ in 0..4 {
        let server = Arc::clone(&server);
        let app = Arc::clone(&app);
        let stop = Arc::clone(&stop);
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(req)) => handle(&app, req),
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    for w in workers {
        let _ = w.join();
    }
    // Exit holding the store: a write in flight (the load thread) finishes first, so
    // no hot journal is left for read-only readers (they may not roll it back).
    let _idle = app.store.lock();
    eprintln!("INFO: stopping");
    Ok(())
}

/// `SIM_HISTORY_DAYS=N` and `SIM_HISTORY_PER_DAY=K`: K chats on each of the N days
/// before today, as a tenant in use for a while would have. Generation ids are
/// fixed per day and index, so a restart adds nothing and a larger K adds only the
/// new ones (late usage for past days).
fn record_history(store: &mut Store, org: &str) -> Result<(), String> {
    let num = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let (days, per_day) = (num("SIM_HISTORY_DAYS"), num("SIM_HISTORY_PER_DAY"));
    let mut added = 0;
    for back in 1..=i64::from(days) {
        let day = store.day_before(back);
        for i in 0..per_day {
            let model = MODELS[(i as usize + back as usize) % MODELS.len()].0;
            let prompt = 100 + u64::from((i * 37 + back as u32 * 11) % 900);
            let u = Usage::priced(
                &format!("hist-{org}-{day}-{i}"),
                &format!("user-{}", i % 5),
                model,
                prompt,
                prompt / 2 + 7,
            );
            if store
                .record_on(org, &u, &day)
                .map_err(|e| format!("record history: {e}"))?
            {
                added += 1;
            }
        }
    }
    if added > 0 {
        eprintln!("INFO: recorded {added} historical generation(s) over {days} day(s)");
    }
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn handle(app: &App, mut req: Request) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let (status, body, content_type) = match (req.method(), path.as_str()) {
        (Method::Get, "/health") => (200, json!({"status": "ok"}).to_string(), "application/json"),
        (Method::Get, "/health/usage-tracking") => {
            let initialized = app.org_id.is_some();
            let body = json!({
                "initialized": initialized,
                "client_org_id": std::env::var("OPENROUTER_EXTERNAL_USER").ok(),
                "status": if initialized { "active" } else { "inactive" },
            });
            (200, body.to_string(), "application/json")
        }
        (Method::Post, "/api/chat/completions") => {
            let user = header(&req, "X-User-Id").unwrap_or_else(|| "anonymous".to_string());
            let generation = header(&req, "X-Generation-Id");
            let mut raw = String::new();
            match req.as_reader().read_to_string(&mut raw) {
                Ok(_) => match serde_json::from_str::<Value>(&raw) {
                    Ok(body) => chat(app, &body, &user, generation),
                    Err(e) => (
                        400,
                        json!({"error": e.to_string()}).to_string(),
                        "application/json",
                    ),
                },
                Err(e) => (
                    400,
                    json!({"error": e.to_string()}).to_string(),
                    "application/json",
                ),
            }
        }
        _ => (
            404,
            json!({"error": "not found"}).to_string(),
            "application/json",
        ),
    };
    let mut resp = Response::from_string(body).with_status_code(status);
    if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        resp.add_header(h);
    }
    let _ = req.respond(resp);
}

fn header(req: &Request, name: &'static str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}

/// An OpenAI-style completion with a canned answer; usage is recorded the way mAI
/// records it (only when tracking is initialised).
fn chat(
    app: &App,
    body: &Value,
    user: &str,
    generation: Option<String>,
) -> (u16, String, &'static str) {
    let model = body["model"].as_str().unwrap_or(MODELS[0].0).to_string();
    let prompt_chars: usize = body["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| m["content"].as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    let prompt_tokens = 8 + (prompt_chars as u64).div_ceil(4);
    let completion_tokens = (CANNED_ANSWER.len() as u64).div_ceil(4);
    let id = generation.unwrap_or_else(|| next_generation_id(app));
    let usage = Usage::priced(&id, user, &model, prompt_tokens, completion_tokens);
    record(app, &usage);
    // Like many apps, a request line; at DEBUG, carelessly, the key it used (what
    // `controller logs` must mask).
    eprintln!(
        "INFO: chat {id} user={user} model={model} tokens={}",
        usage.total_tokens()
    );
    if std::env::var("LOG_LEVEL").is_ok_and(|l| l == "DEBUG") {
        eprintln!(
            "DEBUG: called OpenRouter with key {}",
            std::env::var("OPENROUTER_API_KEY").unwrap_or_default()
        );
    }
    let usage_json = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens(),
        "cost": usage.cost_micros as f64 / 1e6,
    });
    if body["stream"].as_bool().unwrap_or(false) {
        // Usage rides only on the last chunk before [DONE], as OpenRouter sends it.
        let mut sse = String::new();
        for word in CANNED_ANSWER.split_inclusive(' ') {
            let chunk = json!({"id": id, "model": model, "choices": [{"index": 0, "delta": {"content": word}}]});
            sse.push_str(&format!("data: {chunk}\n\n"));
        }
        let last = json!({"id": id, "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage_json});
        sse.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
        (200, sse, "text/event-stream")
    } else {
        let resp = json!({
            "id": id,
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": CANNED_ANSWER}, "finish_reason": "stop"}],
            "usage": usage_json,
        });
        (200, resp.to_string(), "application/json")
    }
}

fn next_generation_id(app: &App) -> String {
    let n = app.generation_seq.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("gen-{nanos:x}-{n}")
}

fn record(app: &App, usage: &Usage) {
    let Some(org) = &app.org_id else {
        // The seeds' silent failure: no organization, nothing recorded, no error shown.
        return;
    };
    let Ok(mut store) = app.store.lock() else {
        return;
    };
    if let Err(e) = store.record(org, usage) {
        eprintln!("ERROR: recording usage failed: {e}");
    }
}

/// `SIM_USAGE_PER_MIN=N`: N synthetic requests a minute over 5 users and 4 models.
fn simulate_load(app: &App, per_min: u32) {
    let pause = Duration::from_millis(60_000 / u64::from(per_min));
    let mut i: u64 = 0;
    loop {
        std::thread::sleep(pause);
        let user = format!("user-{}", i % 5 + 1);
        let model = MODELS[(i / 5 % MODELS.len() as u64) as usize].0;
        let id = next_generation_id(app);
        let usage = Usage::priced(&id, &user, model, 40 + i % 300, 20 + i % 500);
        record(app, &usage);
        i += 1;
    }
}
