//! Where the module remembers used DPoP proofs: in this Envoy process (`store: memory`), or in
//! Redis / Valkey shared with every other replica, Envoy or ext_authz service (`store: redis`),
//! so a proof used through one is refused through all the others.
//!
//! Redis is never asked from an Envoy worker: the stream waits (as it does for a key refetch)
//! while a thread of the module's own (a small tokio runtime, one pooled multiplexed connection)
//! asks, bounded by `dpop.replay.timeout_ms`, and the answer wakes the stream through its
//! scheduler. A slow or dead Redis answers 503 `replay_store_unavailable`, never an allow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use certbound_core::config::{ReplaySettings, ReplayStoreKind};
use certbound_core::dpop::ReplayKey;
use certbound_core::replay::{MemoryReplayStore, ReplayError, ReplayStore};
use certbound_redis::{Eviction, RedisReplayStore};
use futures_util::FutureExt;

use crate::abi::{self, Level, StreamWaker};

/// The event a stream waiting for Redis is woken with.
pub const EVENT_REPLAY: u64 = 2;

/// Requests for Redis not yet sent: past this, checks answer 503 at once (Redis is too slow for
/// the load, and waiting longer would only queue more).
const QUEUE: usize = 4096;

/// The configured store.
pub enum ModuleReplay {
    Memory(MemoryReplayStore),
    Redis(RedisWorker),
}

/// What a replay check came to.
pub enum Recorded {
    /// Answered now (the in-memory store, or a refusal to queue).
    Now(Result<bool, ReplayError>),
    /// The stream waits for [`EVENT_REPLAY`]; then [`ModuleReplay::take`] with this id.
    Waiting(u64),
}

impl ModuleReplay {
    /// The store the settings name. Redis starts its thread here (not in `--mode validate`,
    /// where `start_threads` is false); it connects on first use.
    pub fn new(settings: &ReplaySettings, start_threads: bool) -> Result<Option<Self>, String> {
        Ok(match settings.store {
            ReplayStoreKind::Memory => Some(Self::Memory(MemoryReplayStore::new(
                settings.max_entries,
                settings.max_per_key,
            ))),
            ReplayStoreKind::Redis if !start_threads => None,
            ReplayStoreKind::Redis => Some(Self::Redis(RedisWorker::start(settings)?)),
        })
    }

    /// Records `key`; `waker` wakes the stream when Redis answers.
    pub fn record(
        &self,
        key: ReplayKey,
        now: i64,
        waker: impl FnOnce() -> Option<StreamWaker>,
    ) -> Recorded {
        match self {
            Self::Memory(store) => Recorded::Now(store.record(&key, now)),
            Self::Redis(worker) => match waker() {
                Some(waker) => worker.submit(key, now, waker),
                None => Recorded::Now(Err(ReplayError("no scheduler to wait for Redis on".into()))),
            },
        }
    }

    /// The answer for a waiting stream once it is in (then forgotten); `None` until then.
    pub fn take(&self, id: u64) -> Option<Result<bool, ReplayError>> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(worker) => worker.take(id),
        }
    }

    /// A waiting stream is gone: forget it before its scheduler is dropped.
    pub fn forget(&self, id: u64) {
        if let Self::Redis(worker) = self {
            lock(&worker.pending).waiting.remove(&id);
        }
    }
}

/// Streams waiting for Redis: id -> the waker and, once in, the answer. A waker is only used
/// under this lock while its entry exists; a stream removes its entry under the lock before it
/// drops its scheduler.
#[derive(Default)]
struct Pending {
    next_id: u64,
    waiting: HashMap<u64, Waiting>,
}

struct Waiting {
    waker: StreamWaker,
    answer: Option<Result<bool, ReplayError>>,
}

struct Job {
    id: u64,
    key: ReplayKey,
    now: i64,
}

/// The Redis store on a thread of its own. The thread ends when the configuration (the last
/// stream holding it) goes: dropping the sender ends its loop.
pub struct RedisWorker {
    jobs: tokio::sync::mpsc::Sender<Job>,
    pending: Arc<Mutex<Pending>>,
}

/// Evictions would silently re-enable replays: an evicting `maxmemory-policy` is an error in
/// Envoy's log, read at start and every 5 minutes.
fn report_eviction(eviction: &Eviction) {
    match eviction {
        Eviction::Never => {}
        Eviction::Evicts(policy) => abi::log(
            Level::Error,
            &format!(
                "certbound: the DPoP replay store (Redis) has maxmemory-policy {policy}: it evicts \
                 keys under memory pressure, so used proofs may be forgotten and replayed; set \
                 noeviction"
            ),
        ),
        Eviction::Unknown(why) => abi::log(
            Level::Warn,
            &format!(
                "certbound: cannot read the DPoP replay store's maxmemory-policy ({why}); make \
                 sure it is noeviction"
            ),
        ),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisWorker {
    fn start(settings: &ReplaySettings) -> Result<Self, String> {
        let store = RedisReplayStore::from_settings(settings)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis runtime: {e}"))?;
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(QUEUE);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let answers = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("certbound-redis".into())
            .spawn(move || {
                let store = Arc::new(store);
                runtime.block_on(async move {
                    tokio::spawn(certbound_redis::watch_eviction(
                        Arc::downgrade(&store),
                        certbound_redis::EVICTION_CHECK_EVERY,
                        report_eviction,
                    ));
                    while let Some(job) = queue.recv().await {
                        let store = Arc::clone(&store);
                        let answers = Arc::clone(&answers);
                        tokio::spawn(async move {
                            // Bounded by timeout_ms inside: every job is answered, a panic in
                            // the Redis client included (a 503, never a stream left waiting).
                            let record =
                                std::panic::AssertUnwindSafe(store.record(&job.key, job.now));
                            let answer = record.catch_unwind().await.unwrap_or_else(|_| {
                                Err(ReplayError("the Redis client panicked".into()))
                            });
                            let mut pending = lock(&answers);
                            if let Some(waiting) = pending.waiting.get_mut(&job.id) {
                                waiting.answer = Some(answer);
                                waiting.waker.wake(EVENT_REPLAY);
                            }
                        });
                    }
                });
            })
            .map_err(|e| format!("cannot start the Redis thread: {e}"))?;
        Ok(Self { jobs, pending })
    }

    fn submit(&self, key: ReplayKey, now: i64, waker: StreamWaker) -> Recorded {
        let id = {
            let mut pending = lock(&self.pending);
            let id = pending.next_id;
            pending.next_id += 1;
            pending.waiting.insert(
                id,
                Waiting {
                    waker,
                    answer: None,
                },
            );
            id
        };
        match self.jobs.try_send(Job { id, key, now }) {
            Ok(()) => Recorded::Waiting(id),
            Err(_) => {
                lock(&self.pending).waiting.remove(&id);
                Recorded::Now(Err(ReplayError("too many checks waiting for Redis".into())))
            }
        }
    }

    fn take(&self, id: u64) -> Option<Result<bool, ReplayError>> {
        let mut pending = lock(&self.pending);
        pending.waiting.get(&id)?.answer.as_ref()?;
        pending.waiting.remove(&id)?.answer
    }
}
