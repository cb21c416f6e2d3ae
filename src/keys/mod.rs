//! Issuer keys: the store that fetches (file, URL, OIDC discovery) and refreshes the immutable
//! [`certbound_core::keys::KeySet`] snapshots the core verifies against.

mod store;

pub use store::{FetchError, KeySource, KeyStore, KeyTiming, Readiness, max_age, refresh_delay};
