//! certbound: an Envoy external authorization (ext_authz) service that accepts an OAuth access
//! token only when it is valid **and bound to the TLS client certificate** of the connection
//! (RFC 8705 certificate-bound access tokens).
//!
//! # Layout
//! - [`authz`]: the decision core. Pure and synchronous over key snapshots, clock passed in:
//!   bearer parsing, certificates and thumbprints, XFCC, JWT verification, the `cnf` binding,
//!   and [`authz::Decision`].
//! - [`keys`]: JWKS parsing into immutable [`keys::KeySet`] snapshots, and the [`keys::KeyStore`]
//!   that fetches (file, URL, OIDC discovery) and refreshes them in the background.
//! - [`check`]: the Check use case: decide, and refetch once (bounded) on an unknown `kid`.
//! - [`grpc`]: the Envoy adapter. Generated code, `CheckRequest` -> core, `Decision` ->
//!   `CheckResponse`, and the tonic service. Nothing else touches proto types.
//! - [`config`]: YAML + environment -> validated [`config::Settings`].
//! - [`server`]: the composition root: builds everything and serves Check, health and reflection.

pub mod authz;
pub mod check;
pub mod config;
pub mod grpc;
pub mod keys;
pub mod server;
