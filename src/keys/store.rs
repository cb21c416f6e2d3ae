//! Fetches each issuer's keys (JWKS file, JWKS URL or OIDC discovery), refreshes them in the
//! background and publishes immutable snapshots that the Check path reads without locking.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::set::{JwksError, KeySet};
use crate::authz::KeyLookup;

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

/// Timing of fetches.
#[derive(Clone, Debug)]
pub struct KeyTiming {
    /// Time between background refreshes of a loaded key set.
    pub refresh_interval: Duration,
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
    /// `jwks_uri` learnt from discovery.
    discovered_jwks_uri: ArcSwapOption<String>,
    /// When the last unknown-`kid` refetch started; the lock makes refetches single-flight.
    last_refetch: Mutex<Option<Instant>>,
}

/// Every issuer's current keys.
pub struct KeyStore {
    issuers: Vec<IssuerKeys>,
    http: reqwest::Client,
    timing: KeyTiming,
    ready: watch::Sender<bool>,
}

impl KeyLookup for KeyStore {
    fn key_set(&self, index: usize) -> Option<Arc<KeySet>> {
        self.issuers.get(index)?.current.load_full()
    }
}

impl KeyStore {
    /// A store for these issuers (`(iss, source)` in configuration order); nothing is fetched yet.
    pub fn new(
        issuers: Vec<(String, KeySource)>,
        http: reqwest::Client,
        timing: KeyTiming,
    ) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|(name, source)| IssuerKeys {
                name,
                source,
                current: ArcSwapOption::empty(),
                discovered_jwks_uri: ArcSwapOption::empty(),
                last_refetch: Mutex::new(None),
            })
            .collect();
        Self {
            issuers,
            http,
            timing,
            ready: watch::Sender::new(false),
        }
    }

    /// Becomes `true` once every issuer has keys.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn all_loaded(&self) -> bool {
        self.issuers.iter().all(|i| i.current.load().is_some())
    }

    /// Fetches every issuer's keys once, concurrently; failures are logged and retried later.
    pub async fn load_all(&self) {
        futures_util::future::join_all((0..self.issuers.len()).map(|i| self.refresh(i))).await;
    }

    /// Refreshes issuers in the background until the returned task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let tasks: Vec<_> = (0..store.issuers.len())
                .map(|index| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move { store.refresh_loop(index).await })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
        })
    }

    async fn refresh_loop(&self, index: usize) {
        let mut retry = Duration::from_secs(1);
        loop {
            let wait = if self.issuers[index].current.load().is_some() {
                retry = Duration::from_secs(1);
                self.timing.refresh_interval
            } else {
                let wait = retry;
                retry = (retry * 2).min(self.timing.max_retry_interval);
                wait
            };
            tokio::time::sleep(wait).await;
            let _ = self.refresh(index).await;
        }
    }

    /// Fetches issuer `index`'s keys now and publishes them; on failure the last good set stays.
    pub async fn refresh(&self, index: usize) -> Result<(), FetchError> {
        let issuer = &self.issuers[index];
        match self.fetch(issuer).await {
            Ok(set) => {
                tracing::info!(issuer = %issuer.name, keys = set.len(), "keys loaded");
                issuer.current.store(Some(Arc::new(set)));
                self.ready.send_if_modified(|ready| {
                    let now = self.all_loaded();
                    std::mem::replace(ready, now) != now
                });
                Ok(())
            }
            Err(error) => {
                let kept = issuer.current.load().is_some();
                tracing::warn!(issuer = %issuer.name, %error, kept_previous_keys = kept, "key refresh failed");
                Err(error)
            }
        }
    }

    /// Refetches after an unknown `kid`: at most once per `refetch_min_interval` per issuer, and
    /// single-flight (concurrent callers wait for the fetch under way instead of starting another).
    /// Returns whether the key set may have changed since the caller looked.
    pub async fn refetch_unknown_kid(&self, index: usize) -> bool {
        let Some(issuer) = self.issuers.get(index) else {
            return false;
        };
        let before = issuer.current.load_full();
        let mut last = issuer.last_refetch.lock().await;
        let changed_meanwhile = !ptr_eq(&before, &issuer.current.load_full());
        if changed_meanwhile {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < self.timing.refetch_min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        tracing::info!(issuer = %issuer.name, "unknown kid: refetching keys");
        self.refresh(index).await.is_ok()
    }

    async fn fetch(&self, issuer: &IssuerKeys) -> Result<KeySet, FetchError> {
        let (bytes, from) = match &issuer.source {
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|source| FetchError::File {
                        path: path.display().to_string(),
                        source,
                    })?;
                (bytes, path.display().to_string())
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
                    Ok(bytes) => (bytes, url.to_string()),
                    Err(error) => {
                        // The IdP may have moved its JWKS: discover again next time.
                        issuer.discovered_jwks_uri.store(None);
                        return Err(error);
                    }
                }
            }
        };
        let (set, ignored) = KeySet::from_jwks(&bytes).map_err(|source| FetchError::Jwks {
            from: from.clone(),
            source,
        })?;
        for key in ignored {
            tracing::warn!(issuer = %issuer.name, kid = key.kid.as_deref().unwrap_or(""), why = key.why, "JWKS key ignored");
        }
        Ok(set)
    }

    async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?;
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

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
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
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge {
                    url: url.to_owned(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn ptr_eq(a: &Option<Arc<KeySet>>, b: &Option<Arc<KeySet>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
