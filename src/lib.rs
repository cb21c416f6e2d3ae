//! certbound: an Envoy external authorization (ext_authz) service that accepts an OAuth access
//! token only when it is valid **and bound to the TLS client certificate** of the connection
//! (RFC 8705 certificate-bound access tokens).
//!
//! This package is the ext_authz adapter over the decision core, [`certbound_core`] (`core/`):
//! bearer parsing, certificates and thumbprints, XFCC, JWT verification against key snapshots,
//! the `cnf` binding, route policy and the `Decision` live there. Here is what needs I/O.
//!
//! # Layout
//! - [`keys`]: the [`keys::KeyStore`] that fetches (file, URL, OIDC discovery) and refreshes the
//!   core's key snapshots in the background.
//! - [`introspection`]: RFC 7662 introspection of opaque tokens, cached by token digest.
//! - [`check`]: the decision: JWT or introspected, a bounded refetch on an unknown `kid`, and
//!   the DPoP replay record.
//! - [`authorize`]: the Check use case as adapters call it: admission, decision, metrics and the
//!   decision log; [`answer_gate`] orders expensive Checks behind earlier answers.
//! - [`replay`]: where used DPoP proofs are remembered (memory, or Redis shared by replicas).
//! - [`decision_log`]: the one-line-per-Check log, formatted without tracing's visitors;
//!   [`log_writer`]: the batching, lossy writer behind all logs.
//! - [`metrics`]: the Prometheus metrics; [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`grpc`]: the Envoy adapter. Generated code, `CheckRequest` -> core, `Decision` ->
//!   `CheckResponse`, and the tonic service. Nothing else touches proto types.
//! - [`forward_auth`]: the HTTP authorization adapter (NGINX `auth_request`, Traefik
//!   `ForwardAuth`, Caddy `forward_auth`, HAProxy, Envoy `http_service`).
//! - [`config`]: YAML + environment -> validated [`config::Settings`].
//! - [`fuzzing`]: fuzz entry points (cargo-fuzz in `fuzz/`, corpus replayed by a test).
//! - [`explain`]: `certbound explain`, the real decision for one token, step by step.
//! - [`envoy_config`]: `certbound check-config --module` on a whole Envoy configuration.
//! - [`telemetry`]: OpenTelemetry traces, one span per check, exported over OTLP.
//! - [`server`]: the composition root: builds everything and serves Check, health and reflection.

pub mod admin;
pub mod answer_gate;
pub mod authorize;
pub mod check;
pub mod config;
pub mod decision_log;
pub mod envoy_config;
pub mod explain;
pub mod forward_auth;
pub mod fuzzing;
pub mod grpc;
pub mod introspection;
pub mod keys;
pub mod listener;
pub mod log_writer;
pub mod metrics;
pub mod replay;
pub mod server;
pub mod telemetry;
