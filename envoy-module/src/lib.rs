//! certbound inside Envoy: the decision core as a native HTTP filter (an Envoy 1.40 dynamic
//! module), for deployments where an ext_authz call costs Envoy more than the check itself.
//!
//! Same rules, same configuration schema, same answers as the ext_authz service; the certificate
//! is the connection's (Envoy's SHA-256 of the peer certificate) or a sanitized XFCC, and keys are
//! fetched through an Envoy cluster.
//!
//! # Layout
//! - [`abi`]: the C ABI, written by hand (no SDK): types, Envoy's callbacks, the exported hooks,
//!   safe handles. The only `unsafe` code of the crate.
//! - The configuration (`filter_config`, per-route settings) is validated by the core's
//!   [`certbound_core::config::ModuleSettings`] and [`certbound_core::config::RouteSettings`].
//! - [`module`]: the filter configuration shared by all workers: policy, key snapshots, token
//!   cache, and the fetching machinery (main-thread callouts, a timer thread).
//! - [`keys`]: what to fetch and when, with no I/O (unit-tested).
//! - [`filter`]: one stream: read the request, decide, answer.
//! - [`replay`]: the DPoP replay store: in memory, or Redis asked from a thread of its own.
//! - [`grpc`]: how a refusal reads to a gRPC client.

// The hooks reference symbols only Envoy provides, so the C ABI is left out of unit-test builds
// (a test executable could not link them); the end-to-end tests load the real module in Envoy.
#[cfg(not(test))]
mod abi;
#[cfg(not(test))]
mod filter;
mod grpc;
mod keys;
#[cfg(not(test))]
mod module;
#[cfg(not(test))]
mod replay;
