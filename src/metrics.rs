//! Prometheus metrics, served in text format on the admin listener's `/metrics`.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use certbound_core::Decision;

/// A check's labels. `issuer` and `rule` come from the configuration only (a configured
/// issuer's name, a rule's name or `default`; empty when none applied), never from the request,
/// so their number is bounded by the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub decision: &'static str,
    pub reason: &'static str,
    pub issuer: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabel {
    pub issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerResultLabels {
    pub issuer: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreResultLabels {
    pub store: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// A configured claim header's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeaderLabel {
    pub header: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Reads how many log lines the non-blocking log writer has dropped so far (set once, by `main`).
static DROPPED_LOG_LINES: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> = OnceLock::new();

/// Tells the metrics where the dropped-log-line count comes from.
pub fn count_dropped_log_lines_with(source: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = DROPPED_LOG_LINES.set(Box::new(source));
}

/// What a DPoP replay check can find (`certbound_dpop_replay_checks_total{result}`).
pub const REPLAY_RESULTS: [&str; 3] = ["first_use", "replayed", "error"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~0.8 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

/// Every metric certbound exports.
pub struct Metrics {
    registry: Registry,
    pub checks: Family<CheckLabels, Counter>,
    pub check_duration: HistogramFamily<DecisionLabel>,
    pub checks_in_flight: Gauge,
    pub key_refreshes: Family<IssuerResultLabels, Counter>,
    pub keys_loaded: Family<IssuerLabel, Gauge>,
    pub key_age_seconds: Family<IssuerLabel, Gauge<f64, AtomicU64>>,
    pub introspection_requests: Family<ResultLabel, Counter>,
    pub introspection_cache: Family<ResultLabel, Counter>,
    pub token_cache: Family<ResultLabel, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub replay_checks: Family<StoreResultLabels, Counter>,
    /// 1: the Redis replay store's maxmemory-policy evicts keys; 0: noeviction; -1: unknown.
    pub replay_store_evicting: Gauge,
    pub log_lines_dropped: Counter,
    /// Claim headers left out of an allow: the claim had no safe header form.
    pub claim_headers_dropped: Family<HeaderLabel, Counter>,
    /// Open connections per listener.
    pub connections_open: Family<ListenerLabel, Gauge>,
    /// Connections a listener closed itself (over its cap, silent, idle).
    pub connections_closed: Family<ListenerReasonLabels, Counter>,
    /// Trace spans lost: the export queue was full, or their export failed.
    pub trace_spans_dropped: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("certbound");
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "checks",
            "Checks answered, by decision, reason, configured issuer and route rule",
            checks.clone(),
        );
        let check_duration: HistogramFamily<DecisionLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "check_duration",
            "Time to answer a Check",
            prometheus_client::registry::Unit::Seconds,
            check_duration.clone(),
        );
        let checks_in_flight = Gauge::default();
        registry.register(
            "checks_in_flight",
            "Checks being decided now",
            checks_in_flight.clone(),
        );
        let key_refreshes = Family::<IssuerResultLabels, Counter>::default();
        registry.register(
            "key_refreshes",
            "JWKS fetches per issuer, by result (success, failure)",
            key_refreshes.clone(),
        );
        let keys_loaded = Family::<IssuerLabel, Gauge>::default();
        registry.register(
            "keys_loaded",
            "Usable keys in the issuer's current key set",
            keys_loaded.clone(),
        );
        let key_age_seconds = Family::<IssuerLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "key_set_age_seconds",
            "Seconds since the issuer's keys were last fetched successfully",
            key_age_seconds.clone(),
        );
        let introspection_requests = Family::<ResultLabel, Counter>::default();
        registry.register(
            "introspection_requests",
            "Calls to the introspection endpoint, by result (active, inactive, error)",
            introspection_requests.clone(),
        );
        let introspection_cache = Family::<ResultLabel, Counter>::default();
        registry.register(
            "introspection_cache",
            "Introspection cache lookups, by result (hit, miss)",
            introspection_cache.clone(),
        );
        let token_cache = Family::<ResultLabel, Counter>::default();
        registry.register(
            "token_cache",
            "Verified-token cache lookups, by result (hit, miss)",
            token_cache.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (applied, rejected)",
            config_reloads.clone(),
        );
        let replay_checks = Family::<StoreResultLabels, Counter>::default();
        registry.register(
            "dpop_replay_checks",
            "DPoP proofs recorded against replay, by store (memory, redis) and result \
             (first_use, replayed, error)",
            replay_checks.clone(),
        );
        let replay_store_evicting = Gauge::default();
        registry.register(
            "dpop_replay_store_evicting",
            "1 when the Redis replay store's maxmemory-policy evicts keys (used proofs may be \
             forgotten and replayed), 0 for noeviction, -1 when it cannot be read",
            replay_store_evicting.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer could not keep up",
            log_lines_dropped.clone(),
        );
        let trace_spans_dropped = Family::<ResultLabel, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Trace spans dropped, by result (queue_full: the export queue was full; \
             export_failed: the collector did not take them)",
            trace_spans_dropped.clone(),
        );
        let claim_headers_dropped = Family::<HeaderLabel, Counter>::default();
        registry.register(
            "claim_headers_dropped",
            "Claim headers left out of an allow (and removed) because the claim had no safe \
             header form (non-ASCII, an object, a list element with a comma), by header",
            claim_headers_dropped.clone(),
        );
        let connections_open = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Open connections, by listener",
            connections_open.clone(),
        );
        let connections_closed = Family::<ListenerReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections a listener closed itself, by listener and reason (over_limit: its \
             limits.connections cap was reached; first_byte_timeout; idle_timeout)",
            connections_closed.clone(),
        );
        let metrics = Self {
            claim_headers_dropped,
            connections_open,
            connections_closed,
            registry,
            checks,
            check_duration,
            checks_in_flight,
            key_refreshes,
            keys_loaded,
            key_age_seconds,
            introspection_requests,
            introspection_cache,
            token_cache,
            config_reloads,
            replay_checks,
            replay_store_evicting,
            log_lines_dropped,
            trace_spans_dropped,
        };
        // Every series whose labels are known in advance exists from the start, at 0: an alert
        // on `increase(...) > 0` needs a sample before the first event to fire on it.
        for (family, results) in [
            (&metrics.config_reloads, &["applied", "rejected"][..]),
            (
                &metrics.introspection_requests,
                &["active", "inactive", "error"],
            ),
            (&metrics.introspection_cache, &["hit", "miss"]),
            (&metrics.token_cache, &["hit", "miss"]),
            (
                &metrics.trace_spans_dropped,
                &["queue_full", "export_failed"],
            ),
        ] {
            for &result in results {
                drop(family.get_or_create(&ResultLabel { result }));
            }
        }
        metrics
    }
}

impl Metrics {
    /// Counts one answered Check.
    /// Counts a check. `issuer` is the configured issuer that applied (empty for none), `rule`
    /// the route rule.
    pub fn record_check(&self, decision: &Decision, seconds: f64, issuer: &str) {
        let name = decision.outcome_name();
        self.checks
            .get_or_create(&CheckLabels {
                decision: name,
                reason: decision.reason(),
                issuer: issuer.to_owned(),
                rule: decision
                    .facts
                    .rule
                    .as_deref()
                    .unwrap_or_default()
                    .to_owned(),
            })
            .inc();
        self.check_duration
            .get_or_create(&DecisionLabel { decision: name })
            .observe(seconds);
        if let certbound_core::Outcome::Allow(upstream) = &decision.outcome {
            for header in &upstream.dropped_headers {
                self.claim_headers_dropped
                    .get_or_create(&HeaderLabel {
                        header: header.to_string(),
                    })
                    .inc();
            }
        }
    }

    pub fn key_refresh(&self, issuer: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.key_refreshes
            .get_or_create(&IssuerResultLabels {
                issuer: issuer.to_owned(),
                result,
            })
            .inc();
    }

    /// Listener `listener`'s open-connection gauge and its closed-connection counters (in
    /// [`crate::listener::Closed::ALL`]'s order), all present from the start.
    pub fn listener(&self, listener: &'static str) -> (Gauge, [Counter; 3]) {
        let open = self
            .connections_open
            .get_or_create(&ListenerLabel { listener })
            .clone();
        let closed = crate::listener::Closed::ALL.map(|reason| {
            self.connections_closed
                .get_or_create(&ListenerReasonLabels {
                    listener,
                    reason: reason.name(),
                })
                .clone()
        });
        (open, closed)
    }

    /// The replay store in use: its series exist from the start, at 0.
    pub fn replay_store(&self, store: &'static str) {
        for result in REPLAY_RESULTS {
            drop(
                self.replay_checks
                    .get_or_create(&StoreResultLabels { store, result }),
            );
        }
    }

    /// A configured issuer: its key-refresh series exist from the start, at 0.
    pub fn issuer(&self, issuer: &str) {
        for result in ["success", "failure"] {
            drop(self.key_refreshes.get_or_create(&IssuerResultLabels {
                issuer: issuer.to_owned(),
                result,
            }));
        }
    }

    pub fn replay_check(&self, store: &'static str, result: &'static str) {
        self.replay_checks
            .get_or_create(&StoreResultLabels { store, result })
            .inc();
    }

    pub fn count(family: &Family<ResultLabel, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabel { result }).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        if let Some(dropped) = DROPPED_LOG_LINES.get() {
            let (total, counted) = (dropped(), self.log_lines_dropped.get());
            if total > counted {
                self.log_lines_dropped.inc_by(total - counted);
            }
        }
        for (result, total) in [
            ("queue_full", &crate::telemetry::DROPPED_QUEUE_FULL),
            ("export_failed", &crate::telemetry::DROPPED_EXPORT_FAILED),
        ] {
            let total = total.load(std::sync::atomic::Ordering::Relaxed);
            if total > 0 {
                let counter = self
                    .trace_spans_dropped
                    .get_or_create(&ResultLabel { result });
                if total > counter.get() {
                    counter.inc_by(total - counter.get());
                }
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_counted_by_decision_and_reason() {
        let metrics = Metrics::default();
        metrics.record_check(
            &Decision::deny(certbound_core::DenyReason::BindingMismatch),
            0.001,
            "https://idp.example.com",
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"certbound_checks_total{decision="deny",reason="binding_mismatch",issuer="https://idp.example.com",rule=""} 1"#),
            "{text}"
        );
        assert!(
            text.contains("certbound_check_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("certbound_log_lines_dropped_total 0"),
            "{text}"
        );
    }

    #[test]
    fn claim_headers_without_a_safe_form_are_counted() {
        let metrics = Metrics::default();
        let upstream = certbound_core::Upstream {
            dropped_headers: vec!["x-certbound-name".into()],
            ..Default::default()
        };
        let decision = Decision {
            outcome: certbound_core::Outcome::Allow(upstream),
            facts: Default::default(),
        };
        metrics.record_check(&decision, 0.001, "");
        let text = metrics.encode();
        assert!(
            text.contains(r#"certbound_claim_headers_dropped_total{header="x-certbound-name"} 1"#),
            "{text}"
        );
    }

    /// An alert on `increase(certbound_config_reloads_total{result="rejected"}[15m]) > 0` can
    /// fire on the first rejected reload only if the series was there, at 0, before it.
    #[test]
    fn series_with_known_labels_exist_at_zero_from_the_start() {
        let metrics = Metrics::default();
        metrics.replay_store("redis");
        metrics.issuer("https://idp.example.com");
        let text = metrics.encode();
        for series in [
            r#"certbound_config_reloads_total{result="rejected"} 0"#,
            r#"certbound_config_reloads_total{result="applied"} 0"#,
            r#"certbound_introspection_requests_total{result="error"} 0"#,
            r#"certbound_introspection_cache_total{result="miss"} 0"#,
            r#"certbound_token_cache_total{result="hit"} 0"#,
            r#"certbound_trace_spans_dropped_total{result="queue_full"} 0"#,
            r#"certbound_dpop_replay_checks_total{store="redis",result="error"} 0"#,
            r#"certbound_dpop_replay_checks_total{store="redis",result="first_use"} 0"#,
            r#"certbound_key_refreshes_total{issuer="https://idp.example.com",result="failure"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
