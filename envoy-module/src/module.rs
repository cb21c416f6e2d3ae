//! The filter configuration Envoy creates from `filter_config`: the core's policy, one key
//! snapshot set and one token cache shared by every worker, and the machinery that keeps the keys
//! fresh (HTTP callouts on the main thread, woken by a timer thread through Envoy's config
//! scheduler).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use certbound_core::answer::MetadataFields;
use certbound_core::clock::SystemClock;
use certbound_core::keys::KeySnapshots;
use certbound_core::{AccessRequest, Decision, DenyReason, Outcome, Policy, TokenCache};

use crate::abi::{self, CalloutResponse, ConfigHandle, ConfigScheduler, Level, StreamWaker};
use crate::keys::{Fetch, Fetched, Fetches, Step, Waiters};
use crate::replay::{ModuleReplay, Recorded};
use certbound_core::config::ModuleSettings;
pub use certbound_core::config::RouteSettings;

/// The event a parked stream is woken with.
pub const EVENT_RESUME: u64 = 1;

/// The main thread's event that hands the counted checks to Envoy (issuers are 0, 1, ...).
const EVENT_FLUSH_CHECKS: u64 = u64::MAX;

/// How long counted checks wait before the main thread adds them to Envoy's counter.
const FLUSH_CHECKS_AFTER: Duration = Duration::from_millis(100);

/// Allows and denies, counted per reason on the workers and added to Envoy's `checks` counter in
/// batches by the main thread, at most [`FLUSH_CHECKS_AFTER`] later: an increment with labels
/// costs Envoy a symbol-table lookup and allocations (about 3,400 instructions) per request,
/// an atomic add here costs a few. Other outcomes (rare) are counted one by one.
pub struct CheckCounts {
    /// `[0]`: allow; `[1 + i]`: deny for `DenyReason::ALL[i]`.
    cells: Box<[AtomicU64]>,
    labels: Box<[[&'static str; 2]]>,
    /// Counts wait to be added (the timer thread schedules the next flush).
    pending: AtomicBool,
}

impl CheckCounts {
    fn new() -> Self {
        let mut labels = vec![["", ""]; 1 + DenyReason::ALL.len()];
        let allow = Decision {
            outcome: Outcome::Allow(Default::default()),
            facts: Default::default(),
        };
        let decisions =
            std::iter::once(allow).chain(DenyReason::ALL.iter().map(|r| Decision::deny(*r)));
        for decision in decisions {
            if let Some(slot) = Self::slot(&decision) {
                labels[slot] = [decision.outcome_name(), decision.reason()];
            }
        }
        Self {
            cells: labels.iter().map(|_| AtomicU64::new(0)).collect(),
            labels: labels.into(),
            pending: AtomicBool::new(false),
        }
    }

    fn slot(decision: &Decision) -> Option<usize> {
        match &decision.outcome {
            Outcome::Allow(_) => Some(0),
            Outcome::Deny(reason) => DenyReason::ALL
                .iter()
                .position(|r| r == reason)
                .map(|i| i + 1),
            Outcome::Unavailable(_) | Outcome::Metadata(_) => None,
        }
    }
}

/// Envoy counters of this configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// `checks{decision, reason}`.
    pub checks: Option<usize>,
    /// `key_refreshes{issuer, result}`.
    pub key_refreshes: Option<usize>,
}

/// What the timer thread, the main thread and parking streams share, under one lock.
struct Schedule {
    fetches: Fetches,
    waiters: Waiters<StreamWaker>,
    /// Callouts under way: id -> issuer.
    callouts: Vec<(u64, usize)>,
    /// Runs events on the main thread; taken (and deleted) when the configuration goes away,
    /// so that nothing commits to it after.
    scheduler: Option<ConfigScheduler>,
}

impl Schedule {
    /// Has the main thread fetch issuer `index`'s keys.
    fn ask_main_thread(&self, index: usize) {
        self.ask_main_thread_event(index as u64);
    }

    fn ask_main_thread_event(&self, event: u64) {
        if let Some(scheduler) = &self.scheduler {
            scheduler.commit(event);
        }
    }
}

/// Key fetching (and the timer that also flushes counted checks), absent in `--mode validate`
/// (nothing is started there).
struct Fetching {
    schedule: Arc<(Mutex<Schedule>, Condvar)>,
    timer: Mutex<Option<JoinHandle<()>>>,
}

/// One filter configuration, shared (read-only but for the caches) by every worker's streams.
pub struct FilterConfig {
    envoy: ConfigHandle,
    pub policy: Policy,
    pub keys: KeySnapshots,
    pub token_cache: Option<TokenCache>,
    /// Used DPoP proofs (DPoP enabled only): this Envoy's workers' (memory), or every
    /// replica's (Redis).
    pub replay: Option<Arc<ModuleReplay>>,
    pub unknown_kid_wait: Duration,
    pub refetch_min_interval: Duration,
    pub fetch_timeout: Duration,
    pub counters: Counters,
    /// `module.dynamic_metadata`: the decision's fields set as dynamic metadata on every check.
    pub dynamic_metadata: MetadataFields,
    check_counts: Arc<CheckCounts>,
    fetching: Option<Fetching>,
    /// Set once Envoy destroys the configuration: streams still running decide with what they
    /// have, nothing new is fetched.
    closed: AtomicBool,
}

/// A decision after the replay check, or one waiting for the shared store's answer.
pub enum ReplayChecked {
    Final(Decision),
    /// The stream waits for [`crate::replay::EVENT_REPLAY`]; the id names its answer.
    Waiting(u64, Decision),
}

/// The outcome of asking for an unknown-`kid` refetch.
pub enum Park {
    /// The keys changed since the decision: decide again now.
    DecideAgain,
    /// The stream waits; it is woken when the refetch ends or its wait is over.
    Parked(u64),
    /// No refetch now (one was made recently, or there is no fetching): answer as decided.
    No,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds the configuration from `filter_config`; `None` (logged) refuses it.
pub fn new_config(envoy: ConfigHandle, name: &[u8], config: &[u8]) -> Option<Arc<FilterConfig>> {
    let name = String::from_utf8_lossy(name);
    let text = match std::str::from_utf8(config) {
        Ok(text) => text,
        Err(_) => {
            abi::log(Level::Error, "certbound: filter_config is not UTF-8 text");
            return None;
        }
    };
    let settings = match ModuleSettings::from_yaml(text) {
        Ok(settings) => settings,
        Err(error) => {
            abi::log(
                Level::Error,
                &format!("certbound: filter {name:?}: invalid configuration: {error}"),
            );
            return None;
        }
    };
    for warning in &settings.decision.warnings {
        abi::log(Level::Warn, &format!("certbound: {warning}"));
    }
    let decision = settings.decision;
    let names = decision
        .key_sources
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let keys = KeySnapshots::new(names, decision.key_timing.clone(), Arc::new(SystemClock));
    let replay = match &decision.replay {
        Some(settings) => match ModuleReplay::shared(settings, !abi::is_validation_mode()) {
            Ok(replay) => replay,
            Err(error) => {
                abi::log(
                    Level::Error,
                    &format!("certbound: filter {name:?}: dpop.replay: {error}"),
                );
                return None;
            }
        },
        None => None,
    };
    let counters = Counters {
        checks: envoy.define_counter("checks", &["decision", "reason"]),
        key_refreshes: envoy.define_counter("key_refreshes", &["issuer", "result"]),
    };
    let fetching = if abi::is_validation_mode() {
        None
    } else {
        let Some(scheduler) = envoy.scheduler() else {
            abi::log(Level::Error, "certbound: Envoy gave no config scheduler");
            return None;
        };
        let sources = decision
            .key_sources
            .iter()
            .zip(&settings.clusters)
            .map(|((_, source), cluster)| (source.clone(), cluster.clone()))
            .collect();
        let schedule = Schedule {
            fetches: Fetches::new(sources, Instant::now()),
            waiters: Waiters::default(),
            callouts: Vec::new(),
            scheduler: Some(scheduler),
        };
        Some(Fetching {
            schedule: Arc::new((Mutex::new(schedule), Condvar::new())),
            timer: Mutex::new(None),
        })
    };
    let config = Arc::new(FilterConfig {
        envoy,
        replay,
        token_cache: decision.token_cache(),
        unknown_kid_wait: decision.unknown_kid_wait,
        refetch_min_interval: decision.key_timing.refetch_min_interval,
        fetch_timeout: decision.key_timing.fetch_timeout,
        policy: decision.policy,
        keys,
        counters,
        dynamic_metadata: settings.dynamic_metadata,
        check_counts: Arc::new(CheckCounts::new()),
        fetching,
        closed: AtomicBool::new(false),
    });
    if let Some(fetching) = &config.fetching {
        // Local files load now, so that the first request already has their keys; fetched
        // keys are requested at once and arrive through callouts.
        {
            let mut schedule = lock(&fetching.schedule.0);
            let due = schedule.fetches.take_due(Instant::now());
            for index in due {
                if settings.clusters[index].is_none() {
                    let first = schedule.fetches.start(index);
                    config.run_fetch(&mut schedule, index, first);
                } else {
                    schedule.ask_main_thread(index);
                }
            }
        }
        let schedule = Arc::clone(&fetching.schedule);
        let counts = Arc::clone(&config.check_counts);
        let timer = std::thread::Builder::new()
            .name("certbound-keys".into())
            .spawn(move || run_timer(&schedule, &counts));
        match timer {
            Ok(handle) => *lock(&fetching.timer) = Some(handle),
            Err(error) => {
                abi::log(
                    Level::Error,
                    &format!("certbound: cannot start the key refresh thread: {error}"),
                );
                return None;
            }
        }
    }
    Some(config)
}

/// Sleeps until the next refresh, parked stream or flush of counted checks is due, then has the
/// main thread fetch or flush, or wakes the stream. Ends when the configuration is destroyed.
fn run_timer(schedule: &(Mutex<Schedule>, Condvar), counts: &CheckCounts) {
    let (mutex, changed) = schedule;
    let mut state = lock(mutex);
    let mut flush_at: Option<Instant> = None;
    while state.scheduler.is_some() {
        let now = Instant::now();
        for index in state.fetches.take_due(now) {
            state.ask_main_thread(index);
        }
        for waker in state.waiters.take_expired(now) {
            waker.wake(EVENT_RESUME);
        }
        if flush_at.is_some_and(|at| at <= now) {
            state.ask_main_thread_event(EVENT_FLUSH_CHECKS);
            flush_at = None;
        }
        if flush_at.is_none() && counts.pending.load(Ordering::SeqCst) {
            flush_at = Some(now + FLUSH_CHECKS_AFTER);
        }
        let next = [
            state.fetches.next_due(),
            state.waiters.next_deadline(),
            flush_at,
        ]
        .into_iter()
        .flatten()
        .min();
        state = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => changed.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

pub fn new_route_settings(name: &[u8], config: &[u8]) -> Option<RouteSettings> {
    let text = String::from_utf8_lossy(config);
    match RouteSettings::from_yaml(&text) {
        Ok(route) => Some(route),
        Err(error) => {
            abi::log(
                Level::Error,
                &format!(
                    "certbound: per-route config {:?}: {error}",
                    String::from_utf8_lossy(name)
                ),
            );
            None
        }
    }
}

impl FilterConfig {
    /// The core's decision over the current keys, with the shared token cache.
    pub fn decide(&self, request: &AccessRequest) -> Decision {
        let now = certbound_core::clock::Clock::now(&SystemClock);
        self.policy
            .decide_cached(&self.keys, self.token_cache.as_ref(), request, now)
    }

    /// An allowed request's DPoP proof is recorded: a replay becomes a deny, a store that is
    /// full or does not answer 503. With Redis the stream waits, woken by `waker`'s scheduler;
    /// then [`FilterConfig::replay_answered`].
    pub fn check_replay(
        &self,
        decision: Decision,
        waker: impl FnOnce() -> Option<StreamWaker>,
    ) -> ReplayChecked {
        match (&self.replay, decision.replay_key()) {
            (Some(store), Some(key)) => {
                let now = certbound_core::clock::Clock::now(&SystemClock);
                match store.record(key, now, waker) {
                    Recorded::Now(result) => {
                        ReplayChecked::Final(Self::after_replay(decision, result))
                    }
                    Recorded::Waiting(id) => ReplayChecked::Waiting(id, decision),
                }
            }
            _ => ReplayChecked::Final(decision),
        }
    }

    /// The decision of a stream that waited for Redis, once its answer is in (`None`: not yet).
    pub fn replay_answered(&self, id: u64, decision: &Decision) -> Option<Decision> {
        let answer = self.replay.as_ref()?.take(id)?;
        Some(Self::after_replay(decision.clone(), answer))
    }

    fn after_replay(
        decision: Decision,
        result: Result<bool, certbound_core::replay::ReplayError>,
    ) -> Decision {
        if let Err(error) = &result {
            abi::log(Level::Warn, &format!("certbound: {error}"));
        }
        decision.after_replay_check(result)
    }

    /// A stream found the `kid` of issuer `index` unknown after deciding with keys of
    /// `generation`: refetch (single-flight, rate-limited) and park the stream, or not.
    pub fn park_for_refetch(&self, index: usize, generation: u64, waker: StreamWaker) -> Park {
        let Some(fetching) = &self.fetching else {
            return Park::No;
        };
        let mut schedule = lock(&fetching.schedule.0);
        if schedule.scheduler.is_none() {
            return Park::No;
        }
        // Checked under the lock the fetch's wake-up takes: a refetch cannot end unseen between
        // this check and the parking below.
        if self.keys.generation() != generation {
            return Park::DecideAgain;
        }
        let now = Instant::now();
        match schedule
            .fetches
            .refetch(index, now, self.refetch_min_interval)
        {
            None => return Park::No,
            Some(true) => {
                abi::log(
                    Level::Info,
                    &format!(
                        "certbound: unknown kid: refetching the keys of {}",
                        self.keys.name(index)
                    ),
                );
                schedule.ask_main_thread(index);
            }
            Some(false) => {}
        }
        let id = schedule
            .waiters
            .park(index, now + self.unknown_kid_wait, waker);
        fetching.schedule.1.notify_all();
        Park::Parked(id)
    }

    /// A parked stream is done waiting (woken, or gone): forget it.
    pub fn unpark(&self, id: u64) {
        if let Some(fetching) = &self.fetching {
            lock(&fetching.schedule.0).waiters.unpark(id);
        }
    }

    /// Counts a check for Envoy's `checks` counter, in the next batch; `false` when the caller
    /// must count it itself now (a rare outcome, or no timer to flush batches: `--mode validate`).
    pub fn count_check(&self, decision: &Decision) -> bool {
        let (Some(fetching), Some(slot)) = (&self.fetching, CheckCounts::slot(decision)) else {
            return false;
        };
        let counts = &self.check_counts;
        let Some(cell) = counts.cells.get(slot) else {
            return false;
        };
        cell.fetch_add(1, Ordering::SeqCst);
        if !counts.pending.load(Ordering::SeqCst) && !counts.pending.swap(true, Ordering::SeqCst) {
            // The first count since the last flush: the timer thread schedules the next one
            // (taking the lock first, so that it cannot be between its check and its wait).
            drop(lock(&fetching.schedule.0));
            fetching.schedule.1.notify_all();
        }
        true
    }

    /// Main thread: adds the counted checks to Envoy's counter.
    fn flush_checks(&self) {
        let counts = &self.check_counts;
        counts.pending.store(false, Ordering::SeqCst);
        for (cell, labels) in counts.cells.iter().zip(counts.labels.iter()) {
            let count = cell.swap(0, Ordering::SeqCst);
            if let (Some(id), true) = (self.counters.checks, count > 0) {
                self.envoy.add_to_counter(id, labels, count);
            }
        }
    }

    /// Main thread: the timer (or a refetch) asked for issuer `event`'s keys, or for a flush
    /// of the counted checks.
    pub fn on_scheduled(&self, event: u64) {
        let Some(fetching) = &self.fetching else {
            return;
        };
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if event == EVENT_FLUSH_CHECKS {
            self.flush_checks();
            return;
        }
        let mut schedule = lock(&fetching.schedule.0);
        if let Ok(index) = usize::try_from(event)
            && index < self.keys.len()
        {
            let first = schedule.fetches.start(index);
            self.run_fetch(&mut schedule, index, first);
        }
    }

    /// Main thread: runs issuer `index`'s fetch from step `next` until it waits for a callout
    /// or ends (a file is read at once).
    fn run_fetch(&self, schedule: &mut Schedule, index: usize, mut next: Result<Fetch, String>) {
        loop {
            let fetched: Fetched = match next {
                Ok(Fetch::File(path)) => std::fs::read(&path)
                    .map(|body| (body, None))
                    .map_err(|e| format!("reading {}: {e}", path.display())),
                Ok(Fetch::Get {
                    cluster,
                    authority,
                    path,
                }) => {
                    let timeout = self.fetch_timeout.as_millis().max(1) as u64;
                    match self.envoy.get(&cluster, &authority, &path, timeout) {
                        Ok(id) => {
                            schedule.callouts.push((id, index));
                            return;
                        }
                        Err(refused) => {
                            Err(format!("GET {path} through cluster {cluster:?}: {refused}"))
                        }
                    }
                }
                Err(error) => Err(error),
            };
            match self.finished(schedule, index, fetched) {
                Some(fetch) => next = Ok(fetch),
                None => return,
            }
        }
    }

    /// Main thread: a callout of this configuration answered.
    pub fn on_callout_done(&self, callout: u64, response: CalloutResponse) {
        let Some(fetching) = &self.fetching else {
            return;
        };
        let mut schedule = lock(&fetching.schedule.0);
        let Some(at) = schedule.callouts.iter().position(|(id, _)| *id == callout) else {
            return;
        };
        let (_, index) = schedule.callouts.swap_remove(at);
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let fetched = match response.status {
            Some(200) => Ok((response.body, response.cache_control)),
            Some(status) => Err(format!("HTTP {status}")),
            None => Err("no answer (connection failed, reset or timed out)".to_owned()),
        };
        if let Some(next) = self.finished(&mut schedule, index, fetched) {
            self.run_fetch(&mut schedule, index, Ok(next));
        }
    }

    /// A fetch step ended: publish, log, count, wake the streams waiting on this issuer.
    /// Returns the next step when there is one (discovery, then the JWKS).
    fn finished(&self, schedule: &mut Schedule, index: usize, fetched: Fetched) -> Option<Fetch> {
        let issuer = self.keys.name(index).to_owned();
        let step = schedule
            .fetches
            .finish(index, fetched, &self.keys, Instant::now());
        let result = match step {
            Step::Next(fetch) => return Some(fetch),
            Step::Loaded {
                keys,
                ignored,
                next,
            } => {
                abi::log(
                    Level::Info,
                    &format!(
                        "certbound: keys loaded: issuer {issuer}, {keys} keys; next refresh in {}s",
                        next.as_secs()
                    ),
                );
                for key in self.keys.first_reports(index, ignored) {
                    abi::log(
                        Level::Warn,
                        &format!(
                            "certbound: JWKS key ignored: issuer {issuer}, kid {:?}: {}",
                            key.kid.as_deref().unwrap_or(""),
                            key.why
                        ),
                    );
                }
                "success"
            }
            Step::Failed { error, next } => {
                // Say what checks get meanwhile: the last good keys, or 503 when there are none.
                let loaded = self.keys.loaded(index);
                let meanwhile = if loaded {
                    "keeping the last good keys"
                } else {
                    "no keys yet: its tokens get 503 keys_unavailable"
                };
                // At start the first fetch can come before Envoy has added the cluster: not yet
                // a problem worth a warning (a cluster that never appears keeps failing, and a
                // later attempt that still finds none warns).
                let starting = !loaded
                    && error.contains("cluster not found")
                    && next <= Duration::from_secs(2);
                abi::log(
                    if starting { Level::Info } else { Level::Warn },
                    &format!(
                        "certbound: key refresh failed: issuer {issuer}: {error}; {meanwhile}; retry in {}s",
                        next.as_secs()
                    ),
                );
                "failure"
            }
        };
        if let Some(id) = self.counters.key_refreshes {
            self.envoy.add_to_counter(id, &[&issuer, result], 1);
        }
        for waker in schedule.waiters.take_issuer(index) {
            waker.wake(EVENT_RESUME);
        }
        if let Some(fetching) = &self.fetching {
            fetching.schedule.1.notify_all();
        }
        None
    }

    /// Envoy destroys the configuration: wake every parked stream (they answer with the keys
    /// there are), stop the timer, and delete the scheduler once nothing can use it.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        // Streams have ended: the last counted checks go to Envoy before the counter does.
        self.flush_checks();
        let Some(fetching) = &self.fetching else {
            return;
        };
        let scheduler = {
            let mut schedule = lock(&fetching.schedule.0);
            for waker in schedule.waiters.take_all() {
                waker.wake(EVENT_RESUME);
            }
            fetching.schedule.1.notify_all();
            schedule.scheduler.take()
        };
        if let Some(timer) = lock(&fetching.timer).take() {
            let _ = timer.join();
        }
        // Deleted on the main thread, after the timer thread ended and under no lock.
        drop(scheduler);
    }
}
