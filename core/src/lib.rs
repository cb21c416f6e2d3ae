//! The certbound decision core: whether a request's OAuth access token is valid and bound to the
//! sender (RFC 8705 mTLS), and what to answer.
//!
//! Pure and synchronous over immutable key snapshots, with the clock passed in. No async runtime,
//! gRPC, HTTP client or socket is in this crate's dependency tree: each adapter (the ext_authz
//! service in the root package, the Envoy dynamic module in `envoy-module/`) converts its host's
//! request into an [`AccessRequest`] once, asks [`Policy::decide`], and turns the [`Decision`] into
//! its host's answer.
//!
//! # Layout
//! - [`request`]: [`AccessRequest`], the request as the core sees it.
//! - [`bearer`], [`certificate`], [`xfcc`]: the credentials as they arrive: the `authorization`
//!   header, forwarded certificates and their RFC 8705 thumbprints, `x-forwarded-client-cert`.
//! - [`keys`]: JWKS documents parsed into immutable [`keys::KeySet`] snapshots.
//! - [`token`]: JWT verification against a key snapshot (RFC 9068, RFC 8725 rules).
//! - [`binding`]: the `cnf` binding check (RFC 8705 `x5t#S256`); [`dpop`]: RFC 9449 proofs,
//!   thumbprints and nonces; [`replay`]: the in-memory replay store and the trait for others.
//! - [`routes`]: route rules, scopes, groups and RFC 9470 step-up.
//! - [`resource`]: protected resources: RFC 9728 metadata and RFC 8707 audiences.
//! - [`policy`]: the validated [`Policy`] and the decision over it.
//! - [`decision`]: [`Decision`], its deny reasons and outcomes; [`answer`]: what it answers.
//! - [`token_cache`], [`cache`]: the verified-token cache and the bounded TTL cache under it.
//! - [`config`]: the configuration schema both adapters read, and its shared validation.
//! - [`clock`]: the injected clock.

pub mod answer;
pub mod bearer;
pub mod binding;
pub mod cache;
pub mod certificate;
pub mod clock;
pub mod config;
pub mod decision;
pub mod detail;
pub mod dpop;
pub mod jwa;
pub mod keys;
pub mod path;
pub mod policy;
pub mod replay;
pub mod request;
pub mod resource;
pub mod routes;
pub mod token;
pub mod token_cache;
pub mod xfcc;

pub use bearer::Authorization;
pub use binding::{BindingMode, CertificateOutcome};
pub use certificate::Thumbprint;
pub use decision::{
    Decision, DenyReason, DpopFacts, Facts, MetadataAnswer, Outcome, UnavailableReason, Upstream,
};
pub use policy::{Credential, IntrospectionPolicy, KeyLookup, Policy, UpstreamPolicy};
pub use request::{AccessRequest, CertificateSource, PeerCertificate};
pub use routes::{Requirements, RoutePolicy, Rule};
pub use token::{IssuerPolicy, VerifiedToken};
pub use token_cache::TokenCache;
