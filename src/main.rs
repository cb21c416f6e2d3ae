//! The `certbound` command: serve, check a configuration, or print a certificate's thumbprint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use certbound::config::{LogFormat, Settings};
use certbound::log_writer::{FlushGuard, LogWriter};
use certbound::server::App;

/// mimalloc: per-thread free lists without glibc's consolidation passes; a Check allocates and
/// frees dozens of small buffers (HTTP/2 frames, protobuf strings, the response).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration that does not validate (sysexits EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "Envoy ext_authz for RFC 8705 certificate-bound access tokens"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `serve` is the default subcommand.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Envoy's Authorization/Check, health and reflection (the default).
    Serve(ServeArgs),
    /// Validate a configuration: exit 0, or 64 naming the offending key (and its line).
    CheckConfig(CheckConfigArgs),
    /// Print the x5t#S256 thumbprint of a PEM or DER certificate (first of a PEM chain).
    Thumbprint {
        /// Certificate file.
        file: PathBuf,
    },
    /// Run the real decision for one token and certificate and print each step.
    /// Exit 0 when allowed, 1 when denied (or unavailable), 64 for a usage error or input that
    /// cannot be read (configuration, token file, certificate file).
    Explain(ExplainArgs),
}

#[derive(Args)]
struct ExplainArgs {
    /// Configuration file (YAML); keys are fetched as it says.
    #[arg(long, env = "CERTBOUND_CONFIG")]
    config: PathBuf,
    /// The access token, or @FILE to read it from a file.
    #[arg(long)]
    token: String,
    /// The client certificate (PEM or DER); without it, no certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The request path (with or without a query), to select the route rule.
    #[arg(long, default_value = "/")]
    path: String,
    /// The request method, to select the route rule.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request's host (`:authority`), to select the route rule.
    #[arg(long, default_value = "")]
    host: String,
    /// The whole request URL (`https://api.example.com/items?page=2`): sets the scheme, host and
    /// path at once (what a DPoP proof's `htu` is compared with).
    #[arg(long, conflicts_with_all = ["path", "host"])]
    url: Option<String>,
    /// A DPoP proof (RFC 9449), or @FILE: the token is then presented with the `DPoP` scheme
    /// and the proof is checked step by step (its `jti` is not recorded against replay).
    #[arg(long)]
    dpop: Option<String>,
}

#[derive(Args)]
struct CheckConfigArgs {
    /// Configuration file (YAML).
    #[arg(long, env = "CERTBOUND_CONFIG")]
    config: PathBuf,
    /// Check it as the Envoy module's `filter_config` instead (keys only the service reads are
    /// refused; issuers with jwks_uri or discovery need a cluster). A whole Envoy configuration
    /// (a bootstrap such as deploy/envoy/module.yaml, an Istio EnvoyFilter) is checked filter by
    /// filter: every certbound module filter's filter_config and every per-route one.
    #[arg(long)]
    module: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (YAML).
    #[arg(long, env = "CERTBOUND_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `listen` from the configuration.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => serve(args),
        Command::CheckConfig(args) => {
            let warnings = if args.module {
                load_module(&args.config)
            } else {
                load(&args.config).map(|settings| settings.decision.warnings)
            };
            match warnings {
                Ok(warnings) => {
                    for warning in &warnings {
                        eprintln!("certbound: warning: {warning}");
                    }
                    println!("{}: ok", args.config.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Thumbprint { file } => thumbprint(&file),
        Command::Explain(args) => explain(args),
    }
}

fn explain(args: ExplainArgs) -> ExitCode {
    let settings = match load(&args.config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let text = |value: &str| match value.strip_prefix('@') {
        Some(path) => read(Path::new(path)).map(|b| String::from_utf8_lossy(&b).trim().to_string()),
        None => Ok(value.trim().to_string()),
    };
    let input = (|| {
        let token = text(&args.token)?;
        let certificate = args.cert.as_deref().map(read).transpose()?;
        let dpop = args.dpop.as_deref().map(text).transpose()?;
        let (scheme, host, path) = match &args.url {
            None => ("https".to_owned(), args.host, args.path),
            Some(url) => certbound::explain::split_url(url)?,
        };
        Ok::<_, String>(certbound::explain::ExplainRequest {
            token,
            certificate,
            method: args.method,
            scheme,
            path,
            host,
            dpop,
        })
    })();
    let request = match input {
        Ok(request) => request,
        Err(error) => {
            eprintln!("certbound: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("certbound: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = certbound::server::App::build(&settings)?;
        let checker = app.checker();
        checker.keys().load_all().await;
        anyhow::Ok(certbound::explain::explain(&checker, &request).await)
    });
    match result {
        Ok(explanation) => {
            print!("{}", explanation.report);
            match explanation.decision.outcome {
                certbound_core::Outcome::Allow(_) => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
        Err(error) => {
            // Only unreadable input gets here (an idp_ca_file that does not parse).
            eprintln!("certbound: {error:#}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

/// The configuration file's text. A file that cannot be read is not an invalid configuration:
/// say what it is.
fn read_config(path: &Path) -> Result<String, ExitCode> {
    std::fs::read_to_string(path).map_err(|e| {
        eprintln!("certbound: cannot read {}: {e}", path.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn load(path: &Path) -> Result<Settings, ExitCode> {
    let text = read_config(path)?;
    Settings::from_yaml(&text, std::env::vars(), path.parent()).map_err(|error| {
        eprintln!(
            "certbound: invalid configuration {}: {error}",
            path.display()
        );
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

/// Validates a file as the Envoy module's `filter_config`, or every certbound filter in an
/// Envoy configuration; the warnings on success.
fn load_module(path: &Path) -> Result<Vec<String>, ExitCode> {
    let invalid = |error: &dyn std::fmt::Display| {
        eprintln!(
            "certbound: invalid module configuration {}: {error}",
            path.display()
        );
        ExitCode::from(EXIT_BAD_CONFIG)
    };
    let text = read_config(path)?;
    if certbound::envoy_config::names_a_dynamic_module(&text) {
        let report = certbound::envoy_config::check(&text).map_err(|e| invalid(&e))?;
        if !report.found.iter().any(|f| !f.per_route) {
            return Err(invalid(
                &"no certbound filter (dynamic_module_config name certbound_envoy) in it",
            ));
        }
        let mut warnings = report.warnings;
        let mut failed = !report.errors.is_empty();
        for one in report.found {
            let kind = if one.per_route {
                "per-route config"
            } else {
                "filter_config"
            };
            match one.result {
                Ok(mut more) => {
                    println!("{kind} at {}: ok", one.at);
                    warnings.append(&mut more);
                }
                Err(error) => {
                    eprintln!("certbound: {kind} at {}: {error}", one.at);
                    failed = true;
                }
            }
        }
        for error in &report.errors {
            eprintln!("certbound: {error}");
        }
        if failed {
            for warning in &warnings {
                eprintln!("certbound: warning: {warning}");
            }
            return Err(invalid(&"see above"));
        }
        return Ok(warnings);
    }
    certbound_core::config::ModuleSettings::from_yaml(&text)
        .map(|settings| settings.decision.warnings)
        .map_err(|e| invalid(&e))
}

fn thumbprint(file: &Path) -> ExitCode {
    let result = std::fs::read(file)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(certbound_core::certificate::decode_file(&bytes)?));
    match result {
        Ok(thumbprint) => {
            println!("{thumbprint}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("certbound: {}: {error}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let Some(path) = args.config else {
        eprintln!("certbound: --config FILE (or CERTBOUND_CONFIG) is required");
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    let mut settings = match load(&path) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    let mut builder = runtime_builder(settings.worker_threads);
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("certbound: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter is made inside the runtime; the tracing layer needs its tracer.
    let traces = match &settings.traces {
        None => None,
        Some(traces) => {
            let _runtime = runtime.enter();
            match certbound::telemetry::start(traces) {
                Ok(started) => Some(started),
                Err(error) => {
                    eprintln!("certbound: cannot start the trace exporter: {error:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let _log_writer = init_tracing(settings.log_format);
    for warning in &settings.decision.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(traces) = &settings.traces {
        tracing::info!(
            endpoint = traces.endpoint.as_deref().unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
            sample_ratio = ?traces.sample_ratio,
            "exporting a span per check (OTLP/gRPC)"
        );
    }
    let result = runtime.block_on(async {
        let result = run(settings, path, args.listen).await;
        if let Some(traces) = traces {
            traces.shutdown(Duration::from_secs(2)).await;
        }
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    settings: Settings,
    config: PathBuf,
    listen_override: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let app = App::build(&settings)?;
    let tls = certbound::server::tls_config(&settings)?;
    // Every listener is bound before certbound says it serves: a busy admin port stops it here.
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "binding listen {} (the gRPC port: move it with `listen:` in the config, \
                 --listen or CERTBOUND_LISTEN)",
                settings.listen
            )
        })?;
    let admin_listener = match settings.admin_listen {
        None => None,
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "binding admin_listen {addr} (the admin port: move it with \
                         `admin_listen:` in the config or CERTBOUND_ADMIN_LISTEN)"
            )
        })?),
    };
    let forward_auth = match &settings.forward_auth {
        None => None,
        Some(forward_auth) => {
            let addr = forward_auth.listen;
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "binding forward_auth.listen {addr} (the HTTP authorization port: move it \
                     with `forward_auth.listen:` in the config or CERTBOUND_FORWARD_AUTH__LISTEN)"
                )
            })?;
            tracing::info!(
                listen = %listener.local_addr()?,
                tls = forward_auth.tls.is_some(),
                "certbound serving the HTTP authorization API (forward auth)"
            );
            Some((listener, forward_auth.clone()))
        }
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        admin_listen = %admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "certbound serving gRPC (Check, health, reflection) and the admin endpoints (/metrics /healthz /readyz)"
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let admin = admin_listener.map(|listener| {
        tokio::spawn(certbound::admin::serve(
            Arc::clone(&app),
            listener,
            until_stopped(),
        ))
    });
    let forward_auth = forward_auth.map(|(listener, settings)| {
        let app = Arc::clone(&app);
        let until = until_stopped();
        tokio::spawn(async move {
            let limits = app.connection_limits().await;
            certbound::forward_auth::serve(
                app.authorizer(),
                settings,
                limits,
                app.metrics(),
                listener,
                until,
            )
            .await
        })
    });
    let reloads = tokio::spawn(reload_loop(
        Arc::clone(&app),
        config,
        listen_override,
        settings.watch_interval,
    ));
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let served = certbound::server::serve(Arc::clone(&app), listener, tls, until_stopped()).await;
    signal.abort();
    reloads.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    if let Some(forward_auth) = forward_auth {
        // After a stop signal, its checks drain too; after a failure of gRPC, it stops now.
        if served.is_err() {
            forward_auth.abort();
        }
        match forward_auth.await {
            Err(error) if error.is_cancelled() => {}
            Ok(Err(error)) => tracing::error!("forward_auth: {error:#}"),
            Err(error) => tracing::error!("forward_auth: {error}"),
            Ok(Ok(())) => {}
        }
    }
    served
}

/// Reloads the configuration on SIGHUP and, when watching, whenever the file's content changes.
/// A configuration that does not validate is rejected with a log line; the running one stays.
async fn reload_loop(
    app: Arc<App>,
    path: PathBuf,
    listen_override: Option<SocketAddr>,
    watch: Option<Duration>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reload on signal is off");
        return;
    };
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(watch.unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    loop {
        let trigger = tokio::select! {
            _ = hangup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let now = std::fs::read(&path).ok();
                if watch.is_none() || now == last {
                    continue;
                }
                "file change"
            }
        };
        last = std::fs::read(&path).ok();
        let metrics = app.metrics();
        let result = match Settings::load(&path) {
            Err(error) => Err(error.to_string()),
            Ok(mut settings) => {
                if let Some(listen) = listen_override {
                    settings.listen = listen;
                }
                for warning in &settings.decision.warnings {
                    tracing::warn!("{warning}");
                }
                app.reload(settings).await
            }
        };
        match result {
            Ok(()) => {
                certbound::metrics::Metrics::count(&metrics.config_reloads, "applied");
                tracing::info!(trigger, config = %path.display(), "configuration reloaded");
            }
            Err(error) => {
                certbound::metrics::Metrics::count(&metrics.config_reloads, "rejected");
                tracing::error!(trigger, config = %path.display(), %error, "configuration reload rejected; the running configuration stays");
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// One worker thread is tokio's single-threaded scheduler: on one core it answered 1.65x the
/// checks of a one-worker multi-threaded runtime at 60 % of the CPU per check (BENCHMARKS.md),
/// because the connection task writes the answers of many streams at once. More workers (or 0:
/// one per CPU) use the work-stealing scheduler.
fn runtime_builder(worker_threads: usize) -> tokio::runtime::Builder {
    if worker_threads == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    builder
}

/// Logs go to stderr through a writer thread (certbound::log_writer): a Check appends its line to
/// a buffer, and the thread writes what accumulated every 100 ms, or at 64 KiB. If stderr
/// cannot keep up with 4 MiB waiting, further lines are dropped and counted in
/// `certbound_log_lines_dropped_total` rather than slowing decisions down. The returned guard
/// writes what is waiting when dropped, at exit.
fn init_tracing(format: LogFormat) -> Option<FlushGuard> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (make_writer, guard) =
        match LogWriter::spawn(std::io::stderr(), Duration::from_millis(100), 4 << 20) {
            Ok((writer, guard)) => {
                certbound::metrics::count_dropped_log_lines_with({
                    let writer = writer.clone();
                    move || writer.dropped_lines()
                });
                if !terminal {
                    // Decision lines skip tracing's formatting (see certbound::decision_log);
                    // on a terminal they go through tracing for its colours.
                    let writer = writer.clone();
                    certbound::decision_log::install(format, move |line| writer.write_line(line));
                }
                (BoxMakeWriter::new(move || writer.clone()), Some(guard))
            }
            Err(error) => {
                // Without the thread, write directly: slower, but nothing is lost.
                eprintln!("certbound: no log writer thread ({error}); logging synchronously");
                (BoxMakeWriter::new(std::io::stderr), None)
            }
        };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(make_writer)
        .with_ansi(terminal);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
