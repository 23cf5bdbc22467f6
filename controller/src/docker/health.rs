//! The tenant contract's optional `GET /health/usage-tracking`, probed over the
//! published port (`mai_fleet_core::probe`) or through the host's agent.

use std::time::Duration;

pub use crate::execution::{Health, HealthAnswerError, HEALTH_PATH as PATH};

/// Why no health answer was had: every case is worth retrying until verification's
/// deadline (the app may still be starting).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Probe(#[from] mai_fleet_core::probe::ProbeError),
    #[error("probe through agent {agent}: {source}")]
    Exec {
        agent: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The agent's probe failed; its words, bounded.
    #[error("{said} (through agent {agent})")]
    Agent { agent: String, said: String },
    #[error("not an HTTP response")]
    NotHttp,
    #[error(transparent)]
    Answer(#[from] HealthAnswerError),
}

pub async fn probe(address: &str, port: u16, timeout: Duration) -> Result<Health, HealthError> {
    parse(&mai_fleet_core::probe::get(address, port, timeout).await?)
}

pub(super) fn parse(response: &str) -> Result<Health, HealthError> {
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(HealthError::NotHttp)?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(crate::execution::read_health(status, body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"initialized\":true,\"status\":\"active\"}";
        assert_eq!(parse(ok).unwrap(), Health::Active);
        let off = "HTTP/1.1 200 OK\r\n\r\n{\"initialized\":false,\"status\":\"inactive\"}";
        assert_eq!(parse(off).unwrap(), Health::Inactive("inactive".into()));
        assert_eq!(
            parse("HTTP/1.1 404 Not Found\r\n\r\n").unwrap(),
            Health::NoEndpoint
        );
        assert!(matches!(
            parse("HTTP/1.1 500 Oops\r\n\r\n"),
            Err(HealthError::Answer(HealthAnswerError::Status(500)))
        ));
        assert!(matches!(parse("garbage"), Err(HealthError::NotHttp)));
    }
}
