//! Fetches each issuer's keys (JWKS file, JWKS URL or OIDC discovery), refreshes them in the
//! background and publishes immutable snapshots that the Check path reads without locking.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::metrics::{IssuerLabel, Metrics};
use certbound_core::KeyLookup;
use certbound_core::clock::Clock;
use certbound_core::keys::{JwksError, KeySet};

/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Where an issuer's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Uri(String),
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery {
        issuer: String,
    },
}

/// When the service reports SERVING.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Once every issuer has keys.
    #[default]
    All,
    /// Once at least one issuer has keys (the others answer 503 until theirs load).
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
    /// Bound on one HTTP fetch.
    pub fetch_timeout: Duration,
    /// Longest delay between retries while an issuer's keys are not loaded.
    pub max_retry_interval: Duration,
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
            max_retry_interval: Duration::from_secs(30),
        }
    }
}

/// Why a key fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("reading {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("GET {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("discovery document at {url}: {what}")]
    Discovery { url: String, what: &'static str },
    #[error("JWKS from {from}: {source}")]
    Jwks { from: String, source: JwksError },
}

struct IssuerKeys {
    /// The issuer's `iss`, for logs.
    name: String,
    source: KeySource,
    current: ArcSwapOption<KeySet>,
    /// Clock time of the last successful fetch (`i64::MIN` before the first).
    fetched_at: AtomicI64,
    /// Ignored JWKS entries already logged, so each is logged once.
    logged_ignored: std::sync::Mutex<HashSet<(Option<String>, &'static str)>>,
    /// `jwks_uri` learnt from discovery.
    discovered_jwks_uri: ArcSwapOption<String>,
    /// When the last unknown-`kid` refetch started; the lock makes refetches single-flight.
    last_refetch: Mutex<Option<Instant>>,
}

/// Every issuer's current keys.
pub struct KeyStore {
    issuers: Vec<IssuerKeys>,
    /// Bumped each time any issuer's key set is replaced; see [`KeyStore::generation`].
    generation: AtomicU64,
    http: reqwest::Client,
    timing: KeyTiming,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    ready: watch::Sender<bool>,
}

impl KeyLookup for KeyStore {
    /// The issuer's keys, unless none were ever loaded or the last success is older than
    /// `max_stale` (stale-if-error has a limit).
    fn key_set(&self, index: usize) -> Option<Arc<KeySet>> {
        let issuer = self.issuers.get(index)?;
        let age = self
            .clock
            .now()
            .saturating_sub(issuer.fetched_at.load(Ordering::Acquire));
        if age > self.timing.max_stale_seconds {
            return None;
        }
        issuer.current.load_full()
    }
}

/// How long to wait before the next refresh: `max-age` within bounds, else the default interval.
pub fn refresh_delay(max_age: Option<Duration>, timing: &KeyTiming) -> Duration {
    match max_age {
        Some(max_age) => max_age.clamp(timing.min_refresh, timing.max_refresh),
        None => timing.refresh_interval,
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

impl KeyStore {
    /// A store for these issuers (`(iss, source)` in configuration order); nothing is fetched yet.
    pub fn new(
        issuers: Vec<(String, KeySource)>,
        http: reqwest::Client,
        timing: KeyTiming,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|(name, source)| IssuerKeys {
                name,
                source,
                current: ArcSwapOption::empty(),
                fetched_at: AtomicI64::new(i64::MIN),
                logged_ignored: Default::default(),
                discovered_jwks_uri: ArcSwapOption::empty(),
                last_refetch: Mutex::new(None),
            })
            .collect();
        Self {
            issuers,
            generation: AtomicU64::new(0),
            http,
            timing,
            clock,
            metrics,
            ready: watch::Sender::new(false),
        }
    }

    /// Becomes `true` once issuers have keys as `readiness` asks (every one, or any).
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn all_loaded(&self) -> bool {
        self.issuers.iter().all(|i| i.current.load().is_some())
    }

    pub fn is_ready(&self) -> bool {
        match self.timing.readiness {
            Readiness::All => self.all_loaded(),
            Readiness::Any => {
                self.issuers.is_empty() || self.issuers.iter().any(|i| i.current.load().is_some())
            }
        }
    }

    fn update_ready(&self) {
        self.ready.send_if_modified(|ready| {
            let now = self.is_ready();
            std::mem::replace(ready, now) != now
        });
    }

    /// Sets the key-age gauges (called when metrics are scraped).
    pub fn observe(&self) {
        for (index, issuer) in self.issuers.iter().enumerate() {
            if let Some(age) = self.key_age(index) {
                self.metrics
                    .key_age_seconds
                    .get_or_create(&IssuerLabel {
                        issuer: issuer.name.clone(),
                    })
                    .set(age as f64);
            }
        }
    }

    /// Seconds since issuer `index`'s keys were last fetched successfully.
    pub fn key_age(&self, index: usize) -> Option<i64> {
        let at = self.issuers.get(index)?.fetched_at.load(Ordering::Acquire);
        (at != i64::MIN).then(|| self.clock.now().saturating_sub(at))
    }

    pub fn issuer_names(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.name.as_str())
    }

    /// Fetches every issuer's keys once, concurrently; failures are logged and retried later.
    pub async fn load_all(&self) {
        futures_util::future::join_all((0..self.issuers.len()).map(|i| self.refresh(i))).await;
        self.update_ready();
    }

    /// Refreshes every issuer in the background. The per-issuer tasks live in a `JoinSet`
    /// owned by this future: abort the task running it and they stop too.
    pub async fn run_refresh(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..self.issuers.len() {
            let store = Arc::clone(&self);
            tasks.spawn(async move { store.refresh_loop(index).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn refresh_loop(&self, index: usize) {
        let retry_start = Duration::from_secs(1);
        let mut retry = retry_start;
        // The initial load has just happened; its max-age is not known here, so start with the
        // default interval (or the retry delay when it failed).
        let mut wait = if self.issuers[index].current.load().is_some() {
            self.timing.refresh_interval
        } else {
            retry_start
        };
        loop {
            tokio::time::sleep(wait).await;
            wait = match self.refresh(index).await {
                Ok(next) => {
                    retry = retry_start;
                    next
                }
                Err(_) => {
                    let this = retry;
                    retry = (retry * 2).min(self.timing.max_retry_interval);
                    this
                }
            };
        }
    }

    /// Fetches issuer `index`'s keys now and publishes them; on failure the last good set stays.
    /// Returns when the next refresh is due.
    pub async fn refresh(&self, index: usize) -> Result<Duration, FetchError> {
        let issuer = &self.issuers[index];
        match self.fetch(issuer).await {
            Ok((set, max_age)) => {
                tracing::info!(issuer = %issuer.name, keys = set.len(), "keys loaded");
                self.metrics.key_refresh(&issuer.name, true);
                self.metrics
                    .keys_loaded
                    .get_or_create(&IssuerLabel {
                        issuer: issuer.name.clone(),
                    })
                    .set(set.len() as i64);
                issuer.current.store(Some(Arc::new(set)));
                self.generation.fetch_add(1, Ordering::AcqRel);
                issuer.fetched_at.store(self.clock.now(), Ordering::Release);
                self.update_ready();
                Ok(refresh_delay(max_age, &self.timing))
            }
            Err(error) => {
                let kept = issuer.current.load().is_some();
                self.metrics.key_refresh(&issuer.name, false);
                tracing::warn!(issuer = %issuer.name, %error, kept_previous_keys = kept, "key refresh failed");
                Err(error)
            }
        }
    }

    /// Which key sets are current: read it before deciding, and pass it to
    /// [`KeyStore::refetch_unknown_kid`] when the decision found the `kid` unknown.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Refetches after an unknown `kid`: at most once per `refetch_min_interval` per issuer, and
    /// single-flight (concurrent callers wait for the fetch under way instead of starting another).
    /// `seen` is the [`KeyStore::generation`] the caller decided with. Returns whether the keys
    /// may have changed since then, i.e. whether deciding again can help.
    pub async fn refetch_unknown_kid(&self, index: usize, seen: u64) -> bool {
        let Some(issuer) = self.issuers.get(index) else {
            return false;
        };
        let mut last = issuer.last_refetch.lock().await;
        // Keys replaced since the caller decided (by a refetch it waited for, or one that ended
        // between its decision and this call, or a scheduled refresh): decide again with them.
        if self.generation() != seen {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < self.timing.refetch_min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        tracing::info!(issuer = %issuer.name, "unknown kid: refetching keys");
        self.refresh(index).await.is_ok()
    }

    async fn fetch(&self, issuer: &IssuerKeys) -> Result<(KeySet, Option<Duration>), FetchError> {
        let (document, from) = match &issuer.source {
            KeySource::File(path) => {
                let body = tokio::fs::read(path)
                    .await
                    .map_err(|source| FetchError::File {
                        path: path.display().to_string(),
                        source,
                    })?;
                (
                    Document {
                        body,
                        max_age: None,
                    },
                    path.display().to_string(),
                )
            }
            KeySource::Uri(url) => (self.get(url).await?, url.clone()),
            KeySource::Discovery { issuer: iss } => {
                let url = match issuer.discovered_jwks_uri.load_full() {
                    Some(url) => url,
                    None => {
                        let url = Arc::new(self.discover(iss).await?);
                        issuer.discovered_jwks_uri.store(Some(url.clone()));
                        url
                    }
                };
                match self.get(&url).await {
                    Ok(document) => (document, url.to_string()),
                    Err(error) => {
                        // The IdP may have moved its JWKS: discover again next time.
                        issuer.discovered_jwks_uri.store(None);
                        return Err(error);
                    }
                }
            }
        };
        let (set, ignored) =
            KeySet::from_jwks(&document.body).map_err(|source| FetchError::Jwks {
                from: from.clone(),
                source,
            })?;
        let mut logged = issuer
            .logged_ignored
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for key in ignored {
            if logged.insert((key.kid.clone(), key.why)) {
                tracing::warn!(issuer = %issuer.name, kid = key.kid.as_deref().unwrap_or(""), why = key.why, "JWKS key ignored");
            }
        }
        Ok((set, document.max_age))
    }

    async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?.body;
        let document: Value = serde_json::from_slice(&body).map_err(|_| FetchError::Discovery {
            url: url.clone(),
            what: "not JSON",
        })?;
        // OpenID Connect Discovery §4.3: the document's issuer must be the one we asked about.
        if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(FetchError::Discovery {
                url,
                what: "issuer does not match",
            });
        }
        document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(FetchError::Discovery {
                url,
                what: "no jwks_uri",
            })
    }

    async fn get(&self, url: &str) -> Result<Document, FetchError> {
        let http_error = |source| FetchError::Http {
            url: url.to_owned(),
            source,
        };
        let mut response = self
            .http
            .get(url)
            .timeout(self.timing.fetch_timeout)
            .send()
            .await
            .map_err(http_error)?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let cache_max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge {
                    url: url.to_owned(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Document {
            body,
            max_age: cache_max_age,
        })
    }
}

/// A fetched document and its `Cache-Control: max-age`.
struct Document {
    body: Vec<u8>,
    max_age: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("Max-Age=\"30\""), Some(Duration::from_secs(30)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn refresh_delay_keeps_max_age_within_bounds() {
        let timing = KeyTiming::default();
        assert_eq!(
            refresh_delay(Some(Duration::from_secs(600)), &timing),
            Duration::from_secs(600)
        );
        assert_eq!(
            refresh_delay(Some(Duration::ZERO), &timing),
            timing.min_refresh
        );
        assert_eq!(
            refresh_delay(Some(Duration::from_secs(999_999)), &timing),
            timing.max_refresh
        );
        assert_eq!(refresh_delay(None, &timing), timing.refresh_interval);
    }
}
