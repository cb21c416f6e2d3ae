//! The request as the core sees it, converted once by each adapter from what its host sends.

use std::collections::HashMap;

use serde::Deserialize;

use crate::bearer::Authorization;

/// Where a client certificate may be read from, in the configured order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    /// `attributes.source.certificate` (needs `include_peer_certificate: true` in Envoy).
    Peer,
    /// `Cert=` (or `Hash=`) of the last `x-forwarded-client-cert` element (or the one added by
    /// the configured `By` identity); trust it only behind a proxy that sanitizes the header.
    Xfcc,
    /// RFC 9440 `client-cert` header (`:base64-DER:`); trust it only behind a proxy that sets it.
    ClientCert,
}

/// The request as the core sees it: converted once from Envoy's `CheckRequest`.
#[derive(Clone, Debug, Default)]
pub struct AccessRequest {
    pub authorization: Authorization,
    /// URL-encoded PEM of the peer's leaf certificate; empty when there was none.
    pub peer_certificate: String,
    /// The `x-forwarded-client-cert` header, if sent.
    pub xfcc: Option<String>,
    /// `x-request-id`, for logs.
    pub request_id: Option<String>,
    /// W3C `traceparent`, for logs.
    pub traceparent: Option<String>,
    /// RFC 9440 `client-cert` header, if sent.
    pub client_cert: Option<String>,
    pub method: String,
    pub path: String,
    pub host: String,
    /// The route's `context_extensions` from Envoy's `check_settings`.
    pub context_extensions: HashMap<String, String>,
    /// `OPTIONS` with `origin` and `access-control-request-method`.
    pub cors_preflight: bool,
}
