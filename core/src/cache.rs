//! A bounded cache with per-entry expiry, keyed by SHA-256 digests of tokens.
//!
//! Tokens themselves are never stored as keys. Expiry is checked against the injected clock on
//! every read; when full, expired entries are dropped first, then the oldest insertions.
//!
//! Large caches are split into shards by the key's first byte (a digest, so evenly), each with
//! its own lock and its share of the capacity: threads checking different tokens (Envoy's
//! workers, with the module; the multi-threaded runtime) rarely meet on a lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// The cache key of a token: its SHA-256.
pub type TokenKey = [u8; 32];

pub fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// The cache is full of live entries and must not forget any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// Most shards a cache is split into.
const MAX_SHARDS: usize = 16;
/// Fewest entries per shard: small caches keep one shard (and exact oldest-first eviction).
const MIN_SHARD_CAPACITY: usize = 1024;

struct Entry<V> {
    value: V,
    expires_at: i64,
}

struct Shard<V> {
    capacity: usize,
    entries: HashMap<TokenKey, Entry<V>>,
    /// Insertion order, for eviction; may hold keys already removed.
    order: VecDeque<TokenKey>,
    /// When expired entries were last swept out (at most once a second: a full shard of live
    /// entries must not cost a scan per insert).
    swept_at: i64,
}

/// Bounded map from token digest to a value that expires at a Unix time.
pub struct TtlCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
}

impl<V: Clone> TtlCache<V> {
    /// A cache of at most `capacity` entries (0: it stores nothing).
    pub fn new(capacity: usize) -> Self {
        let count = (capacity / MIN_SHARD_CAPACITY).clamp(1, MAX_SHARDS);
        let shards = (0..count)
            .map(|i| {
                Mutex::new(Shard {
                    // The capacity spread over the shards, the remainder to the first ones.
                    capacity: capacity / count + usize::from(i < capacity % count),
                    entries: HashMap::new(),
                    order: VecDeque::new(),
                    swept_at: i64::MIN,
                })
            })
            .collect();
        Self { shards }
    }

    fn shard(&self, key: &TokenKey) -> MutexGuard<'_, Shard<V>> {
        self.shards[usize::from(key[0]) % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The live value for `key` at `now`; an expired entry is removed.
    pub fn get(&self, key: &TokenKey, now: i64) -> Option<V> {
        let mut shard = self.shard(key);
        match shard.entries.get(key) {
            Some(entry) if entry.expires_at > now => Some(entry.value.clone()),
            Some(_) => {
                shard.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `expires_at` (ignored when already past or capacity is zero).
    pub fn insert(&self, key: TokenKey, value: V, expires_at: i64, now: i64) {
        if expires_at <= now {
            return;
        }
        let mut shard = self.shard(&key);
        let capacity = shard.capacity;
        if capacity == 0 {
            return;
        }
        if !shard.entries.contains_key(&key) && shard.entries.len() >= capacity {
            if shard.swept_at < now {
                shard.swept_at = now;
                shard.entries.retain(|_, e| e.expires_at > now);
            }
            while shard.entries.len() >= capacity {
                let Some(oldest) = shard.order.pop_front() else {
                    break;
                };
                shard.entries.remove(&oldest);
            }
        }
        if shard
            .entries
            .insert(key, Entry { value, expires_at })
            .is_none()
        {
            shard.order.push_back(key);
        }
        // Keep the order queue from growing without bound through removals.
        if shard.order.len() > capacity.saturating_mul(2) {
            let Shard { entries, order, .. } = &mut *shard;
            order.retain(|k| entries.contains_key(k));
        }
    }

    /// Stores `value` only if no live entry has this key: `Ok(true)` when stored (the first
    /// use), `Ok(false)` when one is there. A full shard never evicts a live entry here
    /// (`Err(Full)`): a replay store that forgot could be replayed against.
    pub fn insert_new(
        &self,
        key: TokenKey,
        value: V,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, Full> {
        let mut shard = self.shard(&key);
        if shard.entries.get(&key).is_some_and(|e| e.expires_at > now) {
            return Ok(false);
        }
        if !shard.entries.contains_key(&key) && shard.entries.len() >= shard.capacity {
            if shard.swept_at < now {
                shard.swept_at = now;
                shard.entries.retain(|_, e| e.expires_at > now);
            }
            if shard.entries.len() >= shard.capacity {
                return Err(Full);
            }
        }
        if shard
            .entries
            .insert(key, Entry { value, expires_at })
            .is_none()
        {
            shard.order.push_back(key);
        }
        if shard.order.len() > shard.capacity.saturating_mul(2) {
            let Shard { entries, order, .. } = &mut *shard;
            order.retain(|k| entries.contains_key(k));
        }
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_at_their_time() {
        let cache = TtlCache::new(10);
        cache.insert(token_key("a"), 1, 100, 0);
        assert_eq!(cache.get(&token_key("a"), 99), Some(1));
        assert_eq!(cache.get(&token_key("a"), 100), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn already_expired_values_are_not_stored() {
        let cache = TtlCache::new(10);
        cache.insert(token_key("a"), 1, 5, 5);
        assert!(cache.is_empty());
    }

    #[test]
    fn capacity_is_bounded_evicting_expired_then_oldest() {
        let cache = TtlCache::new(3);
        cache.insert(token_key("short"), 0, 10, 0);
        cache.insert(token_key("b"), 1, 100, 0);
        cache.insert(token_key("c"), 2, 100, 0);
        // At t=20 "short" has expired: it goes first.
        cache.insert(token_key("d"), 3, 100, 20);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&token_key("b"), 20), Some(1));
        // Full of live entries: the oldest ("b") goes.
        cache.insert(token_key("e"), 4, 100, 20);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&token_key("b"), 20), None);
        assert_eq!(cache.get(&token_key("e"), 20), Some(4));
    }

    #[test]
    fn many_inserts_stay_within_capacity() {
        let cache = TtlCache::new(100);
        for i in 0..10_000 {
            cache.insert(token_key(&i.to_string()), i, 1_000, 0);
        }
        assert_eq!(cache.len(), 100);
    }

    #[test]
    fn large_caches_are_sharded_and_still_bounded() {
        let cache = TtlCache::new(100_000);
        assert_eq!(cache.shards.len(), 16);
        let total: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").capacity)
            .sum();
        assert_eq!(total, 100_000);
        for i in 0..200_000 {
            cache.insert(token_key(&i.to_string()), i, 1_000, 0);
        }
        assert_eq!(cache.len(), 100_000);
        assert_eq!(TtlCache::<u8>::new(3).shards.len(), 1);
    }

    #[test]
    fn insert_new_stores_once_and_never_forgets_a_live_entry() {
        let cache = TtlCache::new(2);
        assert_eq!(cache.insert_new(token_key("a"), (), 100, 0), Ok(true));
        assert_eq!(cache.insert_new(token_key("a"), (), 100, 50), Ok(false));
        assert_eq!(cache.insert_new(token_key("b"), (), 10, 0), Ok(true));
        assert_eq!(cache.insert_new(token_key("c"), (), 100, 5), Err(Full));
        // Once "b" expired, there is room again; "a" after its expiry is new again.
        assert_eq!(cache.insert_new(token_key("c"), (), 100, 11), Ok(true));
        assert_eq!(cache.insert_new(token_key("a"), (), 200, 100), Ok(true));
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let cache = TtlCache::new(0);
        cache.insert(token_key("a"), 1, 100, 0);
        assert!(cache.get(&token_key("a"), 0).is_none());
    }
}
