//! Where the module remembers used DPoP proofs: in this Envoy process (`store: memory`), or in
//! Redis / Valkey shared with every other replica, Envoy or ext_authz service (`store: redis`),
//! so a proof used through one is refused through all the others.
//!
//! Redis is never asked from an Envoy worker: the stream waits (as it does for a key refetch)
//! while a thread of the module's own (a small tokio runtime, one pooled multiplexed connection)
//! asks, bounded by `dpop.replay.timeout_ms`, and the answer wakes the stream through its
//! scheduler. A slow or dead Redis answers 503 `replay_store_unavailable`, never an allow.
//!
//! That thread runs in Envoy's process, so what it costs is Envoy's CPU (and on a busy core,
//! each time it is woken it takes the core from the worker). So it works in batches, woken as
//! little as it can be: a worker queues its proofs without waking it, and the first proof of a
//! worker's burst asks Envoy for an event ([`EVENT_REPLAY_FLUSH`]) that runs once the worker has
//! handled what it was handling (the other requests of the same read, say); that event wakes the
//! thread, once, for every proof queued meanwhile. The thread then sends what is queued as one
//! round trip (one pipelined write, one read), takes what arrived during it without being woken,
//! and wakes the batch's streams under one lock (Envoy wakes a worker once for the lot).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use certbound_core::config::{ReplaySettings, ReplayStoreKind};
use certbound_core::dpop::ReplayKey;
use certbound_core::replay::{MemoryReplayStore, ReplayError, ReplayStore};
use certbound_redis::{Eviction, RedisReplayStore};
use futures_util::FutureExt;

use crate::abi::{self, Level, StreamWaker};

/// The event a stream waiting for Redis is woken with.
pub const EVENT_REPLAY: u64 = 2;

/// The event the stream that queued the first proof of a burst gets, after the rest of the
/// burst: then [`ModuleReplay::flush`] wakes the Redis thread for every proof queued.
pub const EVENT_REPLAY_FLUSH: u64 = 3;

/// Requests for Redis not yet sent: past this, checks answer 503 at once (Redis is too slow for
/// the load, and waiting longer would only queue more).
const QUEUE: usize = 4096;

/// The most proofs one round trip carries (a pipeline of about 80 bytes a proof).
const BATCH: usize = 512;

/// The configured store, shared by every configuration of this process with the same
/// settings ([`ModuleReplay::shared`]).
pub enum ModuleReplay {
    Memory(MemoryReplayStore),
    Redis(RedisWorker),
}

/// A store alive in this process, with the settings it was made from.
type KeptStore = (ReplaySettings, Weak<ModuleReplay>);

/// The stores alive in this process.
static STORES: Mutex<Vec<KeptStore>> = Mutex::new(Vec::new());

/// What a replay check came to.
pub enum Recorded {
    /// Answered now (the in-memory store, or a refusal to queue).
    Now(Result<bool, ReplayError>),
    /// The stream waits for [`EVENT_REPLAY`]; then [`ModuleReplay::take`] with this id.
    Waiting(u64),
}

impl ModuleReplay {
    /// The store the settings name: the one a live configuration with the same settings
    /// already uses, else a new one. Envoy builds a configuration update (LDS, say) while the old
    /// one still runs, so proofs used before an update stay refused after it (a new, empty
    /// in-memory store would accept each again; a new Redis store would not know the server it
    /// had seen restart), as the ext_authz service keeps its store across reloads. A new Redis
    /// store starts its thread here (not in `--mode validate`, where `start_threads` is false);
    /// it connects on first use.
    pub fn shared(
        settings: &ReplaySettings,
        start_threads: bool,
    ) -> Result<Option<Arc<Self>>, String> {
        if settings.store == ReplayStoreKind::Redis && !start_threads {
            return Ok(None);
        }
        let mut stores = lock(&STORES);
        stores.retain(|(_, store)| store.strong_count() > 0);
        if let Some(store) = stores
            .iter()
            .filter(|(kept, _)| kept == settings)
            .find_map(|(_, store)| store.upgrade())
        {
            return Ok(Some(store));
        }
        let store = Arc::new(match settings.store {
            ReplayStoreKind::Memory => Self::Memory(MemoryReplayStore::new(
                settings.max_entries,
                settings.max_per_key,
            )),
            ReplayStoreKind::Redis => Self::Redis(RedisWorker::start(settings)?),
        });
        stores.push((settings.clone(), Arc::downgrade(&store)));
        Ok(Some(store))
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

    /// A waiting stream is gone: forget it before its scheduler is dropped (and if it was to
    /// wake the Redis thread, wake it now).
    pub fn forget(&self, id: u64) {
        if let Self::Redis(worker) = self {
            let gone = lock(&worker.shared.pending).waiting.remove(&id);
            if gone.is_some_and(|waiting| waiting.flushes) {
                worker.shared.flush();
            }
        }
    }

    /// [`EVENT_REPLAY_FLUSH`] came to the stream waiting as `id`: wake the Redis thread for the
    /// proofs queued.
    pub fn flush(&self, id: Option<u64>) {
        if let Self::Redis(worker) = self {
            if let Some(id) = id
                && let Some(waiting) = lock(&worker.shared.pending).waiting.get_mut(&id)
            {
                waiting.flushes = false;
            }
            worker.shared.flush();
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
    /// This stream was sent [`EVENT_REPLAY_FLUSH`]: if it goes before the event runs, the
    /// thread is woken when it goes.
    flushes: bool,
}

struct Job {
    id: u64,
    key: ReplayKey,
    now: i64,
    /// When the stream started waiting: its answer is due `timeout_ms` later, however long it
    /// queued behind an earlier batch.
    since: Instant,
}

/// The Redis store on a thread of its own. The thread ends when the configuration (the last
/// stream holding it) goes.
pub struct RedisWorker {
    /// Proofs to record. The thread never waits on the queue itself (so queueing wakes nobody):
    /// it waits for [`Shared::wake`], and then takes every proof queued.
    jobs: tokio::sync::mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// What the workers and the Redis thread share.
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the Redis thread (a permit is kept when it is not waiting: no wake-up is lost).
    wake: tokio::sync::Notify,
    /// A stream was sent [`EVENT_REPLAY_FLUSH`] and has not flushed yet: later proofs need not
    /// ask for another (its flush comes after them).
    flush_owed: AtomicBool,
    /// The configuration is gone: the thread ends.
    closed: AtomicBool,
}

impl Shared {
    /// Wakes the Redis thread for every proof queued before this call. The swap acquires the
    /// queueing of every proof whose submit saw the flush owed (each queues, then swaps).
    fn flush(&self) {
        self.flush_owed.swap(false, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

impl Drop for RedisWorker {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
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
        let (jobs, queue) = tokio::sync::mpsc::channel::<Job>(QUEUE);
        let shared = Arc::new(Shared::default());
        let answers = Arc::clone(&shared);
        let timeout = settings.timeout;
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
                    record_batches(queue, &store, &answers, timeout).await;
                });
            })
            .map_err(|e| format!("cannot start the Redis thread: {e}"))?;
        Ok(Self { jobs, shared })
    }

    fn submit(&self, key: ReplayKey, now: i64, waker: StreamWaker) -> Recorded {
        let id = {
            let mut pending = lock(&self.shared.pending);
            let id = pending.next_id;
            pending.next_id += 1;
            pending.waiting.insert(
                id,
                Waiting {
                    waker,
                    answer: None,
                    flushes: false,
                },
            );
            id
        };
        let since = Instant::now();
        let job = Job {
            id,
            key,
            now,
            since,
        };
        if self.jobs.try_send(job).is_err() {
            lock(&self.shared.pending).waiting.remove(&id);
            return Recorded::Now(Err(ReplayError("too many checks waiting for Redis".into())));
        }
        // Queued first, then the swap: a flush owed by another stream swaps after this one (it
        // sees this proof), or this stream owes the next flush.
        if !self.shared.flush_owed.swap(true, Ordering::AcqRel) {
            let mut pending = lock(&self.shared.pending);
            if let Some(waiting) = pending.waiting.get_mut(&id) {
                waiting.flushes = true;
                waiting.waker.wake(EVENT_REPLAY_FLUSH);
            }
        }
        Recorded::Waiting(id)
    }

    fn take(&self, id: u64) -> Option<Result<bool, ReplayError>> {
        let mut pending = lock(&self.shared.pending);
        pending.waiting.get(&id)?.answer.as_ref()?;
        let taken = pending.waiting.remove(&id)?;
        drop(pending);
        if taken.flushes {
            // Its flush event comes before its answer; should it not have, flush now.
            self.shared.flush();
        }
        taken.answer
    }
}

/// The Redis thread's loop, until the configuration goes: woken by a flush, it takes every
/// job queued (up to [`BATCH`] at a time), records them in one round trip, answers each one,
/// and goes on with what was queued meanwhile; then it waits for the next flush. Every job is
/// answered: a timeout, a Redis error or a panic in the Redis client answers each job of its
/// batch with an error (a 503, never an allow).
async fn record_batches(
    mut queue: tokio::sync::mpsc::Receiver<Job>,
    store: &RedisReplayStore,
    shared: &Shared,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut keys = Vec::with_capacity(BATCH);
    loop {
        while let Ok(job) = queue.try_recv() {
            batch.push(job);
            while batch.len() < BATCH
                && let Ok(job) = queue.try_recv()
            {
                batch.push(job);
            }
            keys.clear();
            keys.extend(batch.iter().map(|job| job.key));
            // The oldest job's deadline is the batch's: no stream waits longer than timeout_ms.
            let oldest = batch.iter().map(|job| job.since).min();
            let deadline = oldest.unwrap_or_else(Instant::now) + timeout;
            // The latest clock reading: each key still expires with its proof (expires_at).
            let now = batch.iter().map(|job| job.now).max().unwrap_or_default();
            let recorded = std::panic::AssertUnwindSafe(store.record_many(&keys, now, deadline));
            let answers = match recorded.catch_unwind().await {
                Ok(answers) if answers.len() == batch.len() => answers,
                Ok(_) => failed(
                    batch.len(),
                    "the Redis store answered the wrong number of proofs",
                ),
                Err(_) => failed(batch.len(), "the Redis client panicked"),
            };
            answer(&shared.pending, batch.drain(..), answers);
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        shared.wake.notified().await;
    }
}

fn failed(n: usize, why: &str) -> Vec<Result<bool, ReplayError>> {
    (0..n).map(|_| Err(ReplayError(why.into()))).collect()
}

/// Hands each job its answer and wakes its stream, all under one lock (a stream that is gone
/// has removed its entry, and with it the waker).
fn answer(
    pending: &Mutex<Pending>,
    jobs: impl Iterator<Item = Job>,
    answers: Vec<Result<bool, ReplayError>>,
) {
    let mut pending = lock(pending);
    for (job, answer) in jobs.zip(answers) {
        if let Some(waiting) = pending.waiting.get_mut(&job.id) {
            waiting.answer = Some(answer);
            waiting.waker.wake(EVENT_REPLAY);
        }
    }
}
