//! Replay detection for DPoP proofs (RFC 9449 §11.1): each proof's `jti` is accepted once per
//! key within its window. Adapters record a verified proof's [`ReplayKey`] before they let the
//! request through: in memory for one replica ([`MemoryReplayStore`]), or in a store every
//! replica shares (the service's Redis store).

use crate::cache::{Full, TtlCache};
use crate::dpop::ReplayKey;

/// Why a proof could not be checked unused: the store is full or unreachable (fail closed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replay store unavailable: {0}")]
pub struct ReplayError(pub String);

/// Records first uses of proofs.
pub trait ReplayStore: Send + Sync {
    /// `Ok(true)` the first time `key` is seen (it is now recorded until its expiry),
    /// `Ok(false)` for a replay.
    fn record(&self, key: &ReplayKey, now: i64) -> Result<bool, ReplayError>;
}

/// The proofs seen by this process, bounded. When full of live entries it refuses (503) rather
/// than forget one.
pub struct MemoryReplayStore {
    seen: TtlCache<()>,
}

impl MemoryReplayStore {
    pub fn new(max_entries: usize) -> Self {
        Self {
            seen: TtlCache::new(max_entries),
        }
    }
}

impl ReplayStore for MemoryReplayStore {
    fn record(&self, key: &ReplayKey, now: i64) -> Result<bool, ReplayError> {
        self.seen
            .insert_new(key.digest, (), key.expires_at, now)
            .map_err(|Full| {
                ReplayError("the in-memory replay store is full (dpop.replay.max_entries)".into())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_is_accepted_once_within_its_window() {
        let store = MemoryReplayStore::new(10);
        let key = ReplayKey {
            digest: [7; 32],
            expires_at: 1_000,
        };
        assert_eq!(store.record(&key, 900), Ok(true));
        assert_eq!(store.record(&key, 950), Ok(false));
        assert_eq!(store.record(&key, 1_000), Ok(true), "its window is over");
    }
}
