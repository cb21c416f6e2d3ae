//! Clients that put exactly the bytes a test wants on the wire, over TLS with a client
//! certificate: raw HTTP/1.1 (staged writes, any path spelling, no normalisation) and HTTP/2
//! frames through the `h2` crate (HEADERS without END_STREAM, DATA, trailers, RST_STREAM,
//! extended CONNECT). reqwest would normalise `/public/../admin` and never leave a stream open.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::ClientCert;
use super::envoy::Pki;

/// A TLS connection to `127.0.0.1:port` trusting the test CA, presenting `cert` when given,
/// offering one ALPN protocol (`h2` or `http/1.1`).
pub async fn tls(
    pki: &Pki,
    cert: Option<&ClientCert>,
    port: u16,
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// What came back on a raw HTTP/1.1 connection.
#[derive(Debug, Default)]
pub struct RawResponse {
    /// The final status (after any `100 Continue`), `None` when the connection closed first.
    pub status: Option<u16>,
    /// Header lines of the final response, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses everything read from the connection (interim 1xx responses skipped).
    pub fn parse(bytes: &[u8]) -> Self {
        let mut rest = bytes;
        loop {
            let Some(end) = find(rest, b"\r\n\r\n") else {
                return Self::default();
            };
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let body = &rest[end + 4..];
            let mut lines = head.split("\r\n");
            let status: Option<u16> = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok());
            if status.is_some_and(|s| (100..200).contains(&s) && s != 101) {
                rest = body;
                continue;
            }
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Self {
                status,
                headers,
                body: body.to_vec(),
            };
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// One step of a raw HTTP/1.1 exchange.
pub enum Step {
    Send(Vec<u8>),
    Wait(Duration),
    /// Close the connection now (a client that gives up mid-wait).
    Close,
}

/// Runs the steps on a fresh HTTP/1.1 TLS connection, then reads until the server closes or
/// `read_for` passes. Write errors after a refusal (Envoy closed a connection whose body it
/// would not take) end the writing, not the test.
pub async fn http1(
    pki: &Pki,
    cert: Option<&ClientCert>,
    port: u16,
    steps: Vec<Step>,
    read_for: Duration,
) -> RawResponse {
    let mut stream = tls(pki, cert, port, b"http/1.1").await;
    for step in steps {
        match step {
            Step::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                    break;
                }
            }
            Step::Wait(duration) => tokio::time::sleep(duration).await,
            Step::Close => {
                let _ = stream.shutdown().await;
                return RawResponse::default();
            }
        }
    }
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + read_for;
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..n]);
        // A complete response with a content-length: no need to wait for the close.
        let parsed = RawResponse::parse(&received);
        if let (Some(_), Some(len)) = (
            parsed.status,
            parsed
                .header("content-length")
                .and_then(|l| l.parse::<usize>().ok()),
        ) && parsed.body.len() >= len
        {
            break;
        }
    }
    RawResponse::parse(&received)
}

/// Request head bytes: `METHOD path HTTP/1.1`, `host: localhost`, `connection: close`, then
/// `headers`.
/// `GET /items` over HTTP/1.1 (TLS, no client certificate) with `Authorization: DPoP <token>`
/// and `proof`.
pub async fn dpop_get(pki: &Pki, port: u16, token: &str, proof: &str) -> RawResponse {
    let auth = format!("DPoP {token}");
    http1(
        pki,
        None,
        port,
        vec![Step::Send(head(
            "GET",
            "/items",
            &[("authorization", &auth), ("dpop", proof)],
        ))],
        Duration::from_secs(10),
    )
    .await
}

/// The status and the reason of an answer: `ok` when the upstream answered (`x-upstream:
/// seen`), else certbound's `x-certbound-reason` (configured with `reason_header: true`).
pub fn outcome(seen: &RawResponse) -> (Option<u16>, String) {
    let reason = match seen.status {
        Some(200) if seen.header("x-upstream") == Some("seen") => "ok".to_string(),
        _ => seen.header("x-certbound-reason").unwrap_or("").to_string(),
    };
    (seen.status, reason)
}

pub fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        text.push_str("connection: close\r\n");
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// An HTTP/2 connection (h2 over TLS), its driver spawned.
pub async fn http2(
    pki: &Pki,
    cert: Option<&ClientCert>,
    port: u16,
) -> h2::client::SendRequest<bytes::Bytes> {
    let stream = tls(pki, cert, port, b"h2").await;
    let (send, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let send = send.ready().await.unwrap();
    // The server's SETTINGS (extended CONNECT among them) arrive just after the handshake.
    for _ in 0..20 {
        if send.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send
}

/// What came back on an HTTP/2 stream.
#[derive(Debug, Default)]
pub struct H2Response {
    /// `None` when the stream was reset or the connection failed.
    pub status: Option<u16>,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl H2Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `grpc-status` from the trailers, else from the headers (a trailers-only answer).
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }

    pub async fn read(response: h2::client::ResponseFuture, within: Duration) -> Self {
        let Ok(Ok(response)) = tokio::time::timeout(within, response).await else {
            return Self::default();
        };
        let (parts, mut body) = response.into_parts();
        let mut out = Self {
            status: Some(parts.status.as_u16()),
            headers: parts.headers,
            ..Self::default()
        };
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(within, body.data()).await {
            let _ = body.flow_control().release_capacity(chunk.len());
            out.body.extend_from_slice(&chunk);
        }
        if let Ok(Ok(trailers)) = tokio::time::timeout(within, body.trailers()).await {
            out.trailers = trailers;
        }
        out
    }
}

/// An HTTP/2 request head for `https://localhost<path>`.
pub fn h2_request(method: &str, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}
