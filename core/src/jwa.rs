//! The JWS algorithms certbound verifies (RFC 7518, RFC 8037, RFC 9864): asymmetric only.
//!
//! `none` and the HMAC algorithms are not in this set at all, so no configuration and no token
//! can name them: a public key is never used as an HMAC secret (RFC 8725 §3.1).

use std::fmt;

/// A JWS signature algorithm with a public verification key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    /// ECDSA on P-521 with SHA-512.
    ES512,
    /// RFC 8037 EdDSA; certbound supports it over Ed25519 only.
    EdDSA,
    /// RFC 9864's fully specified name for EdDSA over Ed25519.
    Ed25519,
}

/// The kind of public key, which decides the algorithms it may verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    EcP521,
    Ed25519,
}

impl Algorithm {
    /// Every supported algorithm: the default when an issuer pins none.
    pub const ALL: [Algorithm; 11] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
        Algorithm::EdDSA,
        Algorithm::Ed25519,
    ];

    /// The algorithm an `alg` value names; `alg` values are case-sensitive (RFC 7515 §4.1.1).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::ES512 => "ES512",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::Ed25519 => "Ed25519",
        }
    }

    /// The key kind this algorithm needs: the token's `alg` never chooses the key type by itself.
    pub fn key_kind(self) -> KeyKind {
        use Algorithm::*;
        match self {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => KeyKind::Rsa,
            ES256 => KeyKind::EcP256,
            ES384 => KeyKind::EcP384,
            ES512 => KeyKind::EcP521,
            EdDSA | Ed25519 => KeyKind::Ed25519,
        }
    }

    /// Whether a JWK's `alg` pin allows this algorithm. `EdDSA` and `Ed25519` name the same
    /// signature over an Ed25519 key, so a key pinned to either verifies both.
    pub fn satisfies_pin(self, pinned: Algorithm) -> bool {
        self == pinned
            || (self.key_kind() == KeyKind::Ed25519 && pinned.key_kind() == self.key_kind())
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.as_str()), Some(alg));
        }
        for name in [
            "none", "None", "HS256", "HS512", "es256", "EDDSA", "Ed448", "",
        ] {
            assert_eq!(Algorithm::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn both_ed25519_names_need_an_ed25519_key() {
        assert_eq!(Algorithm::EdDSA.key_kind(), KeyKind::Ed25519);
        assert_eq!(Algorithm::Ed25519.key_kind(), KeyKind::Ed25519);
        assert!(Algorithm::Ed25519.satisfies_pin(Algorithm::EdDSA));
        assert!(Algorithm::EdDSA.satisfies_pin(Algorithm::Ed25519));
        assert!(!Algorithm::ES256.satisfies_pin(Algorithm::ES384));
        assert_eq!(Algorithm::ES512.key_kind(), KeyKind::EcP521);
    }
}
