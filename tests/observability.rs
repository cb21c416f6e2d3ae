//! The shipped dashboard and alerts (`deploy/observability/`) cannot rot: every metric and label
//! their queries use must be in a real `/metrics` scrape of certbound, every `decision` and
//! `reason` value they match must be one certbound gives, and the PrometheusRule must hold the
//! same rules as `alerts.yaml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{Certbound, ClientCert, Idp, Signer, bound_request, config_for, request};
use serde_json::Value;

fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/observability")
            .join(name),
    )
    .unwrap()
}

/// Every PromQL expression in the alert rules and the dashboard, with where it comes from.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let alerts: serde_yaml_ng::Value = serde_yaml_ng::from_str(&shipped("alerts.yaml")).unwrap();
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((
                format!("alert {}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let dashboard: Value = serde_json::from_str(&shipped("grafana-dashboard.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            out.push((
                format!("panel {}", panel["title"].as_str().unwrap()),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]
            .as_str()
            .filter(|q| q.contains("certbound_"))
        {
            out.push((format!("variable {}", variable["name"]), query.to_owned()));
        }
    }
    out
}

/// Sample name -> the label names seen on it, from Prometheus text.
fn scrape_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..line.rfind('}').unwrap()]),
            None => (line.split(' ').next().unwrap(), ""),
        };
        let labels = out.entry(name.to_owned()).or_default();
        for pair in rest.split(',').filter(|p| !p.is_empty()) {
            labels.insert(pair.split('=').next().unwrap().to_owned());
        }
    }
    out
}

/// A metric selector: the name and its `(label, value)` matchers.
type Selector = (String, Vec<(String, String)>);

/// Each selector in an expression, and the `by (...)` labels.
fn selectors(expr: &str) -> (Vec<Selector>, Vec<String>) {
    let metric = regex::Regex::new(r"\b(certbound_[a-z0-9_]+)(\{([^}]*)\})?").unwrap();
    let matcher = regex::Regex::new(r#"([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let by = regex::Regex::new(r"\bby\s*\(([^)]*)\)").unwrap();
    let mut found = Vec::new();
    for m in metric.captures_iter(expr) {
        let labels = m
            .get(3)
            .map(|inner| {
                matcher
                    .captures_iter(inner.as_str())
                    .map(|c| (c[1].to_owned(), c[3].to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        found.push((m[1].to_owned(), labels));
    }
    let grouped = by
        .captures_iter(expr)
        .flat_map(|c| {
            c[1].split(',')
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    (found, grouped)
}

#[tokio::test]
async fn every_query_in_the_dashboard_and_alerts_names_metrics_and_labels_certbound_exports() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    // Decisions of each outcome the traffic can give here: an allow (a token cache miss, then a
    // hit) and a deny.
    let cert = ClientCert::self_signed("client");
    for _ in 0..2 {
        certbound
            .check(bound_request(&signer, &idp.issuer, &cert))
            .await;
    }
    certbound.check(request(&[], &cert.url_encoded())).await;
    // Families this test sends no traffic for (no introspection endpoint, no DPoP, no reload,
    // no overload), recorded through the same functions the code records them with.
    let metrics = certbound.app.metrics();
    type M = certbound::metrics::Metrics;
    M::count(&metrics.introspection_requests, "error");
    M::count(&metrics.introspection_cache, "hit");
    M::count(&metrics.config_reloads, "rejected");
    metrics.replay_check("redis", "error");
    metrics.record_check(
        &certbound_core::Decision::unavailable(certbound_core::UnavailableReason::Overloaded),
        0.0,
        "",
    );
    let scrape = scrape_labels(&certbound.app.metrics_text());

    let decisions = ["allow", "deny", "unavailable", "metadata"];
    let mut reasons: BTreeSet<&str> = certbound_core::DenyReason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect();
    reasons.extend([
        "ok",
        "keys_unavailable",
        "introspection_unavailable",
        "overloaded",
        "replay_store_unavailable",
    ]);
    let sources: String = [
        "src/metrics.rs",
        "src/check.rs",
        "src/introspection.rs",
        "src/main.rs",
        "src/keys/store.rs",
        "src/authorize.rs",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap())
    .collect();

    let mut failures = Vec::new();
    let mut checked = 0;
    for (origin, expr) in expressions() {
        let (found, grouped) = selectors(&expr);
        if found.is_empty() {
            failures.push(format!("{origin}: no certbound metric in {expr:?}"));
        }
        let mut available = BTreeSet::new();
        for (metric, labels) in &found {
            checked += 1;
            let Some(exported) = scrape.get(metric) else {
                failures.push(format!("{origin}: {metric} is not in the scrape"));
                continue;
            };
            available.extend(exported.iter().cloned());
            for (label, value) in labels {
                if label == "job" {
                    continue; // added by Prometheus when it scrapes
                }
                if !exported.contains(label) {
                    failures.push(format!("{origin}: {metric} has no label {label}"));
                }
                let known = match label.as_str() {
                    "decision" => decisions.contains(&value.as_str()),
                    "reason" => reasons.contains(value.as_str()),
                    _ => sources.contains(&format!("\"{value}\"")),
                };
                if !known {
                    failures.push(format!(
                        "{origin}: certbound never sets {label}=\"{value}\""
                    ));
                }
            }
        }
        for label in grouped {
            if !available.contains(&label) {
                failures.push(format!(
                    "{origin}: grouped by {label}, which none of its metrics has"
                ));
            }
        }
    }
    assert!(checked >= 25, "only {checked} selectors found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_prometheus_rule_holds_exactly_the_alert_rules() {
    let alerts: serde_yaml_ng::Value = serde_yaml_ng::from_str(&shipped("alerts.yaml")).unwrap();
    let rule: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&shipped("prometheus-rule.yaml")).unwrap();
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        rule["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
}

#[test]
fn the_parser_finds_what_a_query_uses() {
    let (found, grouped) = selectors(
        r#"sum by (issuer, result) (rate(certbound_key_refreshes_total{job=~"$job", result="failure"}[5m])) / certbound_x"#,
    );
    assert_eq!(found[0].0, "certbound_key_refreshes_total");
    assert_eq!(
        found[0].1,
        [
            ("job".to_owned(), "$job".to_owned()),
            ("result".to_owned(), "failure".to_owned())
        ]
    );
    assert_eq!(found[1].0, "certbound_x");
    assert_eq!(grouped, ["issuer", "result"]);
}
