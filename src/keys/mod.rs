//! Issuer keys: the store that fetches (file, URL, OIDC discovery) and refreshes the core's
//! [`certbound_core::keys::KeySnapshots`] in the background.

mod store;

pub use certbound_core::keys::{KeySource, KeyTiming, Readiness};
pub use store::{FetchError, KeyStore};
