//! The tenant contract's optional `GET /health/usage-tracking`, as one plain HTTP/1.0
//! request: the controller sends it to a published port it can reach, the agent (on
//! the controller's behalf, through the engine) to one bound to its host's loopback.
//! One tiny GET does not justify an HTTP client in either binary.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PATH: &str = "/health/usage-tracking";

/// Most of an answer that is read: the endpoint returns a few dozen bytes.
pub const MAX_RESPONSE: u64 = 64 * 1024;

/// A transport problem (not listening yet, timeout): worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect {address}:{port}: {source}")]
    Connect {
        address: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{address}:{port}: {source}")]
    Exchange {
        address: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {address}:{port} within {timeout:?}")]
    Timeout {
        address: String,
        port: u16,
        timeout: Duration,
    },
}

/// The raw response (status line, headers, body), at most `MAX_RESPONSE` bytes.
pub async fn get(address: &str, port: u16, timeout: Duration) -> Result<String, ProbeError> {
    let (addr, exchange) = (address.to_string(), |source| ProbeError::Exchange {
        address: address.to_string(),
        port,
        source,
    });
    let request = async {
        let mut stream = TcpStream::connect((address, port))
            .await
            .map_err(|source| ProbeError::Connect {
                address: addr,
                port,
                source,
            })?;
        let req = format!(
            "GET {PATH} HTTP/1.0\r\nHost: {address}:{port}\r\nAccept: application/json\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.map_err(exchange)?;
        let mut buf = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut buf)
            .await
            .map_err(exchange)?;
        Ok::<_, ProbeError>(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| ProbeError::Timeout {
            address: address.to_string(),
            port,
            timeout,
        })?
}
