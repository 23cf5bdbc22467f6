//! Pooled transports for remote engines. bollard's own open a new connection for
//! every request: over `tcp://` with TLS a full handshake each (about 50 ms here),
//! over an `ssh://` forward a new SSH channel each (a round trip to the server).
//! Kept-alive connections make a no-op apply over the network several times cheaper
//! (docs/apply.md, the benchmark).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::{BollardRequest, Docker};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::spec::TlsFiles;

/// Why a transport to a remote engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{path}: {source}")]
    Pem {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    #[error("client certificate {path}: {source}")]
    ClientCert {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error(transparent)]
    Client(#[from] bollard::errors::Error),
}

/// A client for `https://ADDR` that shows the client certificate and checks the
/// engine's against the CA (and the address it is reached by).
pub fn connect_tls(addr: &str, tls: &TlsFiles, timeout_s: u64) -> Result<Docker, TransportError> {
    let config = client_config(tls)?;
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    // Small requests on a kept-alive connection must not wait for the peer's
    // delayed ACK (Nagle).
    tcp.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp);
    pooled(https, &format!("https://{addr}"), timeout_s)
}

/// Why a TLS engine refuses this client, in TLS's words (`received fatal alert:
/// UnknownCA`), or `None` when it does not. Asked when a request failed without a
/// cause: with TLS 1.3 the engine judges the client certificate after the handshake,
/// and a pooled client that sees the connection close before its request went out
/// reports only that the connection was not ready. One request on a connection of its
/// own always reads the engine's alert. An engine that cannot be reached at all is no
/// TLS refusal: `None`, and the original error stands.
pub async fn tls_refusal(addr: &str, tls: &TlsFiles, timeout: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = Arc::new(client_config(tls).ok()?);
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).ok()?;
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let attempt = async {
        let mut stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        stream
            .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = [0u8; 64];
        let _answered = stream.read(&mut answer).await?;
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Err(e)) => Some(crate::error_chain(&e)),
        _ => None,
    }
}

/// A bollard client whose requests go through one kept-alive hyper client.
fn pooled<C>(connector: C, base: &str, timeout_s: u64) -> Result<Docker, TransportError>
where
    C: tower_service::Service<hyper::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read
        + hyper::rt::Write
        + hyper_util::client::legacy::connect::Connection
        + Unpin
        + Send
        + 'static,
    C::Future: Unpin + Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Arc::new(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
    );
    Docker::connect_with_custom_transport(
        move |req: BollardRequest| {
            let client = Arc::clone(&client);
            Box::pin(async move {
                client
                    .request(req)
                    .await
                    .map_err(bollard::errors::Error::from)
            })
        },
        Some(base),
        timeout_s,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(TransportError::from)
}

fn client_config(tls: &TlsFiles) -> Result<rustls::ClientConfig, TransportError> {
    let pem = |path: &Path| {
        let path = path.display().to_string();
        move |source| TransportError::Pem { path, source }
    };
    let read_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, TransportError> {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(pem(path))
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&tls.ca)? {
        roots.add(ca).map_err(|source| TransportError::Ca {
            path: tls.ca.display().to_string(),
            source,
        })?;
    }
    let certs = read_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(pem(&tls.key))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TransportError::Tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|source| TransportError::ClientCert {
            path: tls.cert.display().to_string(),
            source,
        })
}

/// A unix socket over a pooled connection: the local end of an `ssh://` engine's
/// forward, where bollard's own transport would open a new SSH channel (a round
/// trip to the server) for every request.
pub fn connect_unix_pooled(path: &Path, timeout_s: u64) -> Result<Docker, TransportError> {
    pooled(
        UnixConnector(Arc::new(path.to_path_buf())),
        "http://docker",
        timeout_s,
    )
}

#[derive(Clone)]
struct UnixConnector(Arc<std::path::PathBuf>);

impl tower_service::Service<hyper::Uri> for UnixConnector {
    type Response = UnixConnection;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let path = Arc::clone(&self.0);
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
            Ok(UnixConnection(hyper_util::rt::TokioIo::new(stream)))
        })
    }
}

struct UnixConnection(hyper_util::rt::TokioIo<tokio::net::UnixStream>);

impl hyper_util::client::legacy::connect::Connection for UnixConnection {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for UnixConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UnixConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
