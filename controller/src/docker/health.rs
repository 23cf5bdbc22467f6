//! The tenant contract's optional `GET /health/usage-tracking`, probed over the
//! published port (`mai_fleet_core::probe`) or through the host's agent.

use std::time::Duration;

pub use mai_fleet_core::probe::PATH;

#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    /// `initialized: true`
    Active,
    /// `initialized: false`, with the app's status word.
    Inactive(String),
    /// The image does not serve the endpoint (404): the contract makes it optional.
    NoEndpoint,
}

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
    #[error("{PATH} answered HTTP {0}")]
    Status(u16),
    #[error("{PATH} is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("{PATH} has no boolean `initialized`")]
    NoFlag,
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
    if status == 404 {
        return Ok(Health::NoEndpoint);
    }
    if status != 200 {
        return Err(HealthError::Status(status));
    }
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value = serde_json::from_str(body).map_err(HealthError::NotJson)?;
    match json["initialized"].as_bool() {
        Some(true) => Ok(Health::Active),
        Some(false) => Ok(Health::Inactive(
            json["status"].as_str().unwrap_or("inactive").to_string(),
        )),
        None => Err(HealthError::NoFlag),
    }
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
            Err(HealthError::Status(500))
        ));
        assert!(matches!(parse("garbage"), Err(HealthError::NotHttp)));
    }
}
