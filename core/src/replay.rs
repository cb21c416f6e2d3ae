//! Replay detection for DPoP proofs (RFC 9449 §11.1): each proof's `jti` is accepted once per
//! key within its window. Adapters record a verified proof's [`ReplayKey`] before they let the
//! request through: in memory for one replica ([`MemoryReplayStore`]), or in a store every
//! replica shares (the service's Redis store).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;

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
///
/// Shared by every client, so no one client may fill it: each proof key (`jkt`) may hold at
/// most `max_per_key` live proofs (past that, only its own requests get 503), and entries are
/// placed in shards by a keyed hash a client cannot predict (grinding `jti`s cannot aim at one
/// shard, see [`MemoryReplayStore::place`]). Capacity: `max_entries` proofs live at once, each kept for its window
/// (`dpop.max_age_seconds`): 200,000 by default is ~3,000 accepted proofs per second with a 60 s
/// window, in ~100 bytes each (~20 MiB when full).
pub struct MemoryReplayStore {
    seen: TtlCache<()>,
    /// Keys the shard hash (SipHash with a random 128-bit key per store, never leaves the
    /// process).
    placement: RandomState,
    max_per_key: usize,
    /// Expiry times of each key's proofs (expired ones swept now and then, see [`KeyProofs`]).
    per_key: Mutex<HashMap<[u8; 32], KeyProofs>>,
    max_entries: usize,
}

/// One key's proofs: their expiry times. Expired ones are swept when the key reaches its quota
/// or twice the size it had after the last sweep, not on every record (a busy key holds
/// thousands): the vector stays within twice the key's live proofs (plus a few), and a record
/// costs O(1) amortised.
#[derive(Default)]
struct KeyProofs {
    expiries: Vec<i64>,
    sweep_at: usize,
}

impl KeyProofs {
    fn sweep(&mut self, now: i64) {
        self.expiries.retain(|&at| at > now);
        self.sweep_at = (2 * self.expiries.len()).max(16);
    }
}

impl MemoryReplayStore {
    pub fn new(max_entries: usize, max_per_key: usize) -> Self {
        Self {
            seen: TtlCache::new(max_entries),
            placement: RandomState::new(),
            max_per_key: max_per_key.max(1),
            per_key: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// Where a proof's digest is kept: the digest with its first byte (which picks the
    /// [`TtlCache`] shard) XORed with a keyed hash of the other 31. For given other bytes this
    /// maps the first byte one-to-one, so distinct digests stay distinct keys, and a client that
    /// grinds `jti`s (it can compute the digests) cannot tell which shard a proof lands in.
    /// (A keyed SipHash: about a tenth of the HMAC-SHA256 this used to be.)
    fn place(&self, digest: &[u8; 32]) -> [u8; 32] {
        let mut placed = *digest;
        placed[0] ^= self.placement.hash_one(&digest[1..]).to_le_bytes()[0];
        placed
    }
}

impl ReplayStore for MemoryReplayStore {
    fn record(&self, key: &ReplayKey, now: i64) -> Result<bool, ReplayError> {
        let mut per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        if per_key.len() > self.max_entries {
            per_key.retain(|_, proofs| {
                proofs.sweep(now);
                !proofs.expiries.is_empty()
            });
        }
        let proofs = per_key.entry(key.holder).or_default();
        if proofs.expiries.len() >= proofs.sweep_at.min(self.max_per_key) {
            proofs.sweep(now);
        }
        let expiries = &mut proofs.expiries;
        let placed = self.place(&key.digest);
        if expiries.len() >= self.max_per_key {
            // A replay is a replay whatever the quota. (Under the quota, `insert_new` below
            // answers a live entry as a replay itself: one look into the shard, not two.)
            if self.seen.get(&placed, now).is_some() {
                return Ok(false);
            }
            return Err(ReplayError(
                "this proof key holds dpop.replay.max_per_key live proofs".into(),
            ));
        }
        let first = self
            .seen
            .insert_new(placed, (), key.expires_at, now)
            .map_err(|Full| {
                ReplayError("the in-memory replay store is full (dpop.replay.max_entries)".into())
            })?;
        if first {
            expiries.push(key.expires_at);
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(digest: u8, holder: u8, expires_at: i64) -> ReplayKey {
        ReplayKey {
            digest: [digest; 32],
            holder: [holder; 32],
            expires_at,
            live_from: 0,
        }
    }

    #[test]
    fn a_proof_is_accepted_once_within_its_window() {
        let store = MemoryReplayStore::new(10, 10);
        let key = key(7, 1, 1_000);
        assert_eq!(store.record(&key, 900), Ok(true));
        assert_eq!(store.record(&key, 950), Ok(false));
        assert_eq!(store.record(&key, 1_000), Ok(true), "its window is over");
    }

    #[test]
    fn one_key_cannot_fill_the_store_for_the_others() {
        let store = MemoryReplayStore::new(100, 3);
        for jti in 0..3 {
            assert_eq!(store.record(&key(jti, 1, 1_000), 900), Ok(true));
        }
        // The fourth live proof of key 1 is refused; a replay is still a replay.
        assert!(store.record(&key(3, 1, 1_000), 900).is_err());
        assert_eq!(store.record(&key(0, 1, 1_000), 900), Ok(false));
        // Other keys are unaffected.
        assert_eq!(store.record(&key(10, 2, 1_000), 900), Ok(true));
        // Once key 1's proofs expire, it has its quota back.
        assert_eq!(store.record(&key(4, 1, 2_000), 1_000), Ok(true));
    }

    #[test]
    fn a_busy_key_keeps_about_its_live_proofs_not_every_proof_it_sent() {
        let store = MemoryReplayStore::new(1 << 20, 1 << 20);
        // 100,000 proofs of one key, one per second, each live for 10 s.
        for n in 0..100_000u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&n.to_be_bytes());
            let key = ReplayKey {
                digest,
                holder: [1; 32],
                expires_at: i64::from(n) + 10,
                live_from: i64::from(n),
            };
            assert_eq!(store.record(&key, i64::from(n)), Ok(true));
        }
        let per_key = store.per_key.lock().expect("lock");
        let kept = per_key[&[1; 32]].expiries.len();
        assert!(kept <= 2 * 10 + 16, "{kept} expiry times kept");
    }

    #[test]
    fn placement_is_keyed_per_store() {
        let a = MemoryReplayStore::new(10, 10);
        let b = MemoryReplayStore::new(10, 10);
        // The shard byte of the same digests differs between two stores: a client cannot
        // compute where its proofs land.
        let differs = (0..64u8)
            .filter(|&n| a.place(&[n; 32])[0] != b.place(&[n; 32])[0])
            .count();
        assert!(differs > 32, "{differs} of 64 placed apart");
    }

    #[test]
    fn placement_keeps_distinct_digests_distinct() {
        let store = MemoryReplayStore::new(10, 10);
        // Digests that differ in the shard byte alone, or only elsewhere.
        let mut placed = std::collections::HashSet::new();
        for first in 0..=255u8 {
            for last in 0..4u8 {
                let mut digest = [7u8; 32];
                digest[0] = first;
                digest[31] = last;
                assert!(placed.insert(store.place(&digest)), "{first} {last}");
                assert_eq!(store.place(&digest)[1..], digest[1..]);
            }
        }
    }

    #[test]
    fn at_its_quota_a_key_still_gets_replays_answered_as_replays() {
        let store = MemoryReplayStore::new(100, 2);
        assert_eq!(store.record(&key(1, 1, 1_000), 900), Ok(true));
        assert_eq!(store.record(&key(2, 1, 1_000), 900), Ok(true));
        assert_eq!(store.record(&key(1, 1, 1_000), 900), Ok(false));
        assert_eq!(store.record(&key(2, 1, 1_000), 950), Ok(false));
        assert!(store.record(&key(3, 1, 1_000), 900).is_err());
        // Under the quota a replay is found by the insert itself.
        let store = MemoryReplayStore::new(100, 10);
        assert_eq!(store.record(&key(1, 1, 1_000), 900), Ok(true));
        assert_eq!(store.record(&key(1, 1, 1_000), 900), Ok(false));
        assert_eq!(
            store.record(&key(5, 2, 1_000), 900),
            Ok(true),
            "another key's proof"
        );
    }
}
