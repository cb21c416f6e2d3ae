//! A small bounded cache with per-entry expiry, keyed by SHA-256 digests of tokens.
//!
//! Tokens themselves are never stored as keys. Expiry is checked against the injected clock on
//! every read; when full, expired entries are dropped first, then the oldest insertions.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// The cache key of a token: its SHA-256.
pub type TokenKey = [u8; 32];

pub fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry<V> {
    value: V,
    expires_at: i64,
}

struct Inner<V> {
    entries: HashMap<TokenKey, Entry<V>>,
    /// Insertion order, for eviction; may hold keys already removed.
    order: VecDeque<TokenKey>,
}

/// Bounded map from token digest to a value that expires at a Unix time.
pub struct TtlCache<V> {
    capacity: usize,
    inner: Mutex<Inner<V>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// The live value for `key` at `now`; an expired entry is removed.
    pub fn get(&self, key: &TokenKey, now: i64) -> Option<V> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.entries.get(key) {
            Some(entry) if entry.expires_at > now => Some(entry.value.clone()),
            Some(_) => {
                inner.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `expires_at` (ignored when already past or capacity is zero).
    pub fn insert(&self, key: TokenKey, value: V, expires_at: i64, now: i64) {
        if self.capacity == 0 || expires_at <= now {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.entries.contains_key(&key) && inner.entries.len() >= self.capacity {
            inner.entries.retain(|_, e| e.expires_at > now);
            while inner.entries.len() >= self.capacity {
                let Some(oldest) = inner.order.pop_front() else {
                    break;
                };
                inner.entries.remove(&oldest);
            }
        }
        if inner
            .entries
            .insert(key, Entry { value, expires_at })
            .is_none()
        {
            inner.order.push_back(key);
        }
        // Keep the order queue from growing without bound through removals.
        if inner.order.len() > self.capacity.saturating_mul(2) {
            let Inner { entries, order } = &mut *inner;
            order.retain(|k| entries.contains_key(k));
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
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
    fn zero_capacity_disables_the_cache() {
        let cache = TtlCache::new(0);
        cache.insert(token_key("a"), 1, 100, 0);
        assert!(cache.get(&token_key("a"), 0).is_none());
    }
}
