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

/// `Err` is a transport problem (not listening yet, timeout): worth retrying.
pub async fn probe(address: &str, port: u16, timeout: Duration) -> Result<Health, String> {
    parse(&mai_fleet_core::probe::get(address, port, timeout).await?)
}

pub(super) fn parse(response: &str) -> Result<Health, String> {
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_string())?;
    if status == 404 {
        return Ok(Health::NoEndpoint);
    }
    if status != 200 {
        return Err(format!("{PATH} answered HTTP {status}"));
    }
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{PATH} is not JSON: {e}"))?;
    match json["initialized"].as_bool() {
        Some(true) => Ok(Health::Active),
        Some(false) => Ok(Health::Inactive(
            json["status"].as_str().unwrap_or("inactive").to_string(),
        )),
        None => Err(format!("{PATH} has no boolean `initialized`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"initialized\":true,\"status\":\"active\"}";
        assert_eq!(parse(ok), Ok(Health::Active));
        let off = "HTTP/1.1 200 OK\r\n\r\n{\"initialized\":false,\"status\":\"inactive\"}";
        assert_eq!(parse(off), Ok(Health::Inactive("inactive".into())));
        assert_eq!(
            parse("HTTP/1.1 404 Not Found\r\n\r\n"),
            Ok(Health::NoEndpoint)
        );
        assert!(parse("HTTP/1.1 500 Oops\r\n\r\n").is_err());
    }
}
