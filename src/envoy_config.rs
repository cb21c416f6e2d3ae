//! `certbound check-config --module` on a whole Envoy configuration (a bootstrap, an Istio
//! `EnvoyFilter`, any YAML with Envoy's filter messages in it, one or more documents): every
//! certbound dynamic-module filter found in it, its `filter_config` checked as the module will
//! check it when Envoy loads it, every per-route `filter_config` likewise, and the ways a file can
//! make Envoy skip certbound while each config in it is valid: the filter `disabled`, a route or
//! virtual host that disables it, a per-route config under a key Envoy does not apply, a listener
//! without it, a matcher in front of it.

use serde_yaml_ng::{Mapping, Value};

use certbound_core::config::{ModuleSettings, RouteSettings};

/// The module's name in `dynamic_module_config` (`libcertbound_envoy.so`).
const MODULE_NAME: &str = "certbound_envoy";
const FILTER_TYPE: &str = "DynamicModuleFilter";
const PER_ROUTE_TYPE: &str = "DynamicModuleFilterPerRoute";
const FILTER_CONFIG_TYPE: &str = "envoy.config.route.v3.FilterConfig";
const MATCHER_TYPE: &str = "ExtensionWithMatcher";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const STRUCT_TYPE: &str = "type.googleapis.com/google.protobuf.Struct";
/// Envoy reads a `Struct`'s numbers as doubles: integers beyond this change on the way.
const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// One certbound filter or per-route config found in the file, and what its check said.
#[derive(Debug)]
pub struct Found {
    /// Where it is: the YAML path, e.g. `static_resources.listeners[0]...http_filters[0]`.
    pub at: String,
    pub per_route: bool,
    /// The configuration's warnings, or why it is refused.
    pub result: Result<Vec<String>, String>,
}

/// What the file says about certbound: each filter and per-route config, and the file's own
/// errors and warnings (where each is).
#[derive(Debug, Default)]
pub struct Report {
    pub found: Vec<Found>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Whether the text is an Envoy configuration (it names a dynamic module somewhere) rather
/// than a bare `filter_config`.
pub fn names_a_dynamic_module(text: &str) -> bool {
    documents(text)
        .map(|docs| {
            docs.iter()
                .any(|doc| any_mapping(doc, &|m| m.contains_key("dynamic_module_config")))
        })
        .unwrap_or(false)
}

/// Every certbound filter and per-route config in the text, checked; an error if the YAML does
/// not parse.
pub fn check(text: &str) -> Result<Report, String> {
    let docs = documents(text)?;
    // Paths start with the document's number when there are several.
    let root = |index: usize| {
        if docs.len() > 1 {
            format!("document {}", index + 1)
        } else {
            String::new()
        }
    };
    let mut report = Report::default();
    let mut filters = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        walk(doc, &mut root(index), &mut |value, at| {
            visit(value, at, &mut report, &mut filters)
        });
    }
    // Per-route configs apply only under the name of a filter that holds the module: a second
    // pass, once every filter's name is known.
    for (index, doc) in docs.iter().enumerate() {
        walk(doc, &mut root(index), &mut |value, at| {
            if let Some(per_filter) = value
                .as_mapping()
                .and_then(|m| m.get("typed_per_filter_config"))
                .and_then(Value::as_mapping)
            {
                per_route_configs(per_filter, at, &filters, &mut report);
            }
        });
    }
    Ok(report)
}

fn documents(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(|e| e.to_string()))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

fn any_mapping(value: &Value, test: &dyn Fn(&Mapping) -> bool) -> bool {
    match value {
        Value::Mapping(mapping) => test(mapping) || mapping.values().any(|v| any_mapping(v, test)),
        Value::Sequence(items) => items.iter().any(|v| any_mapping(v, test)),
        Value::Tagged(tagged) => any_mapping(&tagged.value, test),
        _ => false,
    }
}

/// Calls `each` on every value with its YAML path.
fn walk(value: &Value, at: &mut String, each: &mut dyn FnMut(&Value, &str)) {
    each(value, at);
    match value {
        Value::Mapping(mapping) => {
            for (key, child) in mapping {
                let len = at.len();
                if !at.is_empty() {
                    at.push('.');
                }
                match key {
                    Value::String(key) => at.push_str(key),
                    other => at.push_str(&format!("{other:?}")),
                }
                walk(child, at, each);
                at.truncate(len);
            }
        }
        Value::Sequence(items) => {
            for (index, child) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("[{index}]"));
                walk(child, at, each);
                at.truncate(len);
            }
        }
        Value::Tagged(tagged) => walk(&tagged.value, at, each),
        _ => {}
    }
}

fn type_ends_with(value: &Value, suffix: &str) -> bool {
    value
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with(suffix))
}

fn is_certbound(value: &Value) -> bool {
    value
        .get("dynamic_module_config")
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        == Some(MODULE_NAME)
}

/// The first pass: merge keys, HTTP filter lists, and each certbound filter (its name kept for
/// the second pass).
fn visit(value: &Value, at: &str, report: &mut Report, filters: &mut Vec<String>) {
    let Some(mapping) = value.as_mapping() else {
        return;
    };
    if mapping.contains_key("<<") {
        report.errors.push(format!(
            "{at}: a YAML merge key (<<): Envoy does not merge keys, and refuses or reads this \
             mapping otherwise than it looks"
        ));
    }
    if let Some(list) = mapping.get("http_filters").and_then(Value::as_sequence) {
        let holds = list.iter().any(|entry| {
            entry
                .get("typed_config")
                .is_some_and(|c| is_certbound(c) || matcher_wraps_certbound(c))
        });
        if !holds {
            report.warnings.push(format!(
                "{at}.http_filters: no certbound filter: requests on this listener are not \
                 checked"
            ));
        }
    }
    // An HTTP filter entry: `name`, `typed_config`, maybe `disabled`.
    let Some(config) = mapping.get("typed_config") else {
        return;
    };
    let wrapped = matcher_wraps_certbound(config);
    let direct = type_ends_with(config, FILTER_TYPE) && is_certbound(config);
    if !direct && !wrapped {
        return;
    }
    let filter_at = format!("{at}.typed_config");
    let name = mapping
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if wrapped {
        report.errors.push(format!(
            "{at}: the certbound filter is behind an ExtensionWithMatcher: a request the \
             matcher skips is not checked (and a client may choose what the matcher sees)"
        ));
    }
    if mapping.get("disabled").and_then(Value::as_bool) == Some(true) {
        report.errors.push(format!(
            "{at}: the certbound filter has disabled: true: Envoy runs it only on routes that \
             enable it, so every other request reaches the upstream unchecked"
        ));
    }
    let inner = if wrapped {
        config
            .get("extension_config")
            .and_then(|e| e.get("typed_config"))
            .unwrap_or(config)
    } else {
        config
    };
    let result = filter_config_text(inner.get("filter_config")).and_then(|text| {
        ModuleSettings::from_yaml(&text)
            .map(|settings| settings.decision.warnings)
            .map_err(|e| e.to_string())
    });
    report.found.push(Found {
        at: filter_at,
        per_route: false,
        result,
    });
    filters.push(name);
}

fn matcher_wraps_certbound(config: &Value) -> bool {
    type_ends_with(config, MATCHER_TYPE)
        && config
            .get("extension_config")
            .and_then(|e| e.get("typed_config"))
            .is_some_and(is_certbound)
}

/// A `typed_per_filter_config` map (a route's, a virtual host's, a route configuration's).
fn per_route_configs(per_filter: &Mapping, at: &str, filters: &[String], report: &mut Report) {
    for (key, value) in per_filter {
        let key = key.as_str().unwrap_or_default();
        let at = format!("{at}.typed_per_filter_config.{key}");
        let ours = filters.iter().any(|name| name == key);
        // `envoy.config.route.v3.FilterConfig`: `disabled`, and maybe a `config` inside.
        let (config, disabled) = if type_ends_with(value, FILTER_CONFIG_TYPE) {
            (
                value.get("config"),
                value.get("disabled").and_then(Value::as_bool) == Some(true),
            )
        } else {
            (Some(value), false)
        };
        if ours && disabled {
            report.errors.push(format!(
                "{at}: disables certbound here: these requests reach the upstream unchecked, \
                 with whatever claim headers the client sent. For a public route, use a policy \
                 rule with allow_anonymous: true (certbound still removes a client's claim \
                 headers there)"
            ));
        }
        let Some(config) = config.filter(|c| type_ends_with(c, PER_ROUTE_TYPE) && is_certbound(c))
        else {
            continue;
        };
        if !ours {
            report.errors.push(format!(
                "{at}: a certbound per-route config under {key:?}, which names no HTTP filter \
                 holding the module ({}): Envoy never applies it. Use the filter's `name`",
                if filters.is_empty() {
                    "none in this file".to_owned()
                } else {
                    filters.join(", ")
                }
            ));
        }
        let result = filter_config_text(config.get("filter_config")).and_then(|text| {
            RouteSettings::from_yaml(&text)
                .map(|_| Vec::new())
                .map_err(|e| e.to_string())
        });
        report.found.push(Found {
            at,
            per_route: true,
            result,
        });
    }
}

/// The bytes Envoy hands the module: a `StringValue`'s string, a `Struct` as JSON; none is an
/// empty configuration.
fn filter_config_text(config: Option<&Value>) -> Result<String, String> {
    let Some(config) = config else {
        return Ok(String::new());
    };
    match config.get("@type").and_then(Value::as_str) {
        Some(STRING_VALUE_TYPE) => config
            .get("value")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "filter_config: a StringValue needs a string `value`".to_owned()),
        Some(STRUCT_TYPE) => {
            let value = config.get("value").cloned().unwrap_or(Value::Null);
            if let Some(big) = inexact_integer(&value) {
                return Err(format!(
                    "filter_config: {big}: a Struct holds numbers as doubles, so Envoy would \
                     hand the module another number; use a StringValue"
                ));
            }
            serde_json::to_string(&value).map_err(|e| format!("filter_config: {e}"))
        }
        Some(other) => Err(format!(
            "filter_config: {other} (expected {STRING_VALUE_TYPE} or {STRUCT_TYPE})"
        )),
        None => Err("filter_config: no \"@type\"".to_owned()),
    }
}

/// An integer a double cannot hold exactly, anywhere in `value`.
fn inexact_integer(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => {
            let exact = n
                .as_u64()
                .map(|u| u <= MAX_EXACT_INTEGER)
                .or_else(|| n.as_i64().map(|i| i.unsigned_abs() <= MAX_EXACT_INTEGER));
            (exact == Some(false)).then(|| n.to_string())
        }
        Value::Mapping(m) => m.values().find_map(inexact_integer),
        Value::Sequence(items) => items.iter().find_map(inexact_integer),
        Value::Tagged(tagged) => inexact_integer(&tagged.value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shipped(path: &str) -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path).unwrap()
    }

    fn once(text: &str, from: &str, to: &str) -> String {
        assert_eq!(text.matches(from).count(), 1, "{from:?}");
        text.replace(from, to)
    }

    const FILTER: &str = "                  - name: envoy.filters.http.dynamic_modules\n";
    const ROUTE_KEY: &str = "                            envoy.filters.http.dynamic_modules:\n                              \"@type\"";

    #[test]
    fn the_shipped_module_configs_are_found_and_valid() {
        for (path, filters, routes) in [
            ("deploy/envoy/module.yaml", 1, 1),
            ("deploy/istio/module-envoy-filter.yaml", 1, 0),
        ] {
            let text = shipped(path);
            assert!(names_a_dynamic_module(&text), "{path}");
            let report = check(&text).unwrap();
            assert!(report.errors.is_empty(), "{path}: {report:?}");
            assert!(report.warnings.is_empty(), "{path}: {report:?}");
            for one in &report.found {
                assert!(one.result.is_ok(), "{path}: {one:?}");
            }
            let count = |per_route: bool| {
                report
                    .found
                    .iter()
                    .filter(move |f| f.per_route == per_route)
            };
            assert_eq!(count(false).count(), filters, "{path}: {report:?}");
            assert_eq!(count(true).count(), routes, "{path}: {report:?}");
        }
    }

    #[test]
    fn a_bad_filter_config_or_route_config_is_reported_where_it_is() {
        let text = shipped("deploy/envoy/module.yaml")
            .replace("algorithms: [ES256]", "algorithms: [none]")
            .replace(
                "value: \"scopes: [admin]\"",
                "value: \"binding: sometimes\"",
            );
        let report = check(&text).unwrap();
        let filter = report.found.iter().find(|f| !f.per_route).unwrap();
        assert!(
            filter.at.ends_with("http_filters[0].typed_config"),
            "{filter:?}"
        );
        assert!(
            filter.result.as_ref().unwrap_err().contains("none"),
            "{filter:?}"
        );
        let route = report.found.iter().find(|f| f.per_route).unwrap();
        assert!(
            route.result.as_ref().unwrap_err().contains("sometimes"),
            "{route:?}"
        );
        // A service key in the module's config is refused as Envoy would refuse it.
        let text = shipped("deploy/envoy/module.yaml").replace(
            "                          issuers:",
            "                          listen: 0.0.0.0:1\n                          issuers:",
        );
        let report = check(&text).unwrap();
        let filter = report.found.iter().find(|f| !f.per_route).unwrap();
        assert!(
            filter.result.as_ref().unwrap_err().contains("listen"),
            "{filter:?}"
        );
    }

    /// The attack review's cases (tests/attack2.rs ran each on real Envoy: the request reached
    /// the upstream unchecked, or without the route's scope).
    #[test]
    fn a_file_that_makes_envoy_skip_certbound_is_refused() {
        let text = shipped("deploy/envoy/module.yaml");
        let cases = [
            (
                "the filter disabled",
                once(
                    &text,
                    FILTER,
                    &format!("{FILTER}                    disabled: true\n"),
                ),
                "disabled: true",
            ),
            (
                "a per-route config under the filter_name",
                once(
                    &text,
                    ROUTE_KEY,
                    "                            certbound:\n                              \"@type\"",
                ),
                "never applies it",
            ),
            (
                "a route that disables it",
                once(
                    &text,
                    ROUTE_KEY,
                    "                            envoy.filters.http.dynamic_modules:\n                              \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig\n                              disabled: true\n                            ignored:\n                              \"@type\"",
                ),
                "disables certbound here",
            ),
            (
                "a merge key",
                once(
                    &text,
                    ROUTE_KEY,
                    "                            envoy.filters.http.dynamic_modules:\n                              <<: {}\n                              \"@type\"",
                ),
                "merge key",
            ),
        ];
        for (name, text, expected) in cases {
            let report = check(&text).unwrap();
            assert!(
                report.errors.iter().any(|e| e.contains(expected)),
                "{name}: {report:?}"
            );
        }
        // A Struct with an integer a double cannot hold.
        let text = once(
            &text,
            "                        \"@type\": type.googleapis.com/google.protobuf.StringValue\n                        value: |\n",
            "                        \"@type\": type.googleapis.com/google.protobuf.Struct\n                        value:\n                          leeway_seconds: 9007199254740993\n                        unused: |\n",
        );
        let report = check(&text).unwrap();
        let filter = report.found.iter().find(|f| !f.per_route).unwrap();
        assert!(
            filter
                .result
                .as_ref()
                .unwrap_err()
                .contains("9007199254740993"),
            "{filter:?}"
        );
    }

    #[test]
    fn a_listener_without_certbound_is_a_warning() {
        let text = shipped("deploy/envoy/self-signed.yaml");
        // No certbound module anywhere: not a module configuration at all.
        assert!(!names_a_dynamic_module(&text));
        let both = format!("{}\n---\n{text}", shipped("deploy/envoy/module.yaml"));
        let report = check(&both).unwrap();
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with("document 2.") && w.contains("no certbound filter")),
            "{report:?}"
        );
    }

    #[test]
    fn a_bare_filter_config_is_not_an_envoy_config() {
        assert!(!names_a_dynamic_module(
            "issuers:\n  - issuer: https://idp.example.com\n    audiences: [a]\n"
        ));
        assert!(check(": : :\n  - [").is_err());
    }
}
