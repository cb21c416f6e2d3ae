//! Fetches each issuer's keys (JWKS file, JWKS URL or OIDC discovery) with the service's HTTP
//! client, refreshes them in the background, and publishes them into the core's
//! [`KeySnapshots`], which the Check path reads without locking. When to fetch is the core's
//! schedule ([`KeySnapshots::after_success`], [`KeySnapshots::after_failure`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use certbound_core::KeyLookup;
use certbound_core::clock::Clock;
use certbound_core::keys::discovery::{self, DiscoveryError};
use certbound_core::keys::{JwksError, KeySet, KeySnapshots, KeySource, KeyTiming, max_age};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::metrics::{IssuerLabel, Metrics};

/// Hashes JWKS documents to tell a changed one from the same one read again (fixed keys: the
/// same document hashes the same for the process's life).
static DOCUMENT_HASH: std::hash::BuildHasherDefault<std::hash::DefaultHasher> =
    std::hash::BuildHasherDefault::new();

/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

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
    #[error("discovery document at {url}: {source}")]
    Discovery { url: String, source: DiscoveryError },
    #[error("JWKS from {from}: {source}")]
    Jwks { from: String, source: JwksError },
}

/// How one issuer's keys are fetched.
struct IssuerSource {
    source: KeySource,
    /// `jwks_uri` learnt from discovery.
    discovered_jwks_uri: ArcSwapOption<String>,
    /// When the last unknown-`kid` refetch started; the lock makes refetches single-flight.
    last_refetch: Mutex<Option<Instant>>,
    /// A hash of the last JWKS document loaded (0: none yet): a refresh that reads the same
    /// keys again (a static `jwks_file` every few minutes) is not news at INFO.
    last_document: AtomicU64,
}

/// Every issuer's current keys, and the fetching behind them.
pub struct KeyStore {
    snapshots: KeySnapshots,
    sources: Vec<IssuerSource>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    /// Changes when a fetch may have changed readiness; staleness also changes it with time
    /// alone, so readers poll [`KeyStore::is_ready`] as well.
    ready: watch::Sender<bool>,
}

impl KeyLookup for KeyStore {
    fn key_set(&self, index: usize) -> Option<Arc<KeySet>> {
        self.snapshots.key_set(index)
    }
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
        let (names, sources): (Vec<_>, Vec<_>) = issuers
            .into_iter()
            .map(|(name, source)| {
                let source = IssuerSource {
                    source,
                    discovered_jwks_uri: ArcSwapOption::empty(),
                    last_refetch: Mutex::new(None),
                    last_document: AtomicU64::new(0),
                };
                (name, source)
            })
            .unzip();
        for name in &names {
            metrics.issuer(name);
        }
        Self {
            snapshots: KeySnapshots::new(names, timing, clock),
            sources,
            http,
            metrics,
            ready: watch::Sender::new(false),
        }
    }

    /// The snapshots the core reads.
    pub fn snapshots(&self) -> &KeySnapshots {
        &self.snapshots
    }

    /// Sends when a fetch may have changed [`KeyStore::is_ready`].
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Whether every issuer ever had keys (usable or not).
    pub fn all_loaded(&self) -> bool {
        (0..self.snapshots.len()).all(|i| self.snapshots.loaded(i))
    }

    /// Issuers have usable keys as `keys.ready_when` asks (every one, or any).
    pub fn is_ready(&self) -> bool {
        self.snapshots.is_ready()
    }

    fn update_ready(&self) {
        self.ready.send_if_modified(|ready| {
            let now = self.is_ready();
            std::mem::replace(ready, now) != now
        });
    }

    /// Sets the key-age gauges (called when metrics are scraped).
    pub fn observe(&self) {
        for (index, issuer) in self.snapshots.issuer_names().enumerate() {
            if let Some(age) = self.snapshots.key_age(index) {
                self.metrics
                    .key_age_seconds
                    .get_or_create(&IssuerLabel {
                        issuer: issuer.to_owned(),
                    })
                    .set(age as f64);
            }
        }
    }

    /// Seconds since issuer `index`'s keys were last fetched successfully.
    pub fn key_age(&self, index: usize) -> Option<i64> {
        self.snapshots.key_age(index)
    }

    pub fn issuer_names(&self) -> impl Iterator<Item = &str> {
        self.snapshots.issuer_names()
    }

    /// Fetches every issuer's keys once, concurrently; failures are logged and retried later.
    pub async fn load_all(&self) {
        futures_util::future::join_all((0..self.sources.len()).map(|i| self.refresh(i))).await;
        self.update_ready();
    }

    /// Refreshes every issuer in the background. The per-issuer tasks live in a `JoinSet`
    /// owned by this future: abort the task running it and they stop too.
    pub async fn run_refresh(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..self.sources.len() {
            let store = Arc::clone(&self);
            tasks.spawn(async move { store.refresh_loop(index).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// The schedule is the core's: after a success, the response's `max-age` within bounds
    /// (never past the moment the keys would go stale); after failures, a back-off that never
    /// waits past staleness, and at most `min_refresh` while the keys are unusable.
    async fn refresh_loop(&self, index: usize) {
        // The initial load has just happened; its max-age is not known here.
        let mut failures = u32::from(!self.snapshots.loaded(index));
        let mut wait = if failures == 0 {
            self.snapshots.after_success(None)
        } else {
            self.snapshots.after_failure(index, failures)
        };
        loop {
            tokio::time::sleep(wait).await;
            wait = match self.refresh(index).await {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    self.snapshots.after_failure(index, failures)
                }
            };
            // Staleness may have made the issuer unusable while waiting.
            self.update_ready();
        }
    }

    /// Fetches issuer `index`'s keys now and publishes them; on failure the last good set stays.
    /// Returns when the next refresh is due.
    pub async fn refresh(&self, index: usize) -> Result<Duration, FetchError> {
        let name = self.snapshots.name(index).to_owned();
        match self.fetch(index).await {
            Ok((set, max_age, document)) => {
                let previous = self.sources[index]
                    .last_document
                    .swap(document, Ordering::Relaxed);
                let kids = || {
                    let kids: Vec<&str> = set.kids().map(|k| k.unwrap_or("-")).collect();
                    kids.join(",")
                };
                if previous == 0 {
                    tracing::info!(issuer = %name, keys = set.len(), kids = %kids(), "keys loaded");
                } else if previous != document {
                    tracing::info!(issuer = %name, keys = set.len(), kids = %kids(), "keys changed");
                } else {
                    tracing::debug!(issuer = %name, keys = set.len(), "keys unchanged");
                }
                self.metrics.key_refresh(&name, true);
                self.metrics
                    .keys_loaded
                    .get_or_create(&IssuerLabel {
                        issuer: name.clone(),
                    })
                    .set(set.len() as i64);
                self.snapshots.publish(index, set);
                self.update_ready();
                Ok(self.snapshots.after_success(max_age))
            }
            Err(error) => {
                let kept = self.snapshots.loaded(index);
                self.metrics.key_refresh(&name, false);
                tracing::warn!(issuer = %name, %error, kept_previous_keys = kept, "key refresh failed");
                self.update_ready();
                Err(error)
            }
        }
    }

    /// Which key sets are current: read it before deciding, and pass it to
    /// [`KeyStore::refetch_unknown_kid`] when the decision found the `kid` unknown.
    pub fn generation(&self) -> u64 {
        self.snapshots.generation()
    }

    /// Refetches after an unknown `kid`: at most once per `refetch_min_interval` per issuer, and
    /// single-flight (concurrent callers wait for the fetch under way instead of starting another).
    /// `seen` is the [`KeyStore::generation`] the caller decided with. Returns whether the keys
    /// may have changed since then, i.e. whether deciding again can help.
    pub async fn refetch_unknown_kid(&self, index: usize, seen: u64) -> bool {
        let Some(source) = self.sources.get(index) else {
            return false;
        };
        let mut last = source.last_refetch.lock().await;
        // Keys replaced since the caller decided (by a refetch it waited for, or one that ended
        // between its decision and this call, or a scheduled refresh): decide again with them.
        if self.generation() != seen {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < self.snapshots.timing().refetch_min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        tracing::info!(issuer = %self.snapshots.name(index), "unknown kid: refetching keys");
        self.refresh(index).await.is_ok()
    }

    /// The issuer's keys, their `max-age`, and a hash of the document they came from.
    async fn fetch(&self, index: usize) -> Result<(KeySet, Option<Duration>, u64), FetchError> {
        let issuer = &self.sources[index];
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
        for key in self.snapshots.first_reports(index, ignored) {
            tracing::warn!(issuer = %self.snapshots.name(index), kid = key.kid.as_deref().unwrap_or(""), why = key.why, "JWKS key ignored");
        }
        // Never 0, which means "none yet".
        let hash = std::hash::BuildHasher::hash_one(&DOCUMENT_HASH, &document.body).max(1);
        Ok((set, document.max_age, hash))
    }

    async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let url = discovery::discovery_url(issuer);
        let body = self.get(&url).await?.body;
        discovery::jwks_uri(&body, issuer).map_err(|source| FetchError::Discovery { url, source })
    }

    async fn get(&self, url: &str) -> Result<Document, FetchError> {
        let http_error = |source| FetchError::Http {
            url: url.to_owned(),
            source,
        };
        let mut response = self
            .http
            .get(url)
            .timeout(self.snapshots.timing().fetch_timeout)
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
