//! The request as the core sees it, converted once by each adapter from what its host sends.

use std::collections::HashMap;

use serde::Deserialize;

use crate::bearer::Authorization;

/// Where a client certificate may be read from, in the configured order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    /// The connection's certificate: `attributes.source.certificate` for the ext_authz service
    /// (needs `include_peer_certificate: true` in Envoy), the connection's certificate digest for
    /// the dynamic module.
    Peer,
    /// `Cert=` (or `Hash=`) of the last `x-forwarded-client-cert` element (or the one added by
    /// the configured `By` identity); trust it only behind a proxy that sanitizes the header.
    Xfcc,
    /// RFC 9440 `client-cert` header (`:base64-DER:`); trust it only behind a proxy that sets it.
    ClientCert,
    /// A proxy's own certificate header (`certificate.header`: NGINX, Traefik, Caddy, HAProxy);
    /// trust it only behind a proxy that overwrites or removes the client's copy.
    Header,
}

impl CertificateSource {
    /// Its name in the configuration (`certificate.sources`), for logs and traces.
    pub fn name(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Xfcc => "xfcc",
            Self::ClientCert => "client_cert",
            Self::Header => "header",
        }
    }
}

/// The client certificate of this connection, as the host reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PeerCertificate {
    /// None was presented (or the host does not report it).
    #[default]
    Absent,
    /// URL-encoded PEM of the leaf, as ext_authz sends `attributes.source.certificate`.
    UrlEncodedPem(String),
    /// Hex SHA-256 of the leaf's DER, as Envoy's `connection.sha256_peer_certificate_digest`
    /// attribute gives it to a dynamic module.
    Sha256Hex(String),
}

impl PeerCertificate {
    /// The size of the value as sent, for the header-size limit.
    pub fn len(&self) -> usize {
        match self {
            PeerCertificate::Absent => 0,
            PeerCertificate::UrlEncodedPem(text) | PeerCertificate::Sha256Hex(text) => text.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The request as the core sees it: converted once from what the host sends (Envoy's
/// `CheckRequest`, or the headers and connection a dynamic module reads).
#[derive(Clone, Debug, Default)]
pub struct AccessRequest {
    pub authorization: Authorization,
    /// The peer's leaf certificate.
    pub peer_certificate: PeerCertificate,
    /// The `x-forwarded-client-cert` header, if sent.
    pub xfcc: Option<String>,
    /// `x-request-id`, for logs.
    pub request_id: Option<String>,
    /// W3C `traceparent`, for logs.
    pub traceparent: Option<String>,
    /// RFC 9440 `client-cert` header, if sent.
    pub client_cert: Option<String>,
    /// The `certificate.header` header, if configured and sent.
    pub certificate_header: Option<String>,
    pub method: String,
    /// Path with the query, as sent.
    pub path: String,
    /// `:authority`.
    pub host: String,
    /// `http` or `https`, as Envoy saw the request (for DPoP's `htu`).
    pub scheme: String,
    /// The `DPoP` header's values (RFC 9449), each one separately when the host keeps them apart.
    pub dpop_proofs: Vec<String>,
    /// `x-forwarded-proto` and `x-forwarded-host`, read only with
    /// `dpop.trust_forwarded_headers`.
    pub forwarded_proto: Option<String>,
    pub forwarded_host: Option<String>,
    /// The route's `context_extensions` from Envoy's `check_settings`.
    pub context_extensions: HashMap<String, String>,
    /// `OPTIONS` with `origin` and `access-control-request-method`.
    pub cors_preflight: bool,
}
