//! `certbound check-config --module` on a whole Envoy configuration (a bootstrap, an Istio
//! `EnvoyFilter`, any YAML with Envoy's filter messages in it, one or more documents): every
//! certbound dynamic-module filter found in it, its `filter_config` checked as the module will
//! check it when Envoy loads it, and every per-route `filter_config` likewise.

use serde_yaml_ng::Value;

use certbound_core::config::{ModuleSettings, RouteSettings};

/// The module's name in `dynamic_module_config` (`libcertbound_envoy.so`).
const MODULE_NAME: &str = "certbound_envoy";
const PER_ROUTE_TYPE: &str = "DynamicModuleFilterPerRoute";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const STRUCT_TYPE: &str = "type.googleapis.com/google.protobuf.Struct";

/// One certbound filter or per-route config found in the file, and what its check said.
#[derive(Debug)]
pub struct Found {
    /// Where it is: the YAML path, e.g. `static_resources.listeners[0]...http_filters[0]`.
    pub at: String,
    pub per_route: bool,
    /// The configuration's warnings, or why it is invalid.
    pub result: Result<Vec<String>, String>,
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
pub fn check(text: &str) -> Result<Vec<Found>, String> {
    let docs = documents(text)?;
    let mut found = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let root = if docs.len() > 1 {
            format!("document {}", index + 1)
        } else {
            String::new()
        };
        walk(doc, &mut root.clone(), &mut found);
    }
    Ok(found)
}

fn documents(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(|e| e.to_string()))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

fn any_mapping(value: &Value, test: &dyn Fn(&serde_yaml_ng::Mapping) -> bool) -> bool {
    match value {
        Value::Mapping(mapping) => test(mapping) || mapping.values().any(|v| any_mapping(v, test)),
        Value::Sequence(items) => items.iter().any(|v| any_mapping(v, test)),
        Value::Tagged(tagged) => any_mapping(&tagged.value, test),
        _ => false,
    }
}

fn walk(value: &Value, at: &mut String, found: &mut Vec<Found>) {
    match value {
        Value::Mapping(mapping) => {
            if let Some(one) = certbound_filter(mapping, at) {
                found.push(one);
            }
            for (key, child) in mapping {
                let len = at.len();
                if !at.is_empty() {
                    at.push('.');
                }
                match key {
                    Value::String(key) => at.push_str(key),
                    other => at.push_str(&format!("{other:?}")),
                }
                walk(child, at, found);
                at.truncate(len);
            }
        }
        Value::Sequence(items) => {
            for (index, child) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("[{index}]"));
                walk(child, at, found);
                at.truncate(len);
            }
        }
        Value::Tagged(tagged) => walk(&tagged.value, at, found),
        _ => {}
    }
}

/// A mapping that configures the certbound module (listener filter or per-route), checked.
fn certbound_filter(mapping: &serde_yaml_ng::Mapping, at: &str) -> Option<Found> {
    let module = mapping
        .get("dynamic_module_config")?
        .get("name")?
        .as_str()?;
    if module != MODULE_NAME {
        return None;
    }
    let per_route = mapping
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with(PER_ROUTE_TYPE));
    let result = filter_config_text(mapping.get("filter_config")).and_then(|text| {
        if per_route {
            RouteSettings::from_yaml(&text)
                .map(|_| Vec::new())
                .map_err(|e| e.to_string())
        } else {
            ModuleSettings::from_yaml(&text)
                .map(|settings| settings.decision.warnings)
                .map_err(|e| e.to_string())
        }
    });
    Some(Found {
        at: at.to_owned(),
        per_route,
        result,
    })
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
            serde_json::to_string(&value).map_err(|e| format!("filter_config: {e}"))
        }
        Some(other) => Err(format!(
            "filter_config: {other} (expected {STRING_VALUE_TYPE} or {STRUCT_TYPE})"
        )),
        None => Err("filter_config: no \"@type\"".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shipped(path: &str) -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path).unwrap()
    }

    #[test]
    fn the_shipped_module_configs_are_found_and_valid() {
        for (path, filters, routes) in [
            ("deploy/envoy/module.yaml", 1, 1),
            ("deploy/istio/module-envoy-filter.yaml", 1, 0),
        ] {
            let text = shipped(path);
            assert!(names_a_dynamic_module(&text), "{path}");
            let found = check(&text).unwrap();
            for one in &found {
                assert!(one.result.is_ok(), "{path}: {one:?}");
            }
            assert_eq!(
                found.iter().filter(|f| !f.per_route).count(),
                filters,
                "{path}: {found:?}"
            );
            assert_eq!(
                found.iter().filter(|f| f.per_route).count(),
                routes,
                "{path}: {found:?}"
            );
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
        let found = check(&text).unwrap();
        let filter = found.iter().find(|f| !f.per_route).unwrap();
        assert!(
            filter.at.ends_with("http_filters[0].typed_config"),
            "{filter:?}"
        );
        assert!(
            filter.result.as_ref().unwrap_err().contains("none"),
            "{filter:?}"
        );
        let route = found.iter().find(|f| f.per_route).unwrap();
        assert!(
            route.result.as_ref().unwrap_err().contains("sometimes"),
            "{route:?}"
        );
        // A service key in the module's config is refused as Envoy would refuse it.
        let text = shipped("deploy/envoy/module.yaml").replace(
            "                          issuers:",
            "                          listen: 0.0.0.0:1\n                          issuers:",
        );
        let found = check(&text).unwrap();
        let filter = found.iter().find(|f| !f.per_route).unwrap();
        assert!(
            filter.result.as_ref().unwrap_err().contains("listen"),
            "{filter:?}"
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
