//! Composition root: builds the service from validated settings, serves Check, health and
//! reflection until shutdown, and swaps in reloaded configurations without dropping checks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::transport::ServerTlsConfig;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::answer_gate::AnswerGate;
use crate::authorize::Authorizer;
use crate::check::{Checker, CheckerParts};
use crate::config::Settings;
use crate::grpc::pb::FILE_DESCRIPTOR_SET;
use crate::grpc::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use crate::grpc::{AuthorizationService, CheckConnection};
use crate::introspection::Introspector;
use crate::keys::KeyStore;
use crate::listener::Gate;
use crate::metrics::Metrics;
use crate::replay::Replay;
use certbound_core::clock::{Clock, SystemClock};

type AuthorizationGrpc = AuthorizationServer<AuthorizationService>;

/// The gRPC service name clients ask health about, besides "" for the whole server.
pub const AUTHORIZATION_SERVICE: &str = <AuthorizationGrpc as NamedService>::NAME;

/// A health "service" that is SERVING while the process runs (for liveness probes: an IdP
/// outage makes certbound not ready, never not alive).
pub const LIVENESS_SERVICE: &str = "liveness";

/// The running service: the current checker (swapped on reload), metrics and limits.
pub struct App {
    checker: Arc<ArcSwap<Checker>>,
    /// The Check use case over `checker`, handed to the adapters.
    authorizer: Authorizer,
    /// The settings the current checker was built from, for reload comparisons.
    applied: Mutex<Settings>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// The current key store's load-and-refresh task.
    refresh: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Bumped on every swap, so that health follows the new key store.
    generation: watch::Sender<u64>,
}

impl App {
    /// Builds everything from settings; no network I/O until [`App::start_keys`].
    pub fn build(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        Self::build_with_clock(settings, Arc::new(SystemClock))
    }

    /// [`App::build`] with an injected clock (tests control expiry and staleness with it).
    pub fn build_with_clock(
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::default());
        let http = http_client(settings)?;
        let keys = new_key_store(settings, &http, &clock, &metrics);
        let introspector = new_introspector(settings, &http, &metrics);
        let replay = new_replay(settings, &metrics)?;
        let checker = Checker::new(CheckerParts {
            policy: settings.decision.policy.clone(),
            keys,
            introspector,
            token_cache: settings.decision.token_cache(),
            clock: Arc::clone(&clock),
            unknown_kid_wait: settings.decision.unknown_kid_wait,
            replay,
            metrics: Arc::clone(&metrics),
        });
        let checker = Arc::new(ArcSwap::from_pointee(checker));
        let authorizer = Authorizer::new(
            Arc::clone(&checker),
            settings.max_concurrent_checks,
            Arc::clone(&metrics),
        );
        Ok(Arc::new(Self {
            checker,
            authorizer,
            applied: Mutex::new(settings.clone()),
            clock,
            http,
            metrics,
            draining: AtomicBool::new(false),
            refresh: std::sync::Mutex::new(None),
            generation: watch::Sender::new(0),
        }))
    }

    /// The checker to use for one request; a reload never affects a check holding one.
    pub fn checker(&self) -> Arc<Checker> {
        self.checker.load_full()
    }

    /// The Check use case, for an adapter.
    pub fn authorizer(&self) -> Authorizer {
        self.authorizer.clone()
    }

    /// `limits.connections` as the listeners were started with (restart to change).
    pub async fn connection_limits(&self) -> crate::listener::ConnectionLimits {
        self.applied.lock().await.connections
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Ready to answer: issuers have usable keys (loaded, and not older than
    /// `keys.max_stale_seconds`) as `keys.ready_when` says, and not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.checker().keys().is_ready()
    }

    /// Loads the current key store's keys, then refreshes them in the background.
    pub fn start_keys(&self) {
        let keys = Arc::clone(self.checker().keys());
        self.replace_refresh(tokio::spawn(async move {
            keys.load_all().await;
            keys.run_refresh().await;
        }));
    }

    fn replace_refresh(&self, task: JoinHandle<()>) {
        let mut slot = self.refresh.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(task) {
            old.abort();
        }
    }

    /// Prometheus text, with the key-age gauges brought up to date.
    pub fn metrics_text(&self) -> String {
        self.checker().keys().observe();
        self.metrics.encode()
    }

    /// Applies a new, already validated configuration. Checks in flight finish with the
    /// checker they started with. New key sources must load before they replace the old ones;
    /// otherwise the reload is refused and the old configuration stays.
    pub async fn reload(&self, settings: Settings) -> Result<(), String> {
        let mut applied = self.applied.lock().await;
        for (changed, what) in [
            (applied.listen != settings.listen, "listen"),
            (
                applied.admin_listen != settings.admin_listen,
                "admin_listen",
            ),
            (applied.tls != settings.tls, "tls"),
            (
                applied.forward_auth != settings.forward_auth,
                "forward_auth",
            ),
            (
                applied.max_concurrent_checks != settings.max_concurrent_checks,
                "limits.max_concurrent_checks",
            ),
            (
                applied.connections != settings.connections,
                "limits.connections",
            ),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "changed in the configuration: takes effect after a restart"
                );
            }
        }
        let current = self.checker();
        let same_keys = applied.decision.key_sources == settings.decision.key_sources
            && applied.decision.key_timing == settings.decision.key_timing
            && applied.idp_ca_file == settings.idp_ca_file;
        let keys = if same_keys {
            Arc::clone(current.keys())
        } else {
            let http = http_client(&settings).map_err(|e| format!("{e:#}"))?;
            let keys = new_key_store(&settings, &http, &self.clock, &self.metrics);
            keys.load_all().await;
            if !keys.is_ready() {
                return Err("the new issuers' keys could not be loaded".into());
            }
            keys
        };
        let introspector = match (current.introspector(), &settings.introspection) {
            (Some(existing), Some(new)) if applied.introspection.as_ref() == Some(new) => {
                Some(Arc::clone(existing))
            }
            _ => new_introspector(&settings, &self.http, &self.metrics),
        };
        // The replay store outlives reloads that keep its settings: a fresh in-memory store
        // would forget the proofs already used.
        let replay = match current.replay() {
            Some(existing) if applied.decision.replay == settings.decision.replay => {
                Some(Arc::clone(existing))
            }
            _ => new_replay(&settings, &self.metrics).map_err(|e| format!("{e:#}"))?,
        };
        let checker = Checker::new(CheckerParts {
            policy: settings.decision.policy.clone(),
            keys: Arc::clone(&keys),
            introspector,
            token_cache: settings.decision.token_cache(),
            clock: Arc::clone(&self.clock),
            unknown_kid_wait: settings.decision.unknown_kid_wait,
            replay,
            metrics: Arc::clone(&self.metrics),
        });
        self.checker.store(Arc::new(checker));
        if !same_keys {
            self.replace_refresh(tokio::spawn(async move { keys.run_refresh().await }));
        }
        self.generation.send_modify(|g| *g += 1);
        *applied = settings;
        Ok(())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(task) = self
            .refresh
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

fn http_client(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    let mut http =
        reqwest::Client::builder().user_agent(concat!("certbound/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &settings.idp_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading idp_ca_file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parsing idp_ca_file {}", path.display()))?;
        http = http.tls_certs_merge(certs);
    }
    Ok(http.build()?)
}

fn new_replay(settings: &Settings, metrics: &Arc<Metrics>) -> anyhow::Result<Option<Arc<Replay>>> {
    settings
        .decision
        .replay
        .as_ref()
        .map(|replay| {
            Replay::new(replay, metrics)
                .map(Arc::new)
                .map_err(anyhow::Error::msg)
        })
        .transpose()
}

fn new_key_store(
    settings: &Settings,
    http: &reqwest::Client,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
) -> Arc<KeyStore> {
    Arc::new(KeyStore::new(
        settings.decision.key_sources.clone(),
        http.clone(),
        settings.decision.key_timing.clone(),
        Arc::clone(clock),
        Arc::clone(metrics),
    ))
}

fn new_introspector(
    settings: &Settings,
    http: &reqwest::Client,
    metrics: &Arc<Metrics>,
) -> Option<Arc<Introspector>> {
    settings
        .introspection
        .clone()
        .map(|s| Arc::new(Introspector::new(s, http.clone(), Arc::clone(metrics))))
}

/// TLS for the gRPC listener (Envoy to certbound), with client certificates required when a
/// client CA is configured.
pub fn tls_config(settings: &Settings) -> anyhow::Result<Option<ServerTlsConfig>> {
    let Some(tls) = &settings.tls else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let identity =
        tonic::transport::Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// Serves Check, health and reflection on `listener` until `shutdown` resolves, then drains.
///
/// Starts the key loading. Health is NOT_SERVING until keys are loaded, and again once shutdown
/// begins; in-flight checks then finish before this returns.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    app.start_keys();
    let readiness = tokio::spawn(track_readiness(Arc::clone(&app), reporter.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Checks are small requests answered fast: never let Nagle hold a response back (tonic's
    // own tcp_nodelay applies only to listeners it binds itself, so set it on each stream), and
    // write each answer with one system call (see CheckConnection). On the single-threaded
    // runtime, an expensive Check's answer goes out before the next expensive Check (AnswerGate).
    let single_threaded = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread;
    let gate = single_threaded.then(|| Arc::new(AnswerGate::new()));
    let authorization = AuthorizationService::new(app.authorizer()).with_gate(gate.clone());
    // Each connection under limits.connections: a cap, first-byte and idle deadlines.
    let limits = app.applied.lock().await.connections;
    let admission = Gate::new("grpc", limits.max_open, &limits, &app.metrics);
    let incoming = TcpListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            admission
                .admit(CheckConnection::new(stream, gate.clone()))
                .map(Ok)
        }
        Err(error) => Some(Err(error)),
    });
    let mut builder =
        tonic::transport::Server::builder().http2_max_header_list_size(limits.h2_header_list());
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let draining = reporter.clone();
    let draining_app = Arc::clone(&app);
    let result = builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AuthorizationServer::new(authorization))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight checks");
            draining_app.draining.store(true, Ordering::Release);
            set_health(&draining, ServingStatus::NotServing).await;
        })
        .await;
    readiness.abort();
    if let Some(task) = app.refresh.lock().unwrap_or_else(|e| e.into_inner()).take() {
        task.abort();
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(AUTHORIZATION_SERVICE, status)
        .await;
}

/// How often readiness is looked at again: keys go stale with time alone, without an event.
const READINESS_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps gRPC health equal to [`App::is_ready`], following key stores across reloads: at once
/// when a fetch changes it, within [`READINESS_POLL`] when keys pass `keys.max_stale_seconds`.
async fn track_readiness(app: Arc<App>, reporter: HealthReporter) {
    let mut generation = app.generation.subscribe();
    let mut shown = None;
    loop {
        let mut fetched = app.checker().keys().readiness();
        loop {
            fetched.borrow_and_update();
            let status = if app.is_ready() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if shown != Some(status) {
                set_health(&reporter, status).await;
                shown = Some(status);
            }
            tokio::select! {
                changed = fetched.changed() => if changed.is_err() { break },
                changed = generation.changed() => {
                    if changed.is_err() { return }
                    break;
                }
                () = tokio::time::sleep(READINESS_POLL) => {}
            }
        }
    }
}
