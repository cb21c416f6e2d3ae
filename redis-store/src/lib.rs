//! The DPoP replay store every replica shares (RFC 9449 §11.1): proofs recorded in Redis or
//! Valkey, so a proof used at one replica is refused at every other, whichever shape it runs
//! in (the ext_authz service on its tokio runtime, the Envoy module on a thread of its own).
//!
//! Redis is asked with one atomic `SET key 1 NX PX ttl` per proof: the first replica to record a
//! proof's key wins, every later attempt (on any replica) sees a replay. When Redis does not
//! answer within the timeout, the check fails closed (an error the caller answers with 503
//! `replay_store_unavailable`); nothing is accepted unchecked.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use certbound_core::dpop::ReplayKey;
use certbound_core::replay::ReplayError;

/// After a failed connection attempt, checks fail at once for this long instead of each one
/// waiting for its own attempt (a down Redis must not add its timeout to every check).
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// Proof keys in Redis, under `key_prefix` + hex(digest), each expiring with its proof's window.
pub struct RedisReplayStore {
    client: redis::Client,
    /// The shared connection (multiplexed: every check pipelines on it); dropped on an error and
    /// made again by the next check.
    connection: ArcSwapOption<MultiplexedConnection>,
    /// One connection attempt at a time; holds when the last one failed.
    connecting: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<Instant>>,
    timeout: Duration,
    prefix: String,
}

impl RedisReplayStore {
    /// A store at `url` (`redis://` or `rediss://`; with `ca_file`, TLS trusts only that CA).
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Self, String> {
        // The URL may carry a password: errors never repeat it.
        let unusable = |e: redis::RedisError| {
            format!(
                "dpop.replay.url is not a usable Redis URL ({:?}: {})",
                e.kind(),
                e.detail().unwrap_or("no detail")
            )
        };
        let client = match ca_file {
            None => redis::Client::open(url).map_err(unusable)?,
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    format!("dpop.replay.ca_file: cannot read {}: {e}", path.display())
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(url, certificates).map_err(unusable)?
            }
        };
        Ok(Self {
            client,
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            timeout,
            prefix: prefix.to_owned(),
        })
    }

    pub async fn record(&self, key: &ReplayKey, now: i64) -> Result<bool, ReplayError> {
        match tokio::time::timeout(self.timeout, self.set_if_absent(key, now)).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that does not answer in time is not trusted again.
                self.connection.store(None);
                Err(ReplayError(format!(
                    "Redis did not answer within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }

    async fn set_if_absent(&self, key: &ReplayKey, now: i64) -> Result<bool, ReplayError> {
        let mut connection = self.connection().await?;
        let ttl_ms = key
            .expires_at
            .saturating_sub(now)
            .max(1)
            .saturating_mul(1000);
        let name = format!("{}{}", self.prefix, key.hex());
        let answer: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&name)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut connection)
            .await;
        match answer {
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            Err(error) => {
                self.connection.store(None);
                Err(ReplayError(format!(
                    "Redis SET failed ({:?})",
                    error.kind()
                )))
            }
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, ReplayError> {
        if let Some(connection) = self.connection.load_full() {
            return Ok((*connection).clone());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(connection) = self.connection.load_full() {
            return Ok((*connection).clone());
        }
        let pausing = self
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < RECONNECT_PAUSE);
        if pausing {
            return Err(ReplayError("Redis unreachable (retrying shortly)".into()));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(connection) => {
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.connection.store(Some(connection.clone().into()));
                Ok(connection)
            }
            Err(error) => {
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                Err(ReplayError(format!(
                    "cannot connect to Redis ({:?}: {})",
                    error.kind(),
                    error.detail().unwrap_or("no detail")
                )))
            }
        }
    }
}

/// What the server's `maxmemory-policy` means for proofs kept there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// `noeviction`: a full server refuses writes (certbound answers 503) rather than forgetting
    /// a proof.
    Never,
    /// Any other policy (`allkeys-*`, `volatile-*`: proof keys carry a TTL, so both kinds evict
    /// them): under memory pressure Redis forgets used proofs and replays pass again.
    Evicts(String),
    /// The policy could not be read (Redis down, or `CONFIG` disabled, as on some managed
    /// offerings): why.
    Unknown(String),
}

impl RedisReplayStore {
    /// Reads the server's `maxmemory-policy` (`CONFIG GET`), within the store's timeout.
    pub async fn eviction(&self) -> Eviction {
        let ask = async {
            let mut connection = self.connection().await.map_err(|e| e.0)?;
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async::<Vec<String>>(&mut connection)
                .await
                .map_err(|e| format!("CONFIG GET failed ({:?})", e.kind()))
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(Ok(reply)) => match reply.as_slice() {
                [_, policy] if policy == "noeviction" => Eviction::Never,
                [_, policy] => Eviction::Evicts(policy.clone()),
                _ => Eviction::Unknown("CONFIG GET maxmemory-policy gave no value".into()),
            },
            Ok(Err(why)) => Eviction::Unknown(why),
            Err(_) => {
                Eviction::Unknown(format!("no answer within {} ms", self.timeout.as_millis()))
            }
        }
    }
}

/// Reads the eviction policy now and then every `every`, handing each reading to `report`,
/// for as long as the store is in use (it holds only a weak reference).
pub async fn watch_eviction(
    store: std::sync::Weak<RedisReplayStore>,
    every: Duration,
    report: impl Fn(&Eviction),
) {
    loop {
        let Some(current) = store.upgrade() else {
            return;
        };
        let eviction = current.eviction().await;
        drop(current);
        report(&eviction);
        tokio::time::sleep(every).await;
    }
}

/// How often the eviction policy is read again.
pub const EVICTION_CHECK_EVERY: Duration = Duration::from_secs(300);
