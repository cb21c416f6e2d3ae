//! Where the service remembers used DPoP proofs (RFC 9449 §11.1): in this process
//! (`dpop.replay.store: memory`), or in Redis / Valkey shared by every replica
//! (`dpop.replay.store: redis`), so that a proof replayed to another replica is refused too.
//!
//! Redis is asked with one atomic `SET key 1 NX PX ttl` per proof: the first replica to record a
//! proof's key wins, every later attempt (on any replica) sees a replay. When Redis does not
//! answer within `dpop.replay.timeout_ms`, the check fails closed (503
//! `replay_store_unavailable`); nothing is accepted unchecked.

use certbound_core::config::{ReplaySettings, ReplayStoreKind};
use certbound_core::dpop::ReplayKey;
use certbound_core::replay::{MemoryReplayStore, ReplayError, ReplayStore};
pub use certbound_redis::RedisReplayStore;

/// The configured replay store.
pub enum Replay {
    Memory(MemoryReplayStore),
    Redis(Box<RedisReplayStore>),
}

impl Replay {
    /// Builds the store the settings name; no network I/O (Redis connects on first use).
    pub fn new(settings: &ReplaySettings) -> Result<Self, String> {
        match (settings.store, &settings.url) {
            (ReplayStoreKind::Redis, Some(url)) => {
                Ok(Self::Redis(Box::new(RedisReplayStore::new(
                    url,
                    settings.ca_file.as_deref(),
                    settings.timeout,
                    &settings.key_prefix,
                )?)))
            }
            (ReplayStoreKind::Redis, None) => Err("dpop.replay.url is required for redis".into()),
            (ReplayStoreKind::Memory, _) => Ok(Self::Memory(MemoryReplayStore::new(
                settings.max_entries,
                settings.max_per_key,
            ))),
        }
    }

    /// The store's name in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// `Ok(true)` on a proof's first use (now recorded), `Ok(false)` for a replay.
    pub async fn record(&self, key: &ReplayKey, now: i64) -> Result<bool, ReplayError> {
        match self {
            Self::Memory(store) => store.record(key, now),
            Self::Redis(store) => store.record(key, now).await,
        }
    }
}
