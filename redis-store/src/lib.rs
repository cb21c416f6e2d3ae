//! The DPoP replay store every replica shares (RFC 9449 §11.1): proofs recorded in Redis or
//! Valkey, so a proof used at one replica is refused at every other, whichever shape it runs
//! in (the ext_authz service on its tokio runtime, the Envoy module on a thread of its own).
//!
//! Redis is asked with one atomic `SET key 1 NX PX ttl` per proof: the first replica to record a
//! proof's key wins, every later attempt (on any replica) sees a replay. When Redis does not
//! answer within the timeout, the check fails closed (an error the caller answers with 503
//! `replay_store_unavailable`); nothing is accepted unchecked.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use certbound_core::config::{ReplayMode, ReplaySettings};
use certbound_core::dpop::ReplayKey;
use certbound_core::replay::ReplayError;

/// After a failed connection attempt, checks fail at once for this long instead of each one
/// waiting for its own attempt (a down Redis must not add its timeout to every check).
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// Where the store is: one server, a cluster, or the master a set of sentinels names.
enum Topology {
    Standalone(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    /// Asked again for the master after every failure, so a failover is followed.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// A live connection: multiplexed (standalone, or the sentinels' current master), or the
/// cluster's (one per node, slots and MOVED/ASK redirections followed).
#[derive(Clone)]
enum Connection {
    Node(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Connection {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Self::Node(connection) => cmd.query_async(connection).await,
            Self::Cluster(connection) => cmd.query_async(connection).await,
        }
    }

    /// `WAIT replicas timeout` on the master that holds `key`: how many replicas acknowledged
    /// this connection's writes. In a cluster it goes to the key's master only (the client
    /// would otherwise ask every master and take the least).
    async fn wait(&mut self, key: &str, replicas: u32, timeout_ms: u64) -> redis::RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        match self {
            Self::Node(connection) => wait.query_async(connection).await,
            Self::Cluster(connection) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let answer = connection
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(answer)?)
            }
        }
    }
}

/// What `SET key 1 NX PX ttl` answered: `OK` means this proof was recorded now (its first use),
/// nil means the key was there (a replay). Anything else (a proxy or a store that answers `:0`,
/// an array, an error string) is neither: an error, never a first use.
fn set_nx_recorded(reply: &redis::Value) -> Result<bool, ReplayError> {
    match reply {
        redis::Value::Okay => Ok(true),
        redis::Value::SimpleString(text) if text == "OK" => Ok(true),
        redis::Value::Nil => Ok(false),
        other => Err(ReplayError(format!(
            "Redis answered SET NX with {}, neither OK nor nil",
            match other {
                redis::Value::Int(_) => "an integer",
                redis::Value::BulkString(_) => "a bulk string",
                redis::Value::Array(_) => "an array",
                redis::Value::SimpleString(_) => "another status",
                redis::Value::ServerError(_) => "an error",
                _ => "an unexpected reply",
            }
        ))),
    }
}

/// Proof keys in Redis, under `key_prefix` + hex(digest), each expiring with its proof's window.
/// In a cluster each key lands on the slot its own hash picks: a proof's whole check is one
/// key, so no hash tag is needed (and none would help spread the load).
pub struct RedisReplayStore {
    topology: Topology,
    /// The shared connection (every check pipelines on it); dropped on an error and made again
    /// by the next check.
    connection: ArcSwapOption<Connection>,
    /// One connection attempt at a time; holds when the last one failed.
    connecting: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<Instant>>,
    timeout: Duration,
    prefix: String,
    /// Replicas that must acknowledge a proof before it counts as recorded (`WAIT`).
    wait_replicas: u32,
    /// When the server restarted while this store used it (unix seconds, rounded up; `i64::MIN`
    /// until seen): a server that restarted lost the proofs it held (no persistence, an older
    /// snapshot, AOF's last second), so a proof that could have been used before then is not
    /// vouched for as a first use.
    server_restarted: AtomicI64,
    /// The `run_id` of the server last connected to (it changes on every restart).
    server_run: Mutex<Option<String>>,
}

/// Errors never repeat a URL: it may carry a password.
fn unusable(key: &str) -> impl Fn(redis::RedisError) -> String + '_ {
    move |e| {
        format!(
            "{key} is not a usable Redis URL ({:?}: {})",
            e.kind(),
            e.detail().unwrap_or("no detail")
        )
    }
}

impl RedisReplayStore {
    /// The store the settings describe (`store: redis`); no network I/O (it connects on first
    /// use).
    pub fn from_settings(settings: &ReplaySettings) -> Result<Self, String> {
        // rediss:// builds its rustls configuration from the process default provider; in the
        // Envoy module nothing else installs one (this is the module's own copy of rustls).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certificates = match &settings.ca_file {
            None => None,
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| {
                    format!("dpop.replay.ca_file: cannot read {}: {e}", path.display())
                })?),
            }),
        };
        let topology = match settings.mode {
            ReplayMode::Standalone => {
                let url = settings
                    .url
                    .as_deref()
                    .ok_or("dpop.replay.url is required with store: redis")?;
                let client = match certificates {
                    None => redis::Client::open(url),
                    Some(certificates) => redis::Client::build_with_tls(url, certificates),
                }
                .map_err(unusable("dpop.replay.url"))?;
                Topology::Standalone(client)
            }
            ReplayMode::Cluster => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(settings.urls.clone())
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                Topology::Cluster(builder.build().map_err(unusable("dpop.replay.urls"))?)
            }
            ReplayMode::Sentinel => {
                let master = settings
                    .master_name
                    .as_deref()
                    .ok_or("dpop.replay.sentinel.master_name is required with mode: sentinel")?;
                let mut sentinels = Vec::new();
                for url in &settings.urls {
                    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                        .map_err(unusable("dpop.replay.urls"))?;
                    sentinels.push(info.addr().clone());
                }
                let tls = settings.urls.iter().all(|u| u.starts_with("rediss://"));
                let mut builder = redis::sentinel::SentinelClientBuilder::new(
                    sentinels,
                    master,
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(unusable("dpop.replay.urls"))?;
                if tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                    if let Some(certificates) = certificates {
                        builder = builder
                            .set_client_to_redis_certificates(certificates.clone())
                            .set_client_to_sentinel_certificates(certificates);
                    }
                }
                let client = builder.build().map_err(unusable("dpop.replay.urls"))?;
                Topology::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        Ok(Self {
            topology,
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            timeout: settings.timeout,
            prefix: settings.key_prefix.clone(),
            wait_replicas: settings.wait_replicas,
            server_restarted: AtomicI64::new(i64::MIN),
            server_run: Mutex::new(None),
        })
    }

    pub async fn record(&self, key: &ReplayKey, now: i64) -> Result<bool, ReplayError> {
        match tokio::time::timeout(self.timeout, self.set_if_absent(key, now)).await {
            Ok(result) => self.vouch(key, result),
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
        let (name, set) = self.set_nx(key, now);
        let answer: redis::RedisResult<redis::Value> = connection.query(&set).await;
        let answer = match answer {
            Ok(reply) => Ok(set_nx_recorded(&reply)?),
            Err(error) => Err(error),
        };
        match answer {
            Ok(true) if self.wait_replicas > 0 => {
                // Under the store's timeout: WAIT may block no longer than the check may wait.
                let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
                match connection.wait(&name, self.wait_replicas, timeout_ms).await {
                    Ok(acked) if acked >= self.wait_replicas => Ok(true),
                    Ok(acked) => Err(ReplayError(format!(
                        "the proof reached {acked} of the {} replicas required (wait_replicas)",
                        self.wait_replicas
                    ))),
                    Err(error) => {
                        self.connection.store(None);
                        Err(ReplayError(format!(
                            "Redis WAIT failed ({:?})",
                            error.kind()
                        )))
                    }
                }
            }
            Ok(recorded) => Ok(recorded),
            Err(error) => {
                self.connection.store(None);
                Err(ReplayError(format!(
                    "Redis SET failed ({:?})",
                    error.kind()
                )))
            }
        }
    }

    /// Records a batch of proofs in one round trip, answering each key in order: `Ok(true)`
    /// recorded now (its first use), `Ok(false)` a replay (the key was there, or an earlier key
    /// of the same batch made it), or an error (503). Standalone and Sentinel send one pipeline
    /// of `SET key 1 NX PX ttl` (with `wait_replicas`, then one `WAIT`); a cluster sends each
    /// key's `SET` to the master of its slot, all at once. Unfinished at `deadline`, every key
    /// is an error; a reply that is not OK or nil fails its own key, a failed round trip all.
    pub async fn record_many(
        &self,
        keys: &[ReplayKey],
        now: i64,
        deadline: Instant,
    ) -> Vec<Result<bool, ReplayError>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let asked = self.set_many_if_absent(keys, now, deadline);
        let failed = match tokio::time::timeout_at(deadline.into(), asked).await {
            Ok(Ok(answers)) if answers.len() == keys.len() => {
                return keys
                    .iter()
                    .zip(answers)
                    .map(|(key, answer)| self.vouch(key, answer))
                    .collect();
            }
            Ok(Ok(answers)) => {
                // Not one answer per key: none of them can be trusted.
                self.connection.store(None);
                ReplayError(format!(
                    "Redis gave {} answers for {} proofs",
                    answers.len(),
                    keys.len()
                ))
            }
            Ok(Err(error)) => error,
            Err(_) => {
                self.connection.store(None);
                ReplayError(format!(
                    "Redis did not answer within {} ms",
                    self.timeout.as_millis()
                ))
            }
        };
        keys.iter().map(|_| Err(failed.clone())).collect()
    }

    /// The batch's answers, or the error that fails every key of it.
    async fn set_many_if_absent(
        &self,
        keys: &[ReplayKey],
        now: i64,
        deadline: Instant,
    ) -> Result<Vec<Result<bool, ReplayError>>, ReplayError> {
        let mut connection = self.connection().await?;
        // WAIT blocks for at most half of what is left of the batch's time, so its answer
        // (short of replicas) comes back in time for the SETs' answers to count (replays are
        // still answered as replays): Redis times a blocked command out only as often as its
        // `hz` (every 100 ms by default). Never 0, which would block for ever.
        let wait_ms = || {
            let left = deadline.saturating_duration_since(Instant::now());
            u64::try_from((left / 2).as_millis())
                .unwrap_or(u64::MAX)
                .max(1)
        };
        let sets: Vec<(String, redis::Cmd)> = keys.iter().map(|k| self.set_nx(k, now)).collect();
        let failed = |what: &str, error: redis::RedisError| {
            self.connection.store(None);
            ReplayError(format!("Redis {what} failed ({:?})", error.kind()))
        };
        match &mut connection {
            Connection::Node(node) => {
                // One pipeline: every SET, then WAIT, which counts the replicas that have every
                // write this connection made before it, so every proof the batch recorded.
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for (_, set) in sets {
                    pipe.add_command(set);
                }
                let waits = self.wait_replicas > 0;
                if waits {
                    pipe.cmd("WAIT").arg(self.wait_replicas).arg(wait_ms());
                }
                let mut replies: Vec<redis::Value> = pipe
                    .query_async(node)
                    .await
                    .map_err(|e| failed("pipeline", e))?;
                let expected = keys.len() + usize::from(waits);
                if replies.len() != expected {
                    self.connection.store(None);
                    return Err(ReplayError(format!(
                        "Redis gave {} answers for {expected} commands",
                        replies.len()
                    )));
                }
                if replies
                    .iter()
                    .any(|reply| matches!(reply, redis::Value::ServerError(_)))
                {
                    // Each failed SET fails its own proof; the connection is made again (a
                    // READONLY from a demoted master after a failover, say, would persist).
                    self.connection.store(None);
                }
                let acked = match replies.pop() {
                    Some(wait) if waits => self.wait_reply(&wait),
                    Some(last) => {
                        replies.push(last);
                        Ok(())
                    }
                    None => Ok(()),
                };
                Ok(replies
                    .iter()
                    .map(|reply| match set_nx_recorded(reply)? {
                        true => acked.clone().map(|()| true),
                        false => Ok(false),
                    })
                    .collect())
            }
            Connection::Cluster(cluster) => {
                // A pipeline goes to one node: each SET on its own, all at once, each following
                // its slot's owner (MOVED / ASK) as a single command does.
                let replies = futures_util::future::join_all(sets.iter().map(|(_, set)| {
                    let mut cluster = cluster.clone();
                    async move { set.query_async::<redis::Value>(&mut cluster).await }
                }))
                .await;
                let mut answers: Vec<Result<bool, ReplayError>> = replies
                    .into_iter()
                    .map(|reply| match reply {
                        Ok(reply) => set_nx_recorded(&reply),
                        Err(error) => Err(failed("SET", error)),
                    })
                    .collect();
                if self.wait_replicas > 0 {
                    // WAIT on the master of each key recorded now (the node connection its SET
                    // went through), all at once.
                    let timeout_ms = wait_ms();
                    let recorded: Vec<usize> = (0..answers.len())
                        .filter(|&i| answers[i] == Ok(true))
                        .collect();
                    let acks = futures_util::future::join_all(recorded.iter().map(|&i| {
                        let mut cluster = Connection::Cluster(cluster.clone());
                        let name = &sets[i].0;
                        async move { cluster.wait(name, self.wait_replicas, timeout_ms).await }
                    }))
                    .await;
                    for (i, ack) in recorded.into_iter().zip(acks) {
                        answers[i] = match ack {
                            Ok(n) => self
                                .wait_reply(&redis::Value::Int(i64::from(n)))
                                .map(|()| true),
                            Err(error) => Err(failed("WAIT", error)),
                        };
                    }
                }
                Ok(answers)
            }
        }
    }

    /// A proof's key name and its `SET name 1 NX PX ttl`, the key kept until the proof expires.
    fn set_nx(&self, key: &ReplayKey, now: i64) -> (String, redis::Cmd) {
        let ttl_ms = key
            .expires_at
            .saturating_sub(now)
            .max(1)
            .saturating_mul(1000);
        let name = format!("{}{}", self.prefix, key.hex());
        let mut set = redis::cmd("SET");
        set.arg(&name).arg(1).arg("NX").arg("PX").arg(ttl_ms);
        (name, set)
    }

    /// What `WAIT` answered: enough replicas, or the error that fails the proofs it covers.
    fn wait_reply(&self, reply: &redis::Value) -> Result<(), ReplayError> {
        match reply {
            redis::Value::Int(acked) if *acked >= i64::from(self.wait_replicas) => Ok(()),
            redis::Value::Int(acked) => Err(ReplayError(format!(
                "the proof reached {acked} of the {} replicas required (wait_replicas)",
                self.wait_replicas
            ))),
            _ => {
                self.connection.store(None);
                Err(ReplayError(
                    "Redis answered WAIT with something other than a count".into(),
                ))
            }
        }
    }

    /// A first use stands only for a proof no one could have used before the server started:
    /// one that could is an error (503; the client's next proof, made now, passes). A replay
    /// stays a replay.
    fn vouch(
        &self,
        key: &ReplayKey,
        answer: Result<bool, ReplayError>,
    ) -> Result<bool, ReplayError> {
        match answer {
            Ok(true) if key.live_from < self.server_restarted.load(Ordering::Acquire) => {
                Err(ReplayError(
                    "the proof may have been used before Redis last started (what it held \
                     then is lost): refused"
                        .into(),
                ))
            }
            answer => answer,
        }
    }

    /// On a new connection to one server (standalone, or the master the sentinels name), reads
    /// its `run_id` and `uptime_in_seconds` (`INFO server`): a `run_id` other than the last
    /// one's is a restart (or another server), and proofs live before it started are no longer
    /// vouched for. The first server this store sees is taken as it is (a new deployment's
    /// empty Redis holds nothing to lose); a reply without them (a proxy, a renamed command)
    /// leaves what was known.
    async fn note_server_start(&self, connection: &mut MultiplexedConnection) {
        let info: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("server")
            .query_async(connection)
            .await;
        let Ok(info) = info else {
            return;
        };
        let (Some(run), Some(uptime)) = (
            info_field(&info, "run_id"),
            info_field(&info, "uptime_in_seconds").and_then(|u| u.parse::<i64>().ok()),
        ) else {
            return;
        };
        let before = self
            .server_run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(run.to_owned());
        if before.is_none_or(|before| before == run) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        // Both are whole seconds: the server started before now - uptime + 1.
        let started = now.saturating_sub(uptime).saturating_add(1);
        self.server_restarted.fetch_max(started, Ordering::AcqRel);
    }

    async fn connection(&self) -> Result<Connection, ReplayError> {
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
        let connected = match &self.topology {
            Topology::Standalone(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(Connection::Node),
            Topology::Cluster(client) => {
                client.get_async_connection().await.map(Connection::Cluster)
            }
            Topology::Sentinel(client) => client
                .lock()
                .await
                .get_async_connection_with_config(&config)
                .await
                .map(Connection::Node),
        };
        match connected {
            Ok(mut connection) => {
                if let Connection::Node(node) = &mut connection {
                    self.note_server_start(node).await;
                }
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

/// A `name:value` line's value in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
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
            let mut get = redis::cmd("CONFIG");
            get.arg("GET").arg("maxmemory-policy");
            connection
                .query::<redis::Value>(&get)
                .await
                .map_err(|e| format!("CONFIG GET failed ({:?})", e.kind()))
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(Ok(reply)) => {
                // One node's [name, policy], or in a cluster every node's: the worst counts.
                let mut policies = Vec::new();
                collect_policies(&reply, &mut policies);
                match policies.iter().find(|p| *p != "noeviction") {
                    Some(evicting) => Eviction::Evicts(evicting.clone()),
                    None if policies.is_empty() => {
                        Eviction::Unknown("CONFIG GET maxmemory-policy gave no value".into())
                    }
                    None => Eviction::Never,
                }
            }
            Ok(Err(why)) => Eviction::Unknown(why),
            Err(_) => {
                Eviction::Unknown(format!("no answer within {} ms", self.timeout.as_millis()))
            }
        }
    }
}

/// The values that follow `maxmemory-policy` anywhere in a `CONFIG GET` reply.
fn collect_policies(reply: &redis::Value, out: &mut Vec<String>) {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply {
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for pair in items.windows(2) {
                if text(&pair[0]).as_deref() == Some("maxmemory-policy")
                    && let Some(policy) = text(&pair[1])
                {
                    out.push(policy);
                }
            }
            for item in items {
                collect_policies(item, out);
            }
        }
        redis::Value::Map(entries) => {
            for (key, value) in entries {
                if text(key).as_deref() == Some("maxmemory-policy")
                    && let Some(policy) = text(value)
                {
                    out.push(policy);
                }
                collect_policies(value, out);
            }
        }
        _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f1c\r\nuptime_in_seconds_x:9\r\n\
                    uptime_in_seconds:42\r\n";
        assert_eq!(info_field(info, "run_id"), Some("4f1c"));
        assert_eq!(info_field(info, "uptime_in_seconds"), Some("42"));
        assert_eq!(info_field(info, "run"), None);
        assert_eq!(info_field("OK", "run_id"), None);
    }

    #[test]
    fn only_ok_records_a_proof_and_only_nil_is_a_replay() {
        assert!(set_nx_recorded(&Value::Okay).unwrap());
        assert!(set_nx_recorded(&Value::SimpleString("OK".into())).unwrap());
        assert!(!set_nx_recorded(&Value::Nil).unwrap());
        for reply in [
            Value::Int(0),
            Value::Int(1),
            Value::BulkString(b"OK".to_vec()),
            Value::SimpleString("QUEUED".into()),
            Value::Array(vec![]),
        ] {
            assert!(set_nx_recorded(&reply).is_err(), "{reply:?}");
        }
    }
}
