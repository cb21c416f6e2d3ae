//! The verified-token cache: a JWT whose signature and claims checked out is remembered by the
//! SHA-256 of the token until its `exp` (or the configured bound), so that the next request with
//! it skips the signature. The binding and the route's requirements are still checked every time.
//!
//! Entries are small: what successive tokens of one client have in common (the verifying key's
//! `kid` and the claims decisions read: `sub`, `client_id`, `scope`, `cnf`, ...) is stored once
//! and shared; each entry holds only the issuer and a pointer to that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Map, Value};

use crate::cache::{TokenKey, TtlCache};

/// What a verified token contributes to decisions, shared between tokens that agree on it.
#[derive(Debug)]
pub struct Verified {
    pub kid: Option<Arc<str>>,
    pub claims: Arc<Map<String, Value>>,
}

#[derive(Clone, Debug)]
struct Entry {
    issuer: u32,
    verified: Arc<Verified>,
}

/// Bounded; entries never outlive the token's `exp`.
pub struct TokenCache {
    entries: TtlCache<Entry>,
    /// Canonical JSON of (kid, claims) -> the shared value, while some entry holds it.
    interned: Mutex<HashMap<String, Weak<Verified>>>,
    capacity: usize,
    /// Longest an entry lives, whatever the token's `exp`.
    ttl_seconds: i64,
}

impl TokenCache {
    pub fn new(max_entries: usize, ttl_seconds: i64) -> Self {
        Self {
            entries: TtlCache::new(max_entries),
            interned: Mutex::new(HashMap::new()),
            capacity: max_entries,
            ttl_seconds,
        }
    }

    /// The issuer index and the shared verified part of a live entry.
    pub fn get(&self, key: &TokenKey, now: i64) -> Option<(usize, Arc<Verified>)> {
        self.entries
            .get(key, now)
            .map(|e| (e.issuer as usize, e.verified))
    }

    /// Remembers a verified token until `min(exp, now + ttl)`.
    pub fn insert(
        &self,
        key: TokenKey,
        issuer: usize,
        kid: Option<Arc<str>>,
        claims: Map<String, Value>,
        exp: i64,
        now: i64,
    ) {
        let expires_at = exp.min(now.saturating_add(self.ttl_seconds));
        let Ok(issuer) = u32::try_from(issuer) else {
            return;
        };
        if expires_at <= now || self.capacity == 0 {
            return;
        }
        // Not cached when the claims have no canonical text: never share one key among tokens.
        let Some(verified) = self.intern(kid, claims) else {
            return;
        };
        self.entries
            .insert(key, Entry { issuer, verified }, expires_at, now);
    }

    fn intern(&self, kid: Option<Arc<str>>, claims: Map<String, Value>) -> Option<Arc<Verified>> {
        // serde_json's Map is ordered, so the text is canonical.
        let id = serde_json::to_string(&(kid.as_deref(), &claims)).ok()?;
        let mut interned = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = interned.get(&id).and_then(Weak::upgrade) {
            return Some(shared);
        }
        let shared = Arc::new(Verified {
            kid,
            claims: Arc::new(claims),
        });
        interned.insert(id, Arc::downgrade(&shared));
        if interned.len() > self.capacity.saturating_mul(2).max(64) {
            interned.retain(|_, weak| weak.strong_count() > 0);
        }
        Some(shared)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Distinct shared values currently held (for tests and diagnostics).
    pub fn distinct(&self) -> usize {
        let interned = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        interned.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(sub: &str) -> Map<String, Value> {
        json!({"sub": sub, "scope": "read"})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn tokens_that_agree_share_one_value() {
        let cache = TokenCache::new(100, 300);
        for i in 0..50u8 {
            cache.insert([i; 32], 0, Some("k1".into()), claims("alice"), 1_000, 0);
        }
        cache.insert([99; 32], 0, Some("k1".into()), claims("bob"), 1_000, 0);
        assert_eq!(cache.len(), 51);
        assert_eq!(cache.distinct(), 2);
        let (_, a) = cache.get(&[1; 32], 0).unwrap();
        let (_, b) = cache.get(&[2; 32], 0).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn entries_end_at_exp_or_the_ttl_whichever_is_first() {
        let cache = TokenCache::new(10, 300);
        cache.insert([1; 32], 0, None, claims("a"), 100, 0);
        cache.insert([2; 32], 0, None, claims("a"), 10_000, 0);
        assert!(cache.get(&[1; 32], 99).is_some());
        assert!(cache.get(&[1; 32], 100).is_none());
        assert!(cache.get(&[2; 32], 299).is_some());
        assert!(cache.get(&[2; 32], 300).is_none());
        cache.insert([3; 32], 0, None, claims("a"), 5, 5);
        assert!(
            cache.get(&[3; 32], 5).is_none(),
            "already expired tokens are not stored"
        );
    }
}
