//! A local stand-in for the NBP API, built from its documented contract:
//! `/exchangerates/rates/{a|c}/usd/{day}/` and `.../{start}/{end}/`, JSON, tables on
//! business days only (weekends and the holidays given are 404 "Brak danych"), at
//! most 93 days a range (400 beyond). It can be taken down (503) and back up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{Datelike, NaiveDate, Weekday};

pub struct FakeNbp {
    pub port: u16,
    pub down: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
    pub holidays: Vec<NaiveDate>,
}

/// Polish public holidays on fixed dates (movable feasts are left out of the fake).
pub fn fixed_holidays(year: i32) -> Vec<NaiveDate> {
    [
        (1, 1),
        (1, 6),
        (5, 1),
        (5, 3),
        (8, 15),
        (11, 1),
        (11, 11),
        (12, 24),
        (12, 25),
        (12, 26),
    ]
    .iter()
    .filter_map(|(m, d)| NaiveDate::from_ymd_opt(year, *m, *d))
    .collect()
}

impl FakeNbp {
    /// Serves on `port` with the fixed holidays of the years around today plus `extra`.
    pub fn start(port: u16, extra: &[NaiveDate]) -> Self {
        let server = tiny_http::Server::http(("127.0.0.1", port)).expect("fake NBP listens");
        let year = chrono::Utc::now().year();
        let mut holidays: Vec<NaiveDate> = (year - 1..=year + 1).flat_map(fixed_holidays).collect();
        holidays.extend_from_slice(extra);
        let down = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (d, r, h) = (Arc::clone(&down), Arc::clone(&requests), holidays.clone());
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                r.fetch_add(1, Ordering::SeqCst);
                let (status, body) = if d.load(Ordering::SeqCst) {
                    (503, "Service Unavailable".to_string())
                } else {
                    answer(req.url(), &h)
                };
                let header = tiny_http::Header::from_bytes(
                    "Content-Type",
                    "application/json; charset=utf-8",
                )
                .expect("header");
                let _ = req.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header),
                );
            }
        });
        Self {
            port,
            down,
            requests,
            holidays,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api", self.port)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn publishes(&self, day: NaiveDate) -> bool {
        publishes(day, &self.holidays)
    }

    /// The table a day uses: its own or the last before it, 7 days back at most.
    pub fn rate_for(&self, day: NaiveDate) -> Option<(NaiveDate, String, String)> {
        (0..=7)
            .map(|back| day - chrono::Duration::days(back))
            .find(|d| self.publishes(*d))
            .map(|d| (d, ask(d), table_no(d, 'C')))
    }
}

fn publishes(day: NaiveDate, holidays: &[NaiveDate]) -> bool {
    !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) && !holidays.contains(&day)
}

/// Rates vary by day so that using the wrong day's rate shows.
pub fn ask(day: NaiveDate) -> String {
    format!("3.{:04}", 6000 + (day.ordinal() * 7) % 900)
}

pub fn mid(day: NaiveDate) -> String {
    format!("3.{:04}", 5500 + (day.ordinal() * 7) % 900)
}

fn table_no(day: NaiveDate, table: char) -> String {
    format!("{:03}/{table}/NBP/{}", day.ordinal(), day.year())
}

fn answer(url: &str, holidays: &[NaiveDate]) -> (u16, String) {
    let path = url.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // api/exchangerates/rates/{table}/usd/{start}[/{end}]
    let (table, dates) = match parts.as_slice() {
        ["api", "exchangerates", "rates", t, "usd", rest @ ..]
            if !rest.is_empty() && rest.len() <= 2 =>
        {
            (*t, rest)
        }
        _ => return (400, "400 BadRequest - Nieprawidłowe zapytanie".into()),
    };
    let parse = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d");
    let (Ok(start), Ok(end)) = (parse(dates[0]), parse(dates[dates.len() - 1])) else {
        return (400, "400 BadRequest - Błędny zakres dat".into());
    };
    if end < start || (end - start).num_days() > 92 {
        return (400, "400 BadRequest - Przekroczony limit 93 dni".into());
    }
    let letter = match table {
        "c" | "C" => 'C',
        "a" | "A" => 'A',
        _ => return (400, "400 BadRequest - Błędna tabela".into()),
    };
    let mut rates = Vec::new();
    let mut day = start;
    while day <= end {
        if publishes(day, holidays) {
            rates.push(if letter == 'C' {
                format!(
                    r#"{{"no":"{}","effectiveDate":"{day}","bid":3.5000,"ask":{}}}"#,
                    table_no(day, 'C'),
                    ask(day)
                )
            } else {
                format!(
                    r#"{{"no":"{}","effectiveDate":"{day}","mid":{}}}"#,
                    table_no(day, 'A'),
                    mid(day)
                )
            });
        }
        day += chrono::Duration::days(1);
    }
    if rates.is_empty() {
        return (404, "404 NotFound - Not Found - Brak danych".into());
    }
    (
        200,
        format!(
            r#"{{"table":"{letter}","currency":"dolar amerykański","code":"USD","rates":[{}]}}"#,
            rates.join(",")
        ),
    )
}
