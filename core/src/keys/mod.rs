//! Issuer keys: JWKS documents parsed into immutable snapshots, the snapshots every check reads,
//! the schedule their fetchers follow, and OIDC discovery.

pub mod discovery;
mod set;
mod snapshots;

pub use set::{
    IgnoredKey, JwkMembers, JwksError, KeySet, PublicKey, VerificationKey, key_attributes,
    key_fits, key_material,
};
pub use snapshots::{KeySnapshots, KeyTiming, Readiness, max_age};

pub use crate::jwa::{Algorithm, KeyKind};

/// Where an issuer's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    File(std::path::PathBuf),
    Uri(String),
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery {
        issuer: String,
    },
}
