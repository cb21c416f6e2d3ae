//! OpenTelemetry traces: one span per check (`certbound.check`), a child of the caller's trace
//! (W3C `traceparent`, or B3 as Envoy's Zipkin tracer and Istio send it), with the decision's
//! outcome, reason, issuer, rule, binding method and cache hit as attributes, and child spans for
//! the calls a check may wait on: the unknown-`kid` key refetch, introspection and the DPoP
//! replay store. Never a token, proof, certificate or secret.
//!
//! Spans are made with the OpenTelemetry API directly, not through `tracing`: the log
//! subscriber keeps its one global filter, and a check that is not sampled (decided before any
//! span is made) costs no span at all. Export is OTLP/gRPC (`opentelemetry-otlp`) from a task of
//! its own, fed by a bounded queue: a dead or slow collector never slows a check. Spans that find the queue full, or whose export
//! fails, are dropped and counted (`certbound_trace_spans_dropped_total`). Off by default; when
//! off, no span is created at all.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider,
};
use opentelemetry::{Context, propagation::TextMapPropagator};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

use crate::config::ConfigError;
use certbound_core::config::TracesConfig;
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
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub max_queue: usize,
    /// Which checks get a span: `sample_ratio`, else `OTEL_TRACES_SAMPLER`(`_ARG`).
    pub sampler: HeadSampler,
}

/// The sampling decision, taken before a span is made: a check that is not sampled costs no
/// span at all (tracing-opentelemetry would build one and let the SDK drop it at the end).
#[derive(Clone, Debug, PartialEq)]
pub enum HeadSampler {
    Always,
    Never,
    /// This share of traces.
    Ratio(f64),
    /// The caller's decision when it sent one, else the inner sampler.
    ParentBased(Box<HeadSampler>),
}

impl HeadSampler {
    /// The OpenTelemetry SDK's environment variables, as the specification names them.
    fn from_env(env: &BTreeMap<String, String>) -> Self {
        let arg = env
            .get("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|a| a.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(1.0);
        let sampler = env
            .get("OTEL_TRACES_SAMPLER")
            .map(|s| s.trim().to_ascii_lowercase());
        match sampler.as_deref() {
            Some("always_on") => Self::Always,
            Some("always_off") => Self::Never,
            Some("traceidratio") => Self::Ratio(arg),
            Some("parentbased_always_off") => Self::ParentBased(Box::new(Self::Never)),
            Some("parentbased_traceidratio") => Self::ParentBased(Box::new(Self::Ratio(arg))),
            _ => Self::ParentBased(Box::new(Self::Always)),
        }
    }

    fn sample(&self, parent: Option<&Context>) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Ratio(ratio) => *ratio >= 1.0 || (*ratio > 0.0 && random_unit() < *ratio),
            Self::ParentBased(root) => match parent.map(|p| p.span().span_context().clone()) {
                Some(span) if span.is_valid() => span.is_sampled(),
                _ => root.sample(None),
            },
        }
    }
}

/// A uniform number in [0, 1): xorshift64* per thread (sampling needs no cryptography).
fn random_unit() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let here = &time as *const u64 as u64;
            (time ^ here.rotate_left(32)) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    })
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
                format!("{endpoint:?} is not an http:// or https:// URL (OTLP/gRPC)"),
            ));
        }
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

/// The running export: flushed and stopped by [`Traces::shutdown`].
pub struct Traces {
    provider: SdkTracerProvider,
    export: tokio::task::JoinHandle<()>,
}

/// Starts the exporter (inside the runtime): checks make spans from now on.
pub fn start(settings: &TracesSettings) -> anyhow::Result<Traces> {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_timeout(settings.timeout);
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
    let mut exporter = builder.build()?;
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

/// Ended spans into a bounded queue; never blocks, never waits for the collector.
struct ExportQueue {
    sender: mpsc::Sender<SpanData>,
}

impl std::fmt::Debug for ExportQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportQueue")
            .field("capacity", &self.sender.max_capacity())
            .finish()
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.sender.try_send(span).is_err() {
            DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Largest batch per export call, and the longest a span waits for one to fill.
const BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_secs(1);

async fn export_loop(
    mut receiver: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        let mut closed = false;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let spans = batch.len() as u64;
            if let Err(error) = exporter.export(std::mem::take(&mut batch)).await {
                tracing::debug!(%error, spans, "trace export failed");
                DROPPED_EXPORT_FAILED.fetch_add(spans, Ordering::Relaxed);
            }
        }
        if closed {
            return;
        }
    }
}

/// The caller's trace context: W3C `traceparent` (with `tracestate`), else B3 (single `b3`
/// header or `x-b3-*`). `get` reads a header (lower-case name).
pub fn parent(get: impl Fn(&str) -> Option<String>) -> Option<Context> {
    if let Some(traceparent) = get("traceparent") {
        let mut carrier = std::collections::HashMap::new();
        carrier.insert("traceparent".to_owned(), traceparent);
        if let Some(state) = get("tracestate") {
            carrier.insert("tracestate".to_owned(), state);
        }
        let context =
            opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        if context.span().span_context().is_valid() {
            return Some(context);
        }
    }
    b3(&get).map(|span| Context::new().with_remote_span_context(span))
}

/// B3 propagation, single header (`b3: traceid-spanid[-sampled[-parent]]`) or multiple
/// (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`).
fn b3(get: &impl Fn(&str) -> Option<String>) -> Option<SpanContext> {
    let (trace, span, sampled) = match get("b3") {
        Some(single) => {
            let mut parts = single.trim().split('-');
            let trace = parts.next()?.to_owned();
            let span = parts.next()?.to_owned();
            (trace, span, parts.next().map(str::to_owned))
        }
        None => (
            get("x-b3-traceid")?,
            get("x-b3-spanid")?,
            get("x-b3-flags")
                .filter(|f| f.trim() == "1")
                .or_else(|| get("x-b3-sampled")),
        ),
    };
    let trace = trace.trim();
    let trace = match trace.len() {
        16 => format!("{:0>32}", trace),
        32 => trace.to_owned(),
        _ => return None,
    };
    let trace_id = TraceId::from_hex(&trace).ok()?;
    let span_id = SpanId::from_hex(span.trim()).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = match sampled.as_deref().map(str::trim) {
        Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
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
        attributes.push(KeyValue::new(
            "certbound.certificate_source",
            format!("{source:?}").to_lowercase(),
        ));
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

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn w3c_first_then_b3_in_both_forms() {
        let w3c = parent(headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]))
        .unwrap();
        let span = w3c.span().span_context().clone();
        assert_eq!(
            span.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(span.is_sampled() && span.is_remote());
        let single = parent(headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        )]))
        .unwrap();
        assert_eq!(
            single.span().span_context().span_id().to_string(),
            "e457b5a2e4d86bd1"
        );
        let multi = parent(headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        let span = multi.span().span_context().clone();
        assert_eq!(
            span.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(
            !span.is_sampled(),
            "the caller's decision not to sample is kept"
        );
    }

    #[test]
    fn garbage_is_no_parent() {
        for pairs in [
            &[("traceparent", "00-zz-yy-01")][..],
            &[("b3", "0")][..],
            &[("x-b3-traceid", "abc"), ("x-b3-spanid", "e457b5a2e4d86bd1")][..],
            &[("b3", "00000000000000000000000000000000-0000000000000000-1")][..],
            &[][..],
        ] {
            assert!(parent(headers(pairs)).is_none(), "{pairs:?}");
        }
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

#[cfg(test)]
mod sampling {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn the_environment_names_the_sampler() {
        assert_eq!(
            HeadSampler::from_env(&env(&[])),
            HeadSampler::ParentBased(Box::new(HeadSampler::Always))
        );
        assert_eq!(
            HeadSampler::from_env(&env(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ])),
            HeadSampler::ParentBased(Box::new(HeadSampler::Ratio(0.25)))
        );
        assert_eq!(
            HeadSampler::from_env(&env(&[("OTEL_TRACES_SAMPLER", "always_off")])),
            HeadSampler::Never
        );
    }

    #[test]
    fn parent_based_follows_the_caller_and_a_ratio_samples_about_its_share() {
        let sampler = HeadSampler::ParentBased(Box::new(HeadSampler::Ratio(0.1)));
        let sampled = parent(|n| {
            (n == "traceparent")
                .then(|| "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into())
        });
        let unsampled = parent(|n| {
            (n == "traceparent")
                .then(|| "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".into())
        });
        assert!((0..100).all(|_| sampler.sample(sampled.as_ref())));
        assert!((0..100).all(|_| !sampler.sample(unsampled.as_ref())));
        let share = (0..100_000).filter(|_| sampler.sample(None)).count();
        assert!((8_000..12_000).contains(&share), "{share} of 100000 at 0.1");
    }
}
