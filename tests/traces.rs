//! OpenTelemetry traces end to end: real Envoy 1.40 with its OpenTelemetry tracer and the real
//! certbound binary both export to one OTLP/gRPC receiver in this test (a tonic server decoding
//! the OTLP protobufs). certbound's `certbound.check` span must be a child of Envoy's ext_authz
//! call span, in the same trace, with the decision's attributes; a stopped collector must not
//! change or slow any answer.
//!
//! Ignored by a plain `cargo test` (it needs Envoy); `scripts/test.sh` runs it with
//! `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::envoy::*;
use common::stack::{Stack, Token};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// One received span, flattened.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Vec<(String, String)>,
    /// The export call's `x-api-key` metadata (`OTEL_EXPORTER_OTLP_HEADERS`).
    api_key: Option<String>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

fn text(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let api_key = request
            .metadata()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.record(request.into_inner(), api_key);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    fn record(&self, request: ExportTraceServiceRequest, api_key: Option<String>) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = text(
                &resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            let service = resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: text(&span.attributes),
                        api_key: api_key.clone(),
                    });
                }
            }
        }
    }

    /// Serves OTLP/gRPC on 127.0.0.1 until the returned sender is dropped.
    async fn start(port: u16) -> (Self, tokio::sync::oneshot::Sender<()>) {
        let collector = Self::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
        });
        (collector, stop)
    }

    /// Serves OTLP/HTTP (`POST /v1/traces`, protobuf bodies) on 127.0.0.1.
    async fn start_http(port: u16) -> Self {
        use prost::Message;
        let collector = Self::default();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let state = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let state = state.clone();
                    async move {
                        let content_type = headers.get("content-type").cloned();
                        if content_type.as_ref().and_then(|v| v.to_str().ok())
                            != Some("application/x-protobuf")
                        {
                            return (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                        }
                        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                            return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                        };
                        let api_key = headers
                            .get("x-api-key")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        state.record(request, api_key);
                        let answer = ExportTraceServiceResponse::default().encode_to_vec();
                        (axum::http::StatusCode::OK, answer)
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        collector
    }

    fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

/// Envoy's OpenTelemetry tracer on the HTTP connection manager, every request sampled,
/// exporting to the test's collector through an `otel` cluster.
fn with_envoy_tracing(config: String, collector: SocketAddr) -> String {
    let tracing = "                stat_prefix: ingress
                generate_request_id: true
                tracing:
                  random_sampling: { value: 100 }
                  provider:
                    name: envoy.tracers.opentelemetry
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                      service_name: envoy
                      grpc_service:
                        envoy_grpc: { cluster_name: otel }
                        timeout: 1s
";
    let out = config.replacen("                stat_prefix: ingress\n", tracing, 1);
    assert_ne!(out, config, "no stat_prefix to hang the tracer on");
    let cluster = format!(
        "  clusters:
    - name: otel
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: otel
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: {} }}
",
        collector.port()
    );
    out.replacen("  clusters:\n", &cluster, 1)
}

/// Waits until `found` holds for the received spans (Envoy flushes every 5 s).
async fn wait_for(collector: &Collector, found: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector.spans();
        if found(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(spans: &[Received]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{}:{}", s.service, s.name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn the_check_span_is_a_child_of_envoys_ext_authz_span_and_a_dead_collector_changes_nothing() {
    let port = free_port();
    let (collector, stop) = Collector::start(port).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let telemetry = format!(
        "telemetry:\n  traces:\n    endpoint: http://{addr}\n    sample_ratio: 1.0\n    timeout_ms: 300\n"
    );
    let stack = Stack::service("traces", &telemetry, |config| {
        with_envoy_tracing(config, addr)
    })
    .await;
    let cert = stack.pki.client("traced");
    stack.assert_serving(&cert).await;
    let client = https_client(&stack.pki, Some(&cert), Http::One);
    let token = stack.token(Token::Valid, &cert);
    let bearer = format!("Bearer {token}");
    let send = |auth: Option<String>| {
        let client = client.clone();
        let port = stack.port;
        async move {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            get(&client, port, Http::One, &headers)
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(send(Some(bearer.clone())).await, 200);
    assert_eq!(send(None).await, 401);

    let spans = wait_for(&collector, |spans| {
        let checks: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "certbound.check")
            .collect();
        checks.len() >= 3
            && checks.iter().all(|c| {
                spans
                    .iter()
                    .any(|e| e.service == "envoy" && e.span_id == c.parent_span_id)
            })
    })
    .await;
    let checks: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name == "certbound.check")
        .collect();
    let allow = checks
        .iter()
        .rev()
        .find(|c| c.attribute("certbound.decision") == Some("allow"))
        .unwrap_or_else(|| panic!("no allowed check span among {:?}", names(&spans)));
    assert_eq!(allow.service, "certbound");
    let parent = spans
        .iter()
        .find(|s| s.span_id == allow.parent_span_id)
        .unwrap_or_else(|| {
            panic!(
                "the check span's parent was not exported: {:?}",
                names(&spans)
            )
        });
    assert_eq!(parent.service, "envoy", "{:?}", names(&spans));
    assert_eq!(parent.trace_id, allow.trace_id);
    assert!(
        parent.name.contains("Authorization") || parent.name.contains("ext_authz"),
        "the parent is Envoy's ext_authz call, not {:?}",
        parent.name
    );
    assert_eq!(allow.attribute("certbound.reason"), Some("ok"));
    assert_eq!(
        allow.attribute("certbound.issuer"),
        Some(stack.issuer.as_str())
    );
    assert_eq!(allow.attribute("certbound.binding"), Some("x5t#S256"));
    assert_eq!(
        allow.attribute("certbound.certificate_source"),
        Some("peer")
    );
    assert!(allow.attribute("certbound.token_cache_hit").is_some());
    let deny = checks
        .iter()
        .find(|c| c.attribute("certbound.decision") == Some("deny"))
        .expect("a denied check span");
    assert_eq!(deny.attribute("certbound.reason"), Some("token_missing"));
    // Never a token or a certificate among the attributes.
    for span in &spans {
        for (key, value) in &span.attributes {
            assert!(!value.contains(&token), "{key} carries the token");
            assert!(!value.contains("MII"), "{key} carries a certificate");
        }
    }

    // The collector goes away: answers stay the same and prompt.
    drop(stop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(send(Some(bearer.clone())).await, 200);
        assert_eq!(send(None).await, 401);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "40 requests took {elapsed:?} with the collector down"
    );
    eprintln!("collector down: 40 requests in {elapsed:?}");
}

/// The certbound binary with its HTTP authorization API on a free port (`path_prefix: /check`),
/// `telemetry` the config's traces lines (may be empty) and `env` its environment; the URL of a
/// check of `/items`. Keep the returned parts alive for the test.
async fn http_api(
    telemetry: &str,
    env: &[(&str, String)],
) -> (String, (Process, common::Idp, tempfile::TempDir)) {
    let signer = common::Signer::es256("k1");
    let idp = common::Idp::start(&[&signer]).await;
    let forward_auth = free_port();
    let yaml = common::config_for(
        &idp,
        &format!(
            "forward_auth: {{listen: '127.0.0.1:{forward_auth}', path_prefix: /check}}\n{telemetry}"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let (certbound, _) = start_certbound_env(&yaml, dir.path(), None, env).await;
    let url = format!("http://127.0.0.1:{forward_auth}/check/items");
    (url, (certbound, idp, dir))
}

/// The HTTP authorization API: the span is a child of the `traceparent` the proxy sends
/// (Traefik and Caddy send their own span's; NGINX passes the client's), and B3 works too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the certbound binary: run scripts/test.sh"]
async fn the_http_api_span_is_a_child_of_the_proxys_trace() {
    let port = free_port();
    let (collector, _stop) = Collector::start(port).await;
    let telemetry = format!(
        "telemetry:\n  traces:\n    endpoint: http://127.0.0.1:{port}\n    sample_ratio: 0.0\n"
    );
    let (url, _running) = http_api(&telemetry, &[]).await;
    let client = reqwest::Client::new();
    // Sampled callers: W3C, then B3; the ratio is 0, so only the callers' decisions count.
    let w3c = client
        .get(&url)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(w3c.status(), 401);
    let b3 = client
        .get(&url)
        .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
        .send()
        .await
        .unwrap();
    assert_eq!(b3.status(), 401);
    // An unsampled caller and no caller at ratio 0: no span.
    for request in [
        client.get(&url).header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-00",
        ),
        client.get(&url),
    ] {
        assert_eq!(request.send().await.unwrap().status(), 401);
    }
    wait_for(&collector, |spans| spans.len() >= 2).await;
    // One more export interval: a span for the unsampled requests would have arrived by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = collector.spans();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let parents: Vec<(String, String)> = spans
        .iter()
        .map(|s| (hex(&s.trace_id), hex(&s.parent_span_id)))
        .collect();
    assert_eq!(
        parents,
        [
            (
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned()
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7".to_owned(),
                "e457b5a2e4d86bd1".to_owned()
            ),
        ],
        "{:?}",
        names(&spans)
    );
    assert!(
        spans
            .iter()
            .all(|s| s.attribute("certbound.reason") == Some("token_missing"))
    );
}

/// The standard `OTEL_*` variables alone (no `telemetry` in the file) turn export on, name the
/// service, add the export headers and choose the sampler: `parentbased_always_off` exports a
/// span only for a caller that sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the certbound binary: run scripts/test.sh"]
async fn the_otel_environment_variables_alone_configure_the_export() {
    let port = free_port();
    let (collector, _stop) = Collector::start(port).await;
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_SERVICE_NAME", "orders-authz".to_owned()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret".to_owned()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_off".to_owned()),
    ];
    let (url, _running) = http_api("", &env).await;
    let client = reqwest::Client::new();
    let sampled = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for request in [
        client.get(&url),
        client.get(&url).header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-00",
        ),
        client.get(&url).header("traceparent", sampled),
    ] {
        assert_eq!(request.send().await.unwrap().status(), 401);
    }
    wait_for(&collector, |spans| !spans.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = collector.spans();
    assert_eq!(
        spans.len(),
        1,
        "only the sampled caller's: {:?}",
        names(&spans)
    );
    let span = &spans[0];
    assert_eq!(span.service, "orders-authz");
    assert_eq!(span.api_key.as_deref(), Some("s3cret"));
    let hex: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "5bf92f3577b34da6a3ce929d0e0e4736");
}

/// A collector that accepts connections and never answers: checks stay prompt, the spans that
/// do not fit the queue are dropped and counted (`queue_full`), and the batch stuck in the
/// hung export is counted as `export_failed` when its timeout ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the certbound binary: run scripts/test.sh"]
async fn a_hung_collector_costs_checks_nothing_and_lost_spans_are_counted() {
    // The black hole: connections are accepted and held, nothing is read or written.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            held.push(socket);
        }
    });
    let admin = free_port();
    let telemetry = format!(
        "telemetry:\n  traces:\n    endpoint: http://{hole_addr}\n    sample_ratio: 1.0\n\
         \x20   timeout_ms: 1500\n    max_queue: 8\n"
    );
    let env = [("CERTBOUND_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))];
    let (url, _running) = http_api(&telemetry, &env).await;
    let client = reqwest::Client::new();
    let wave = |n: usize| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let started = Instant::now();
            for _ in 0..n {
                assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
            }
            started.elapsed()
        }
    };
    // The first wave fills a batch; after the batch delay its export hangs on the hole.
    let first = wave(5).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The second wave finds the exporter stuck: 8 spans fit the queue, the rest are dropped.
    let second = wave(100).await;
    let scrape = || async {
        reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let queue_full = common::metric_in(
        &scrape().await,
        r#"certbound_trace_spans_dropped_total{result="queue_full"}"#,
    );
    assert!(
        (90..=100).contains(&queue_full),
        "queue_full {queue_full}: 100 spans into a queue of 8 behind a hung export"
    );
    // The hung export times out (1.5 s): its batch is counted as lost too.
    let mut export_failed = 0;
    for _ in 0..100 {
        export_failed = common::metric_in(
            &scrape().await,
            r#"certbound_trace_spans_dropped_total{result="export_failed"}"#,
        );
        if export_failed >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(export_failed >= 5, "export_failed {export_failed}");
    eprintln!(
        "hung collector: 5 checks in {first:?}, 100 in {second:?}; dropped {queue_full} queue_full, {export_failed} export_failed"
    );
    // Generous: 100 sequential checks take milliseconds each; a check waiting on the
    // collector would take the export timeout.
    assert!(second < Duration::from_secs(10), "{second:?}");
}

/// OTLP/HTTP (`protocol: http/protobuf`): the collector's base URL gets `/v1/traces`, the body
/// is the protobuf export request, the headers go along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the certbound binary: run scripts/test.sh"]
async fn spans_go_over_otlp_http_too() {
    let port = free_port();
    let collector = Collector::start_http(port).await;
    let telemetry = format!(
        "telemetry:\n  traces:\n    endpoint: http://127.0.0.1:{port}\n\
         \x20   protocol: http/protobuf\n    headers: {{x-api-key: k3y}}\n"
    );
    let (url, _running) = http_api(&telemetry, &[]).await;
    let answer = reqwest::Client::new()
        .get(&url)
        .header(
            "traceparent",
            "00-6bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let spans = wait_for(&collector, |spans| !spans.is_empty()).await;
    let span = &spans[0];
    assert_eq!(span.name, "certbound.check");
    assert_eq!(span.service, "certbound");
    assert_eq!(span.api_key.as_deref(), Some("k3y"));
    assert_eq!(span.attribute("certbound.reason"), Some("token_missing"));
    let hex: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "6bf92f3577b34da6a3ce929d0e0e4736");
}
