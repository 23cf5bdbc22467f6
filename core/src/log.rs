//! Logging of the daemons (`agent`, `controller serve`): `tracing` events to stderr
//! as text or one JSON object a line, filtered `RUST_LOG`-style; and [`Repeats`], which
//! keeps a failure that repeats every cycle from filling the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and fields.
    Json,
}

/// The logging flags every daemon takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log lines as text or one JSON object a line
    #[arg(long, env = "MAI_FLEET_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// What to log, as RUST_LOG: `info`, `debug`, `info,sqlx=warn,mai_fleet::web=debug`
    #[arg(
        long = "log",
        env = "RUST_LOG",
        default_value = "info,sqlx::postgres::notice=warn"
    )]
    pub filter: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log filter `{filter}`: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a logger is already installed")]
    Installed,
}

/// Installs the process's logger. `log` records (bollard, sqlx's connection layer) go
/// through it too.
pub fn init(args: &LogArgs) -> Result<(), LogError> {
    let filter = EnvFilter::builder()
        .parse(&args.filter)
        .map_err(|source| LogError::Filter {
            filter: args.filter.clone(),
            source,
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|_| LogError::Installed)?;
    // A panic (a supervised job's, say) is an event like any other: one line, in the
    // chosen format, not a bare backtrace on stderr.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(location = location.as_str(), "panic: {message}");
    }));
    Ok(())
}

/// Rate limit for a failure that repeats: the first occurrence of a key is logged,
/// then at most one a period, saying how many were held back. A key that recovers
/// ([`Repeats::clear`]) is logged at once the next time it fails.
pub struct Repeats {
    period: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Repeats {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held back since the last logged one)` when this occurrence is to be
    /// logged, `None` when it is to be held back.
    pub fn check(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < self.period => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// The failure is over: whether it had been seen (so a recovery can be logged once).
    pub fn clear(&self, key: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.remove(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_log_the_first_then_one_a_period() {
        let r = Repeats::new(Duration::from_millis(50));
        assert_eq!(r.check("db"), Some(0));
        assert_eq!(r.check("db"), None);
        assert_eq!(r.check("db"), None);
        assert_eq!(r.check("other"), Some(0), "keys are apart");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.check("db"), Some(2), "says how many were held back");
        assert!(r.clear("db"));
        assert!(!r.clear("db"));
        assert_eq!(r.check("db"), Some(0), "after recovery, at once");
    }
}
