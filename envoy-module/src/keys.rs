//! Issuer keys inside Envoy: what to fetch next and when, without doing any I/O itself.
//!
//! The same schedule as the service (the core's [`KeySnapshots::after_success`] and
//! [`KeySnapshots::after_failure`]), the same OIDC discovery and JWKS parsing; the fetching itself
//! goes through Envoy's HTTP callouts on the main thread ([`crate::module`]). An unknown `kid`
//! asks for one refetch per issuer per `keys.refetch_min_interval_seconds`, single-flight, and
//! the stream that asked waits for it at most `keys.unknown_kid_wait_ms`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use certbound_core::keys::discovery::{self, DiscoveryError};
use certbound_core::keys::{IgnoredKey, KeySet, KeySnapshots, KeySource, max_age};

/// What one fetch step asks the host to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    /// Read a local JWKS file (on the main thread, as Envoy reads its own files).
    File(PathBuf),
    /// GET through an Envoy cluster.
    Get {
        cluster: String,
        authority: String,
        path: String,
    },
}

/// Which document a GET is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Discovery,
    Jwks,
}

/// A fetched document, or why there is none.
pub type Fetched = Result<(Vec<u8>, Option<String>), String>;

/// What a finished step means.
#[derive(Debug)]
pub enum Step {
    /// Discovery answered: fetch the JWKS it names next.
    Next(Fetch),
    /// Keys were published; the next refresh is due after this long.
    Loaded {
        keys: usize,
        ignored: Vec<IgnoredKey>,
        next: Duration,
    },
    /// The fetch failed; the last good keys stay; retry after this long.
    Failed { error: String, next: Duration },
}

#[derive(Debug, Default)]
struct IssuerFetch {
    /// When the next scheduled refresh is due (`None` while one is pending or under way).
    due: Option<Instant>,
    /// A fetch was asked for (an event committed) or is under way.
    busy: bool,
    stage: Option<Stage>,
    failures: u32,
    /// When the last unknown-`kid` refetch was asked for.
    last_refetch: Option<Instant>,
    /// `jwks_uri` learnt from discovery.
    discovered: Option<String>,
}

/// Every issuer's fetch state (behind the module's lock).
#[derive(Debug)]
pub struct Fetches {
    sources: Vec<(KeySource, Option<String>)>,
    issuers: Vec<IssuerFetch>,
}

/// The authority and the path (with query) of an http(s) URL, for a callout's headers.
pub fn authority_and_path(url: &str) -> Option<(String, String)> {
    let url = url::Url::parse(url).ok()?;
    let host = url.host_str()?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    Some((authority, path))
}

impl Fetches {
    /// Every issuer's first fetch is due now. `sources` pairs each issuer's key source with the
    /// cluster its URLs are fetched through.
    pub fn new(sources: Vec<(KeySource, Option<String>)>, now: Instant) -> Self {
        let issuers = sources
            .iter()
            .map(|_| IssuerFetch {
                due: Some(now),
                ..Default::default()
            })
            .collect();
        Self { sources, issuers }
    }

    /// Issuers whose refresh is due at `now`: they become busy, and the caller asks the main
    /// thread to fetch them.
    pub fn take_due(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (index, issuer) in self.issuers.iter_mut().enumerate() {
            if !issuer.busy && issuer.due.is_some_and(|at| at <= now) {
                issuer.due = None;
                issuer.busy = true;
                due.push(index);
            }
        }
        due
    }

    /// The earliest time a refresh is due, to sleep until.
    pub fn next_due(&self) -> Option<Instant> {
        self.issuers
            .iter()
            .filter(|i| !i.busy)
            .filter_map(|i| i.due)
            .min()
    }

    /// An unknown `kid` for issuer `index`: whether a refetch is (now) under way for it. Starts
    /// one unless one was asked for within `min_interval`; `Some(true)` means the caller must
    /// have the main thread fetch it now, `Some(false)` that one is already under way.
    pub fn refetch(&mut self, index: usize, now: Instant, min_interval: Duration) -> Option<bool> {
        let issuer = self.issuers.get_mut(index)?;
        if issuer.busy {
            return Some(false);
        }
        if issuer
            .last_refetch
            .is_some_and(|at| now.duration_since(at) < min_interval)
        {
            return None;
        }
        issuer.last_refetch = Some(now);
        issuer.due = None;
        issuer.busy = true;
        Some(true)
    }

    /// The first step of a fetch of issuer `index` (marked busy by [`Fetches::take_due`] or
    /// [`Fetches::refetch`]).
    pub fn start(&mut self, index: usize) -> Result<Fetch, String> {
        let (source, cluster) = &self.sources[index];
        let issuer = &mut self.issuers[index];
        issuer.busy = true;
        let (stage, url) = match source {
            KeySource::File(path) => {
                issuer.stage = None;
                return Ok(Fetch::File(path.clone()));
            }
            KeySource::Uri(url) => (Stage::Jwks, url.clone()),
            KeySource::Discovery { issuer: iss } => match &issuer.discovered {
                Some(url) => (Stage::Jwks, url.clone()),
                None => (Stage::Discovery, discovery::discovery_url(iss)),
            },
        };
        issuer.stage = Some(stage);
        let cluster = cluster.clone().unwrap_or_default();
        let (authority, path) =
            authority_and_path(&url).ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
        Ok(Fetch::Get {
            cluster,
            authority,
            path,
        })
    }

    /// A step of issuer `index`'s fetch finished with `fetched`; publishes keys into
    /// `snapshots` when they came, and says what comes next.
    pub fn finish(
        &mut self,
        index: usize,
        fetched: Fetched,
        snapshots: &KeySnapshots,
        now: Instant,
    ) -> Step {
        let stage = self.issuers[index].stage.take();
        let result = fetched.and_then(|(body, cache_control)| match stage {
            Some(Stage::Discovery) => {
                let KeySource::Discovery { issuer } = &self.sources[index].0 else {
                    return Err("discovery for an issuer without discovery".to_owned());
                };
                let url = discovery::jwks_uri(&body, issuer)
                    .map_err(|e: DiscoveryError| format!("discovery document: {e}"))?;
                self.issuers[index].discovered = Some(url);
                Ok(None)
            }
            Some(Stage::Jwks) | None => {
                let (set, ignored) = KeySet::from_jwks(&body).map_err(|e| format!("JWKS: {e}"))?;
                let max_age = cache_control.as_deref().and_then(max_age);
                Ok(Some((set, ignored, max_age)))
            }
        });
        let issuer = &mut self.issuers[index];
        match result {
            Ok(None) => match self.start(index) {
                Ok(fetch) => Step::Next(fetch),
                Err(error) => self.failed(index, error, snapshots, now),
            },
            Ok(Some((set, ignored, max_age))) => {
                issuer.busy = false;
                issuer.failures = 0;
                let keys = set.len();
                snapshots.publish(index, set);
                let next = snapshots.after_success(max_age);
                issuer.due = Some(now + next);
                Step::Loaded {
                    keys,
                    ignored,
                    next,
                }
            }
            Err(error) => {
                if stage == Some(Stage::Jwks) {
                    // The IdP may have moved its JWKS: discover again next time.
                    issuer.discovered = None;
                }
                self.failed(index, error, snapshots, now)
            }
        }
    }

    fn failed(
        &mut self,
        index: usize,
        error: String,
        snapshots: &KeySnapshots,
        now: Instant,
    ) -> Step {
        let issuer = &mut self.issuers[index];
        issuer.busy = false;
        issuer.stage = None;
        issuer.failures = issuer.failures.saturating_add(1);
        let next = snapshots.after_failure(index, issuer.failures);
        issuer.due = Some(now + next);
        Step::Failed { error, next }
    }
}

/// Streams parked on an unknown `kid`, waiting for their issuer's refetch.
#[derive(Debug)]
pub struct Waiters<W> {
    next_id: u64,
    waiting: HashMap<u64, (usize, Instant, W)>,
}

impl<W> Default for Waiters<W> {
    fn default() -> Self {
        Self {
            next_id: 1,
            waiting: HashMap::new(),
        }
    }
}

impl<W> Waiters<W> {
    /// Parks a stream on issuer `index` until `deadline`; the id unparks it.
    pub fn park(&mut self, index: usize, deadline: Instant, waker: W) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, (index, deadline, waker));
        id
    }

    /// Removes a parked stream (it went away, or it was woken).
    pub fn unpark(&mut self, id: u64) -> Option<W> {
        self.waiting.remove(&id).map(|(_, _, waker)| waker)
    }

    /// Every stream waiting on issuer `index` (its fetch finished).
    pub fn take_issuer(&mut self, index: usize) -> Vec<W> {
        let ids: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (issuer, _, _))| *issuer == index)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| self.unpark(id)).collect()
    }

    /// Every stream whose wait is over at `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<W> {
        let ids: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (_, deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| self.unpark(id)).collect()
    }

    /// Everyone (the configuration is going away).
    pub fn take_all(&mut self) -> Vec<W> {
        self.waiting
            .drain()
            .map(|(_, (_, _, waker))| waker)
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting
            .values()
            .map(|(_, deadline, _)| *deadline)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certbound_core::clock::ManualClock;
    use certbound_core::keys::KeyTiming;
    use std::sync::Arc;

    const JWKS: &[u8] = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn snapshots() -> KeySnapshots {
        KeySnapshots::new(
            vec!["https://idp.test".into()],
            KeyTiming::default(),
            Arc::new(ManualClock::new(1_800_000_000)),
        )
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            authority_and_path("https://idp.test/realms/a/certs?x=1"),
            Some(("idp.test".into(), "/realms/a/certs?x=1".into()))
        );
        assert_eq!(
            authority_and_path("http://127.0.0.1:8080/jwks"),
            Some(("127.0.0.1:8080".into(), "/jwks".into()))
        );
        assert_eq!(authority_and_path("not a url"), None);
    }

    #[test]
    fn discovery_then_jwks_then_the_schedule() {
        let now = Instant::now();
        let source = KeySource::Discovery {
            issuer: "https://idp.test".into(),
        };
        let mut fetches = Fetches::new(vec![(source, Some("idp".into()))], now);
        let keys = snapshots();
        assert_eq!(fetches.take_due(now), [0]);
        assert_eq!(fetches.take_due(now), Vec::<usize>::new(), "busy");
        let discovery = fetches.start(0).expect("start");
        assert_eq!(
            discovery,
            Fetch::Get {
                cluster: "idp".into(),
                authority: "idp.test".into(),
                path: "/.well-known/openid-configuration".into()
            }
        );
        let document = br#"{"issuer":"https://idp.test","jwks_uri":"https://keys.idp.test/jwks"}"#;
        let step = fetches.finish(0, Ok((document.to_vec(), None)), &keys, now);
        let Step::Next(Fetch::Get {
            authority, path, ..
        }) = step
        else {
            panic!("{step:?}");
        };
        assert_eq!(
            (authority.as_str(), path.as_str()),
            ("keys.idp.test", "/jwks")
        );
        let step = fetches.finish(
            0,
            Ok((JWKS.to_vec(), Some("max-age=120".into()))),
            &keys,
            now,
        );
        assert!(
            matches!(step, Step::Loaded { keys: 1, next, ignored } if next == Duration::from_secs(120) && ignored.is_empty())
        );
        assert!(keys.loaded(0));
        assert_eq!(fetches.next_due(), Some(now + Duration::from_secs(120)));
    }

    #[test]
    fn failures_back_off_and_a_failed_jwks_rediscovers() {
        let now = Instant::now();
        let source = KeySource::Discovery {
            issuer: "https://idp.test".into(),
        };
        let mut fetches = Fetches::new(vec![(source, Some("idp".into()))], now);
        let keys = snapshots();
        fetches.take_due(now);
        fetches.start(0).expect("start");
        let document = br#"{"issuer":"https://idp.test","jwks_uri":"https://idp.test/jwks"}"#;
        fetches.finish(0, Ok((document.to_vec(), None)), &keys, now);
        let step = fetches.finish(0, Err("HTTP 503".into()), &keys, now);
        assert!(matches!(step, Step::Failed { next, .. } if next == Duration::from_secs(1)));
        fetches.take_due(now + Duration::from_secs(1));
        let again = fetches.start(0).expect("start");
        assert!(
            matches!(again, Fetch::Get { path, .. } if path == "/.well-known/openid-configuration")
        );
        let step = fetches.finish(0, Ok((b"{}".to_vec(), None)), &keys, now);
        assert!(matches!(step, Step::Failed { next, .. } if next == Duration::from_secs(2)));
        // A discovery document about another issuer names both.
        fetches.take_due(now + Duration::from_secs(3));
        fetches.start(0).expect("start");
        let other = br#"{"issuer":"https://idp.test/","jwks_uri":"https://idp.test/jwks"}"#;
        let Step::Failed { error, .. } = fetches.finish(0, Ok((other.to_vec(), None)), &keys, now)
        else {
            panic!("must fail");
        };
        assert!(
            error.contains("\"https://idp.test/\"") && error.contains("\"https://idp.test\""),
            "{error}"
        );
    }

    #[test]
    fn unknown_kid_refetches_are_single_flight_and_rate_limited() {
        let now = Instant::now();
        let mut fetches = Fetches::new(
            vec![(
                KeySource::Uri("https://idp.test/jwks".into()),
                Some("idp".into()),
            )],
            now,
        );
        let keys = snapshots();
        fetches.take_due(now);
        fetches.start(0).expect("start");
        fetches.finish(0, Ok((JWKS.to_vec(), None)), &keys, now);
        let interval = Duration::from_secs(30);
        assert_eq!(fetches.refetch(0, now, interval), Some(true), "starts one");
        assert_eq!(
            fetches.refetch(0, now, interval),
            Some(false),
            "joins the one under way"
        );
        fetches.start(0).expect("start");
        fetches.finish(0, Ok((JWKS.to_vec(), None)), &keys, now);
        assert_eq!(
            fetches.refetch(0, now + Duration::from_secs(5), interval),
            None,
            "rate-limited"
        );
        assert_eq!(fetches.refetch(0, now + interval, interval), Some(true));
        assert_eq!(fetches.refetch(7, now, interval), None);
    }

    #[test]
    fn waiters_wake_by_issuer_deadline_or_all() {
        let now = Instant::now();
        let mut waiters = Waiters::default();
        let a = waiters.park(0, now + Duration::from_millis(100), "a");
        waiters.park(1, now + Duration::from_millis(50), "b");
        waiters.park(0, now + Duration::from_secs(1), "c");
        assert_eq!(
            waiters.next_deadline(),
            Some(now + Duration::from_millis(50))
        );
        assert_eq!(waiters.take_expired(now + Duration::from_millis(60)), ["b"]);
        assert_eq!(waiters.unpark(a), Some("a"));
        assert_eq!(waiters.unpark(a), None);
        assert_eq!(waiters.take_issuer(0), ["c"]);
        assert!(waiters.take_all().is_empty());
    }
}
