//! Issuer keys: JWKS documents parsed into immutable snapshots, the snapshots every check reads,
//! the schedule their fetchers follow, and OIDC discovery.

pub mod discovery;
mod set;
mod snapshots;

pub use set::{IgnoredKey, JwksError, KeySet, PublicKey, VerificationKey};
pub use snapshots::{KeySnapshots, KeyTiming, Readiness, max_age};

pub use crate::jwa::{Algorithm, KeyKind};
