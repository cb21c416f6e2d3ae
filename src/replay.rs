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

use std::sync::Arc;

use certbound_redis::Eviction;

use crate::metrics::Metrics;

/// Evictions would silently re-enable replays: the server's `maxmemory-policy` is read at start
/// and every 5 minutes; an evicting one is an error in the log and
/// `certbound_dpop_replay_store_evicting` 1 (0: `noeviction`; -1: unknown). Readiness does not
/// follow it: every replica shares the store, so making them all unready would turn a
/// configuration mistake into an outage.
async fn watch_eviction(store: std::sync::Weak<RedisReplayStore>, metrics: Arc<Metrics>) {
    certbound_redis::watch_eviction(store, certbound_redis::EVICTION_CHECK_EVERY, |eviction| {
        let value = match eviction {
            Eviction::Never => 0,
            Eviction::Evicts(policy) => {
                tracing::error!(
                    policy = policy.as_str(),
                    "the DPoP replay store (Redis) evicts keys under memory pressure: used proofs \
                     may be forgotten and replayed; set maxmemory-policy noeviction"
                );
                1
            }
            Eviction::Unknown(why) => {
                tracing::warn!(
                    why = why.as_str(),
                    "cannot read the DPoP replay store's maxmemory-policy; make sure it is \
                     noeviction"
                );
                -1
            }
        };
        metrics.replay_store_evicting.set(value);
    })
    .await;
}

/// The configured replay store.
pub enum Replay {
    Memory(MemoryReplayStore),
    Redis(Arc<RedisReplayStore>),
}

impl Replay {
    /// Builds the store the settings name; no network I/O (Redis connects on first use). On a
    /// tokio runtime, a Redis store's eviction policy is then watched ([`watch_eviction`]).
    pub fn new(settings: &ReplaySettings, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let replay = Self::build(settings, metrics)?;
        metrics.replay_store(replay.name());
        Ok(replay)
    }

    fn build(settings: &ReplaySettings, metrics: &Arc<Metrics>) -> Result<Self, String> {
        match settings.store {
            ReplayStoreKind::Redis => {
                let store = Arc::new(RedisReplayStore::from_settings(settings)?);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(watch_eviction(Arc::downgrade(&store), Arc::clone(metrics)));
                }
                Ok(Self::Redis(store))
            }
            ReplayStoreKind::Memory => Ok(Self::Memory(MemoryReplayStore::new(
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
    ///
    /// Redis' future (a connection, a timer) is boxed: inline, it would make every check's
    /// future larger, which each layer of a Check copies, also with the store in memory.
    pub async fn record(&self, key: &ReplayKey, now: i64) -> Result<bool, ReplayError> {
        match self {
            Self::Memory(store) => store.record(key, now),
            Self::Redis(store) => Box::pin(store.record(key, now)).await,
        }
    }
}
