//! Every issuer's current key snapshot, and the schedule its fetcher follows.
//!
//! Fetching is the adapters' business (the service uses an HTTP client on its runtime, the Envoy
//! module uses Envoy's HTTP callouts on the main thread); what they fetch is published here, and
//! checks read it from any thread without locking. When to fetch next is decided here too, so
//! that both adapters refresh, back off and become ready by the same rules.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Deserialize;

use super::set::{IgnoredKey, KeySet};
use crate::clock::Clock;
use crate::policy::KeyLookup;

/// When the service reports SERVING (the module has no readiness).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Once every issuer has usable keys.
    #[default]
    All,
    /// Once at least one issuer has usable keys (the others answer 503 until theirs load).
    Any,
}

/// Timing of fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTiming {
    /// Time between background refreshes when the JWKS response has no `max-age`.
    pub refresh_interval: Duration,
    /// Bounds on a JWKS response's `Cache-Control: max-age`.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// Seconds the last good keys stay usable after the last successful fetch.
    pub max_stale_seconds: i64,
    pub readiness: Readiness,
    /// An unknown `kid` triggers at most one refetch per issuer within this interval.
    pub refetch_min_interval: Duration,
    /// Bound on one fetch.
    pub fetch_timeout: Duration,
    /// Longest back-off between retries after failed fetches (never above `max_refresh`).
    pub retry_max: Duration,
}

impl Default for KeyTiming {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            max_stale_seconds: 86_400,
            readiness: Readiness::All,
            refetch_min_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// `max-age` of a `Cache-Control` header value (`no-cache`/`no-store` count as zero).
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut result = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(value) = lower.strip_prefix("max-age=") {
            result = value
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    result
}

struct IssuerSnapshot {
    /// The issuer's `iss`, for logs.
    name: String,
    current: ArcSwapOption<KeySet>,
    /// Clock time of the last successful fetch (`i64::MIN` before the first).
    fetched_at: AtomicI64,
    /// Ignored JWKS entries already reported, so that each is logged once.
    reported: Mutex<HashSet<(Option<String>, &'static str)>>,
}

/// Every issuer's current keys (in configuration order), and when each was last fetched.
pub struct KeySnapshots {
    issuers: Vec<IssuerSnapshot>,
    /// Bumped each time any issuer's key set is replaced; see [`KeySnapshots::generation`].
    generation: AtomicU64,
    timing: KeyTiming,
    clock: Arc<dyn Clock>,
}

impl KeyLookup for KeySnapshots {
    /// The issuer's keys, unless none were ever loaded or the last success is older than
    /// `max_stale` (stale-if-error has a limit).
    fn key_set(&self, index: usize) -> Option<Arc<KeySet>> {
        self.usable_for(index)?;
        self.issuers[index].current.load_full()
    }
}

impl KeySnapshots {
    /// No keys yet for these issuers (their `iss`, in configuration order).
    pub fn new(names: Vec<String>, timing: KeyTiming, clock: Arc<dyn Clock>) -> Self {
        let issuers = names
            .into_iter()
            .map(|name| IssuerSnapshot {
                name,
                current: ArcSwapOption::empty(),
                fetched_at: AtomicI64::new(i64::MIN),
                reported: Mutex::default(),
            })
            .collect();
        Self {
            issuers,
            generation: AtomicU64::new(0),
            timing,
            clock,
        }
    }

    pub fn timing(&self) -> &KeyTiming {
        &self.timing
    }

    pub fn len(&self) -> usize {
        self.issuers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn issuer_names(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.name.as_str())
    }

    pub fn name(&self, index: usize) -> &str {
        &self.issuers[index].name
    }

    /// Publishes a freshly fetched key set for issuer `index`, fetched now.
    pub fn publish(&self, index: usize, set: KeySet) {
        let issuer = &self.issuers[index];
        issuer.current.store(Some(Arc::new(set)));
        issuer.fetched_at.store(self.clock.now(), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Which key sets are current: read it before deciding, and compare after an unknown-`kid`
    /// refetch to know whether deciding again can help.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether issuer `index` ever had keys (usable or not).
    pub fn loaded(&self, index: usize) -> bool {
        self.issuers
            .get(index)
            .is_some_and(|i| i.current.load().is_some())
    }

    /// The number of keys in issuer `index`'s current set.
    pub fn key_count(&self, index: usize) -> usize {
        self.issuers[index]
            .current
            .load()
            .as_ref()
            .map_or(0, |set| set.len())
    }

    /// Seconds since issuer `index`'s keys were last fetched successfully.
    pub fn key_age(&self, index: usize) -> Option<i64> {
        let at = self.issuers.get(index)?.fetched_at.load(Ordering::Acquire);
        (at != i64::MIN).then(|| self.clock.now().saturating_sub(at))
    }

    /// How much longer issuer `index`'s keys stay usable; `None` when they are not usable now
    /// (never loaded, or older than `max_stale`).
    pub fn usable_for(&self, index: usize) -> Option<Duration> {
        if !self.loaded(index) {
            return None;
        }
        let left = self.timing.max_stale_seconds - self.key_age(index)?;
        (left >= 0).then(|| Duration::from_secs(left.unsigned_abs()))
    }

    /// Ready to answer as `readiness` asks: every issuer (or any) has usable keys. Staleness is
    /// a matter of time, so ask again rather than wait for a change.
    pub fn is_ready(&self) -> bool {
        let usable = |index| self.usable_for(index).is_some();
        match self.timing.readiness {
            Readiness::All => (0..self.issuers.len()).all(usable),
            Readiness::Any => self.issuers.is_empty() || (0..self.issuers.len()).any(usable),
        }
    }

    /// When to fetch again after a success whose response said `max_age`: the `max-age`
    /// within `min_refresh`..`max_refresh` (else `refresh_interval`), and never later than the
    /// keys would go stale: waiting alone must not make them unusable.
    pub fn after_success(&self, max_age: Option<Duration>) -> Duration {
        let delay = match max_age {
            Some(max_age) => max_age.clamp(self.timing.min_refresh, self.timing.max_refresh),
            None => self.timing.refresh_interval,
        };
        delay.min(Duration::from_secs(
            self.timing.max_stale_seconds.max(1).unsigned_abs(),
        ))
    }

    /// When to try again after `failures` failed fetches in a row (1 after the first).
    ///
    /// The back-off doubles from 1 s up to `retry_max`. While the keys are still usable it never
    /// waits past the moment they go stale; once they are not usable (the issuer's checks answer
    /// 503), it never waits more than `min_refresh`, so service resumes within that long of the
    /// IdP's return.
    pub fn after_failure(&self, index: usize, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let backoff = Duration::from_secs(1u64 << doublings).min(self.timing.retry_max);
        match self.usable_for(index) {
            Some(left) => backoff.min(left.max(Duration::from_secs(1))),
            None => backoff.min(self.timing.min_refresh),
        }
    }

    /// The ignored keys of a new set that were not reported before (each is logged once).
    pub fn first_reports(&self, index: usize, ignored: Vec<IgnoredKey>) -> Vec<IgnoredKey> {
        let mut reported = self.issuers[index]
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ignored
            .into_iter()
            .filter(|key| reported.insert((key.kid.clone(), key.why)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const NOW: i64 = 1_800_000_000;

    fn snapshots(timing: KeyTiming, issuers: usize) -> (KeySnapshots, ManualClock) {
        let clock = ManualClock::new(NOW);
        let names = (0..issuers)
            .map(|i| format!("https://idp{i}.test"))
            .collect();
        (
            KeySnapshots::new(names, timing, Arc::new(clock.clone())),
            clock,
        )
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(max_age("public, max-age=600"), Some(secs(600)));
        assert_eq!(max_age("Max-Age=\"30\""), Some(secs(30)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn after_success_keeps_max_age_within_bounds_and_before_staleness() {
        let (keys, _) = snapshots(KeyTiming::default(), 1);
        let timing = KeyTiming::default();
        assert_eq!(keys.after_success(Some(secs(600))), secs(600));
        assert_eq!(keys.after_success(Some(Duration::ZERO)), timing.min_refresh);
        assert_eq!(keys.after_success(Some(secs(999_999))), timing.max_refresh);
        assert_eq!(keys.after_success(None), timing.refresh_interval);
        let short_stale = KeyTiming {
            max_stale_seconds: 20,
            ..KeyTiming::default()
        };
        let (keys, _) = snapshots(short_stale, 1);
        assert_eq!(keys.after_success(None), secs(20));
    }

    #[test]
    fn keys_are_usable_until_max_stale_then_not() {
        let timing = KeyTiming {
            max_stale_seconds: 3,
            ..KeyTiming::default()
        };
        let (keys, clock) = snapshots(timing, 1);
        assert!(keys.key_set(0).is_none() && !keys.is_ready());
        keys.publish(0, KeySet::default());
        assert!(keys.key_set(0).is_some() && keys.is_ready());
        clock.advance(3);
        assert_eq!(keys.usable_for(0), Some(Duration::ZERO));
        assert!(keys.is_ready());
        clock.advance(1);
        assert!(keys.key_set(0).is_none());
        assert!(!keys.is_ready(), "stale keys are not ready");
        keys.publish(0, KeySet::default());
        assert!(keys.is_ready(), "ready again after the first good fetch");
    }

    #[test]
    fn readiness_all_or_any() {
        let (all, _) = snapshots(KeyTiming::default(), 2);
        all.publish(0, KeySet::default());
        assert!(!all.is_ready());
        let any_timing = KeyTiming {
            readiness: Readiness::Any,
            ..KeyTiming::default()
        };
        let (any, _) = snapshots(any_timing, 2);
        assert!(!any.is_ready());
        any.publish(1, KeySet::default());
        assert!(any.is_ready());
        let (none, _) = snapshots(
            KeyTiming {
                readiness: Readiness::Any,
                ..KeyTiming::default()
            },
            0,
        );
        assert!(none.is_ready());
    }

    #[test]
    fn failures_back_off_to_retry_max_while_keys_are_usable() {
        let (keys, _) = snapshots(KeyTiming::default(), 1);
        keys.publish(0, KeySet::default());
        let delays: Vec<u64> = (1..=7)
            .map(|n| keys.after_failure(0, n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(keys.after_failure(0, u32::MAX), secs(30));
    }

    #[test]
    fn a_retry_never_waits_past_the_moment_keys_go_stale() {
        let timing = KeyTiming {
            max_stale_seconds: 10,
            ..KeyTiming::default()
        };
        let (keys, clock) = snapshots(timing, 1);
        keys.publish(0, KeySet::default());
        clock.advance(4);
        assert_eq!(keys.after_failure(0, 5), secs(6));
    }

    #[test]
    fn unusable_keys_are_retried_at_least_every_min_refresh() {
        // The fault-injection run: max_stale 3 s, short refresh bounds; the IdP is away long
        // enough for the back-off to reach its cap.
        let timing = KeyTiming {
            max_stale_seconds: 3,
            min_refresh: secs(2),
            max_refresh: secs(5),
            ..KeyTiming::default()
        };
        let (keys, clock) = snapshots(timing, 1);
        keys.publish(0, KeySet::default());
        clock.advance(60);
        for failures in 1..=10 {
            assert!(keys.after_failure(0, failures) <= secs(2), "{failures}");
        }
        // Never loaded at all: the same bound.
        let (fresh, _) = snapshots(
            KeyTiming {
                min_refresh: secs(2),
                ..KeyTiming::default()
            },
            1,
        );
        assert_eq!(fresh.after_failure(0, 9), secs(2));
    }

    #[test]
    fn ignored_keys_are_reported_once() {
        let (keys, _) = snapshots(KeyTiming::default(), 1);
        let ignored = || {
            vec![IgnoredKey {
                kid: Some("enc".into()),
                why: "use is not sig",
            }]
        };
        assert_eq!(keys.first_reports(0, ignored()).len(), 1);
        assert!(keys.first_reports(0, ignored()).is_empty());
    }
}
