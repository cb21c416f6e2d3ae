//! OpenTelemetry traces: one span per check (`certbound.check`), a child of the caller's trace
//! (W3C `traceparent`, or B3 as Envoy's Zipkin tracer and Istio send it), with the decision's
//! outcome, reason, issuer, rule, binding method and cache hit as attributes, and child spans for
//! the calls a check may wait on: the unknown-`kid` key refetch, introspection and the DPoP
//! replay store. Never a token, proof, certificate or secret.
//!
//! Spans are made with the OpenTelemetry API directly, not through `tracing`: the log
//! subscriber keeps its one global filter, and a check that is not sampled (decided before any
//! span is made) costs no span at all. Export is OTLP/gRPC (`opentelemetry-otlp`) from a task of
//! its own, fed by a bounded queue: a dead or slow collector never slows a check. Spans that find
//! the queue full, or whose export
//! fails, are dropped and counted (`certbound_trace_spans_dropped_total`). Off by default; when
//! off, no span is created at all.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanExporter};
use tokio::sync::mpsc;

mod export;
mod propagation;
mod sampling;

use export::{ExportQueue, export_loop};
pub use propagation::{may_have_parent, parent};
pub use sampling::HeadSampler;

use crate::config::ConfigError;
use certbound_core::config::{OtlpProtocol, TracesConfig};
use certbound_core::{Decision, Outcome};

static ON: AtomicBool = AtomicBool::new(false);

/// Spans dropped because the export queue was full, and because their export failed (read into
/// `certbound_trace_spans_dropped_total` when metrics are scraped).
pub static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
pub static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

/// Whether spans are being made (traces configured and started).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Validated `telemetry.traces`.
#[derive(Clone, Debug, PartialEq)]
pub struct TracesSettings {
    /// `None`: the exporter reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `_ENDPOINT`.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub max_queue: usize,
    /// Which checks get a span: `sample_ratio`, else `OTEL_TRACES_SAMPLER`(`_ARG`).
    pub sampler: HeadSampler,
}

static SAMPLER: std::sync::OnceLock<HeadSampler> = std::sync::OnceLock::new();
static TRACER: std::sync::OnceLock<opentelemetry_sdk::trace::Tracer> = std::sync::OnceLock::new();

impl TracesSettings {
    /// `None` when traces are off: no endpoint in the file or the environment, or
    /// `OTEL_SDK_DISABLED=true` / `OTEL_TRACES_EXPORTER=none`.
    pub fn validate(
        config: Option<TracesConfig>,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, ConfigError> {
        let config = config.unwrap_or_default();
        let disabled = env
            .get("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env
                .get("OTEL_TRACES_EXPORTER")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
        let from_env = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|name| env.get(*name).is_some_and(|v| !v.trim().is_empty()));
        if disabled || (config.endpoint.is_none() && !from_env) {
            return Ok(None);
        }
        if let Some(endpoint) = &config.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "telemetry.traces.endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        let protocol = match config.protocol {
            Some(protocol) => protocol,
            None => {
                let named = [
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                ]
                .into_iter()
                .find_map(|name| Some((name, env.get(name)?)));
                match named {
                    None => OtlpProtocol::Grpc,
                    Some((name, value)) => OtlpProtocol::parse(value).ok_or_else(|| {
                        ConfigError::new(
                            name,
                            format!("{value:?}: certbound exports grpc or http/protobuf"),
                        )
                    })?,
                }
            }
        };
        if let Some(ratio) = config.sample_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(ConfigError::new(
                "telemetry.traces.sample_ratio",
                "must be between 0 and 1",
            ));
        }
        for name in config.headers.keys() {
            if tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    "telemetry.traces.headers",
                    format!("{name:?} is not a header name"),
                ));
            }
        }
        Ok(Some(Self {
            endpoint: config.endpoint,
            protocol,
            sample_ratio: config.sample_ratio,
            service_name: config.service_name,
            headers: config.headers,
            timeout: Duration::from_millis(config.timeout_ms.unwrap_or(5000)),
            max_queue: config.max_queue.unwrap_or(4096).max(1),
            sampler: match config.sample_ratio {
                Some(ratio) => HeadSampler::ParentBased(Box::new(HeadSampler::Ratio(ratio))),
                None => HeadSampler::from_env(env),
            },
        }))
    }
}

/// The OTLP exporter of `settings.protocol`. An endpoint left out is the exporter's to find in
/// the `OTEL_EXPORTER_OTLP_*` variables, as the specification says.
fn exporter(settings: &TracesSettings) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    let builder = opentelemetry_otlp::SpanExporter::builder();
    Ok(match settings.protocol {
        OtlpProtocol::Grpc => {
            let mut builder = builder.with_tonic().with_timeout(settings.timeout);
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            if !settings.headers.is_empty() {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in &settings.headers {
                    let key = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes())?;
                    metadata.insert(key, value.parse()?);
                }
                builder = builder.with_metadata(metadata);
            }
            builder.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            let mut builder = builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(settings.timeout);
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(http_traces_url(endpoint));
            }
            if !settings.headers.is_empty() {
                builder = builder.with_headers(settings.headers.clone().into_iter().collect());
            }
            builder.build()?
        }
    })
}

/// A collector's base URL gets the traces path, as `OTEL_EXPORTER_OTLP_ENDPOINT` does; a URL
/// with a path is used as written.
fn http_traces_url(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    match rest.find('/') {
        Some(at) if rest[at..] != *"/" => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

/// The running export: flushed and stopped by [`Traces::shutdown`].
pub struct Traces {
    provider: SdkTracerProvider,
    export: tokio::task::JoinHandle<()>,
}

/// Starts the exporter (inside the runtime): checks make spans from now on.
pub fn start(settings: &TracesSettings) -> anyhow::Result<Traces> {
    let mut exporter = exporter(settings)?;
    let mut resource = Resource::builder();
    match &settings.service_name {
        Some(name) => resource = resource.with_service_name(name.clone()),
        None if std::env::var_os("OTEL_SERVICE_NAME").is_none() => {
            resource = resource.with_service_name("certbound");
        }
        None => {}
    }
    let resource = resource.build();
    // The export task holds the exporter: it is told the resource here, not by the provider.
    exporter.set_resource(&resource);
    let (sender, receiver) = mpsc::channel(settings.max_queue);
    let export = tokio::spawn(export_loop(receiver, exporter));
    // certbound decides before it makes a span (HeadSampler): the SDK keeps every span made.
    let provider = SdkTracerProvider::builder()
        .with_span_processor(ExportQueue { sender })
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let _ = SAMPLER.set(settings.sampler.clone());
    let _ = TRACER.set(provider.tracer("certbound"));
    ON.store(true, Ordering::Relaxed);
    Ok(Traces { provider, export })
}

impl Traces {
    /// Stops making spans, then exports what is queued (at most `within`).
    pub async fn shutdown(self, within: Duration) {
        ON.store(false, Ordering::Relaxed);
        // Dropping the provider drops the queue's sender: the export task drains and ends.
        let _ = self.provider.shutdown();
        drop(self.provider);
        let _ = tokio::time::timeout(within, self.export).await;
    }
}

/// The span of one check, as the context to run the check in; `None` when traces are off or
/// the check is not sampled.
pub fn check_span(parent: Option<Context>) -> Option<Context> {
    if !enabled() {
        return None;
    }
    let sampler = SAMPLER.get()?;
    if !sampler.sample(parent.as_ref()) {
        return None;
    }
    let tracer = TRACER.get()?;
    let parent = parent.unwrap_or_default();
    let span = tracer
        .span_builder("certbound.check")
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// The decision's attributes on its span, which then ends.
pub fn record(cx: &Context, decision: &Decision) {
    let span = cx.span();
    let facts = &decision.facts;
    let mut attributes = vec![
        KeyValue::new("certbound.decision", decision.outcome_name()),
        KeyValue::new("certbound.reason", decision.reason()),
    ];
    if let Some(issuer) = facts.issuer.as_deref() {
        attributes.push(KeyValue::new("certbound.issuer", issuer.to_owned()));
    }
    if let Some(rule) = facts.rule.as_deref() {
        attributes.push(KeyValue::new("certbound.rule", rule.to_owned()));
    }
    // The configured resource identifier (never a request's): a bounded set of values.
    let resource = match &decision.outcome {
        Outcome::Metadata(answer) => Some(&answer.resource),
        _ => facts.resource.as_ref(),
    };
    if let Some(resource) = resource {
        attributes.push(KeyValue::new("certbound.resource", resource.id.clone()));
    }
    let binding = match (&facts.thumbprint, &facts.dpop) {
        (Some(_), Some(_)) => Some("x5t#S256 jkt"),
        (Some(_), None) => Some("x5t#S256"),
        (None, Some(_)) => Some("jkt"),
        (None, None) => None,
    };
    if let Some(binding) = binding {
        attributes.push(KeyValue::new("certbound.binding", binding));
    }
    if let Some(hit) = facts.token_cache {
        attributes.push(KeyValue::new("certbound.token_cache_hit", hit));
    }
    if let Some(source) = facts.certificate_source {
        attributes.push(KeyValue::new("certbound.certificate_source", source.name()));
    }
    span.set_attributes(attributes);
    if matches!(decision.outcome, Outcome::Unavailable(_)) {
        span.set_status(Status::error(decision.reason()));
    }
    span.end();
}

/// A span for a call the current check waits on; ends when dropped. Nothing when the current
/// check has no span.
pub struct ChildSpan(Option<Context>);

impl ChildSpan {
    pub fn start(name: &'static str) -> Self {
        if !enabled() {
            return Self(None);
        }
        let current = Context::current();
        let Some(tracer) = TRACER.get().filter(|_| current.has_active_span()) else {
            return Self(None);
        };
        let span = tracer.start_with_context(name, &current);
        Self(Some(current.with_span(span)))
    }

    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_comes_from_the_file_then_the_environment() {
        let on = |config: TracesConfig, env: &[(&str, &str)]| {
            let env: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let config = TracesConfig {
                endpoint: Some("http://c:4318".into()),
                ..config
            };
            TracesSettings::validate(Some(config), &env).map(|s| s.unwrap().protocol)
        };
        assert_eq!(
            on(TracesConfig::default(), &[]).unwrap(),
            OtlpProtocol::Grpc
        );
        let http = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert_eq!(
            on(TracesConfig::default(), &http).unwrap(),
            OtlpProtocol::HttpProtobuf
        );
        let traces_wins = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ];
        assert_eq!(
            on(TracesConfig::default(), &traces_wins).unwrap(),
            OtlpProtocol::Grpc
        );
        let file_wins = TracesConfig {
            protocol: Some(OtlpProtocol::Grpc),
            ..Default::default()
        };
        assert_eq!(on(file_wins, &http).unwrap(), OtlpProtocol::Grpc);
        let json = on(
            TracesConfig::default(),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        )
        .unwrap_err();
        assert_eq!(json.key, "OTEL_EXPORTER_OTLP_PROTOCOL");
    }

    #[test]
    fn an_http_base_url_gets_the_traces_path() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("https://otlp.example.com/otlp/v1/traces"),
            "https://otlp.example.com/otlp/v1/traces"
        );
    }

    #[test]
    fn off_unless_an_endpoint_is_configured_or_in_the_environment() {
        let none = BTreeMap::new();
        assert_eq!(TracesSettings::validate(None, &none).unwrap(), None);
        let env: BTreeMap<_, _> = [(
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            "http://collector:4317".to_owned(),
        )]
        .into();
        let on = TracesSettings::validate(None, &env).unwrap().unwrap();
        assert_eq!(on.endpoint, None, "the exporter reads the variable itself");
        let mut off = env.clone();
        off.insert("OTEL_TRACES_EXPORTER".into(), "none".into());
        assert_eq!(TracesSettings::validate(None, &off).unwrap(), None);
        let bad = TracesConfig {
            endpoint: Some("collector:4317".into()),
            ..Default::default()
        };
        assert_eq!(
            TracesSettings::validate(Some(bad), &none).unwrap_err().key,
            "telemetry.traces.endpoint"
        );
        let ratio = TracesConfig {
            endpoint: Some("http://c:4317".into()),
            sample_ratio: Some(1.5),
            ..Default::default()
        };
        assert_eq!(
            TracesSettings::validate(Some(ratio), &none)
                .unwrap_err()
                .key,
            "telemetry.traces.sample_ratio"
        );
    }
}
