//! Issuer keys: the immutable snapshot the core verifies against, and the store that fetches
//! and refreshes it.

mod set;
mod store;

pub use set::{IgnoredKey, JwksError, KeyKind, KeySet, VerificationKey};
pub use store::{FetchError, KeySource, KeyStore, KeyTiming, Readiness, max_age, refresh_delay};
