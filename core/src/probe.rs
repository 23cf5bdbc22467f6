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

/// The raw response (status line, headers, body), at most `MAX_RESPONSE` bytes. `Err`
/// is a transport problem (not listening yet, timeout): worth retrying.
pub async fn get(address: &str, port: u16, timeout: Duration) -> Result<String, String> {
    let request = async {
        let mut stream = TcpStream::connect((address, port))
            .await
            .map_err(|e| format!("connect {address}:{port}: {e}"))?;
        let req = format!(
            "GET {PATH} HTTP/1.0\r\nHost: {address}:{port}\r\nAccept: application/json\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| format!("no answer from {address}:{port} within {timeout:?}"))?
}
