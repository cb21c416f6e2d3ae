//! The Envoy module's validation of the schema: certbound's own YAML (the filter's
//! `filter_config`), minus what only the ext_authz service understands, plus the Envoy cluster
//! each issuer's keys are fetched through. A key the module cannot honour is refused with a
//! message naming it, so that Envoy rejects the configuration instead of silently ignoring part of
//! it. Here (not in the module) so that `certbound check-config --module` can run it too.

use std::collections::HashMap;

use serde::Deserialize;

use super::{ConfigError, DecisionSettings, DynamicMetadataConfig, FileConfig};
use crate::answer::MetadataFields;
use crate::keys::KeySource;
use crate::routes::{EXT_BINDING, EXT_GROUPS, EXT_SCOPES};

/// The validated module configuration.
#[derive(Debug)]
pub struct ModuleSettings {
    pub decision: DecisionSettings,
    /// The Envoy cluster each issuer's keys are fetched through (`None` for a `jwks_file`).
    pub clusters: Vec<Option<String>>,
    /// `module.dynamic_metadata`: the decision's fields set as Envoy dynamic metadata on every
    /// check.
    pub dynamic_metadata: MetadataFields,
}

/// Keys only the service reads, and why the module has no use for them.
const SERVICE_ONLY: &[(&str, &str)] = &[
    ("listen", "Envoy's own listeners receive the requests"),
    ("admin_listen", "Envoy's admin interface serves stats"),
    ("tls", "Envoy terminates TLS"),
    (
        "telemetry",
        "Envoy's own tracer traces the requests; certbound's decision is in its dynamic metadata",
    ),
    (
        "forward_auth",
        "Envoy's own listeners receive the requests (the HTTP authorization API is the service's)",
    ),
    ("reload", "Envoy replaces the filter configuration itself"),
    ("runtime", "the module runs on Envoy's worker threads"),
    ("log_format", "the module writes to Envoy's log"),
    (
        "idp_ca_file",
        "keys are fetched through an Envoy cluster, whose TLS settings apply",
    ),
    (
        "introspection",
        "the module does not introspect opaque tokens (use the ext_authz service for them)",
    ),
    (
        "limits.max_concurrent_checks",
        "checks run inline on Envoy's workers; Envoy's overload manager bounds load",
    ),
];

fn present(file: &FileConfig, key: &str) -> bool {
    match key {
        "listen" => file.listen.is_some(),
        "admin_listen" => file.admin_listen.is_some(),
        "tls" => file.tls.is_some(),
        "telemetry" => file.telemetry.is_some(),
        "forward_auth" => file.forward_auth.is_some(),
        "reload" => file.reload.is_some(),
        "runtime" => file.runtime.is_some(),
        "log_format" => file.log_format.is_some(),
        "idp_ca_file" => file.idp_ca_file.is_some(),
        "introspection" => file.introspection.is_some(),
        "limits.max_concurrent_checks" => file.limits.max_concurrent_checks.is_some(),
        _ => false,
    }
}

impl ModuleSettings {
    /// Parses and validates the filter's configuration text. `jwks_file` paths are relative to
    /// Envoy's working directory.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::validate(super::parse(text)?).map_err(|e| e.locate(text))
    }

    fn validate(file: FileConfig) -> Result<Self, ConfigError> {
        if let Some((key, why)) = SERVICE_ONLY.iter().find(|(key, _)| present(&file, key)) {
            return Err(ConfigError::new(
                *key,
                format!("only the ext_authz service reads this key ({why}); remove it"),
            ));
        }
        if file.issuers.is_empty() {
            return Err(ConfigError::new(
                "issuers",
                "at least one issuer is required",
            ));
        }
        let decision = file.decision_settings(None)?;
        let clusters = decision
            .key_sources
            .iter()
            .zip(&file.issuers)
            .enumerate()
            .map(
                |(i, ((_, source), issuer))| match (source, &issuer.cluster) {
                    (KeySource::File(_), None) => Ok(None),
                    (KeySource::File(_), Some(_)) => Err(ConfigError::new(
                        format!("issuers[{i}].cluster"),
                        "a jwks_file is read from disk; cluster is for jwks_uri and discovery",
                    )),
                    (_, Some(cluster)) if !cluster.is_empty() => Ok(Some(cluster.clone())),
                    (_, _) => Err(ConfigError::new(
                        format!("issuers[{i}].cluster"),
                        "required with jwks_uri or discovery: the Envoy cluster that reaches the \
                     IdP (the module fetches keys through Envoy)",
                    )),
                },
            )
            .collect::<Result<_, _>>()?;
        let dynamic_metadata = match file.module.as_ref().map(|m| &m.dynamic_metadata) {
            None | Some(DynamicMetadataConfig::All(true)) => MetadataFields::ALL,
            Some(DynamicMetadataConfig::All(false)) => MetadataFields::NONE,
            Some(DynamicMetadataConfig::Fields(names)) => {
                MetadataFields::named(names.iter().map(String::as_str)).map_err(|name| {
                    let at = names.iter().position(|n| n == name).unwrap_or_default();
                    ConfigError::new(
                        format!("module.dynamic_metadata[{at}]"),
                        format!(
                            "{name:?} is not a metadata field (one of {})",
                            MetadataFields::NAMES.join(", ")
                        ),
                    )
                })?
            }
        };
        Ok(Self {
            decision,
            clusters,
            dynamic_metadata,
        })
    }
}

/// A route's own requirements (`DynamicModuleFilterPerRoute.filter_config`), added to the
/// matching rule's exactly as the ext_authz service adds a route's `context_extensions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    /// Required scopes (all of them), added to the rule's.
    #[serde(default)]
    scopes: Vec<String>,
    /// Required groups, added to the rule's.
    #[serde(default)]
    groups: Vec<String>,
    /// `required`, `when_present` or `disabled`: replaces the rule's binding mode.
    binding: Option<String>,
}

/// A route's requirements, as the core's `context_extensions`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteSettings {
    pub extensions: HashMap<String, String>,
}

impl RouteSettings {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: RouteConfig = if text.trim().is_empty() {
            RouteConfig::default()
        } else {
            serde_yaml_ng::from_str(text)
                .map_err(|e| ConfigError::new("per-route config", e.to_string()))?
        };
        if let Some(bad) = config
            .scopes
            .iter()
            .chain(&config.groups)
            .find(|s| s.is_empty() || s.contains([' ', ',']))
        {
            return Err(ConfigError::new(
                "per-route config",
                format!("{bad:?}: scopes and groups must be non-empty words"),
            ));
        }
        if let Some(binding) = &config.binding
            && !["required", "when_present", "disabled"].contains(&binding.as_str())
        {
            return Err(ConfigError::new(
                "per-route config binding",
                format!("{binding:?}: expected required, when_present or disabled"),
            ));
        }
        let mut extensions = HashMap::new();
        if !config.scopes.is_empty() {
            extensions.insert(EXT_SCOPES.to_owned(), config.scopes.join(" "));
        }
        if !config.groups.is_empty() {
            extensions.insert(EXT_GROUPS.to_owned(), config.groups.join(" "));
        }
        if let Some(binding) = config.binding {
            extensions.insert(EXT_BINDING.to_owned(), binding);
        }
        Ok(Self { extensions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/jwks.json");

    fn issuer(extra: &str) -> String {
        format!(
            "issuers:\n  - issuer: https://idp.example.com\n    audiences: [https://api.example.com]\n{extra}"
        )
    }

    #[test]
    fn the_shared_schema_is_accepted() {
        let text = format!(
            "{}    cluster: idp\nleeway_seconds: 30\nbinding: {{mode: when_present}}\n\
             certificate: {{sources: [peer, xfcc]}}\npolicy:\n  rules:\n    - path: /healthz\n      allow_anonymous: true\n\
             upstream: {{claim_headers: {{sub: x-sub}}}}\ntoken_cache: {{max_entries: 10}}\nkeys: {{max_stale_seconds: 60}}\n",
            issuer("")
        );
        let settings = ModuleSettings::from_yaml(&text).expect("valid");
        assert_eq!(settings.clusters, [Some("idp".to_owned())]);
        assert_eq!(settings.decision.policy.leeway_seconds, 30);
        let file = issuer(&format!("    jwks_file: {JWKS}\n"));
        assert_eq!(
            ModuleSettings::from_yaml(&file).expect("valid").clusters,
            [None]
        );
    }

    #[test]
    fn json_is_accepted_as_envoy_gateway_hands_it_over() {
        let json = r#"{"issuers":[{"issuer":"https://idp.example.com","audiences":["a"],
            "jwks_uri":"https://idp.example.com/jwks","cluster":"idp"}],"certificate":{"sources":["peer"]}}"#;
        let settings = ModuleSettings::from_yaml(json).expect("JSON is YAML");
        assert_eq!(settings.clusters, [Some("idp".to_owned())]);
    }

    #[test]
    fn dynamic_metadata_is_every_field_unless_told_otherwise() {
        let base = format!("{}    cluster: idp\n", issuer(""));
        let fields = |extra: &str| {
            ModuleSettings::from_yaml(&format!("{base}{extra}"))
                .map(|settings| settings.dynamic_metadata)
        };
        let ok = |extra: &str| fields(extra).expect("valid");
        assert_eq!(ok(""), MetadataFields::ALL);
        assert_eq!(ok("module: {}\n"), MetadataFields::ALL);
        assert_eq!(
            ok("module: {dynamic_metadata: true}\n"),
            MetadataFields::ALL
        );
        assert_eq!(
            ok("module: {dynamic_metadata: false}\n"),
            MetadataFields::NONE
        );
        assert_eq!(ok("module: {dynamic_metadata: []}\n"), MetadataFields::NONE);
        assert_eq!(
            ok("module:\n  dynamic_metadata: [decision, reason, iss, rule]\n"),
            MetadataFields::named(["decision", "reason", "iss", "rule"]).expect("names")
        );
        let unknown =
            fields("module:\n  dynamic_metadata: [decision, subject]\n").expect_err("not a field");
        assert_eq!(unknown.key, "module.dynamic_metadata[1]");
        assert!(
            unknown
                .message
                .contains("\"subject\" is not a metadata field")
        );
        assert!(unknown.message.contains("x5t#S256"), "{}", unknown.message);
        assert!(fields("module: {dynamic_metadata: 1}\n").is_err());
        assert!(fields("module: {dynamic_metadat: false}\n").is_err());
    }

    #[test]
    fn service_only_keys_are_refused_by_name() {
        for (extra, key) in [
            ("listen: 0.0.0.0:50051\n", "listen"),
            ("admin_listen: ''\n", "admin_listen"),
            ("tls: {cert_file: a, key_file: b}\n", "tls"),
            ("reload: {watch: false}\n", "reload"),
            ("runtime: {worker_threads: 2}\n", "runtime"),
            ("forward_auth: {listen: 127.0.0.1:9292}\n", "forward_auth"),
            ("log_format: json\n", "log_format"),
            ("idp_ca_file: ca.pem\n", "idp_ca_file"),
            (
                "limits: {max_concurrent_checks: 10}\n",
                "limits.max_concurrent_checks",
            ),
            (
                "introspection: {endpoint: https://x/i, client_id: c, client_secret_env: S}\n",
                "introspection",
            ),
        ] {
            let text = format!("{}    cluster: idp\n{extra}", issuer(""));
            let error = ModuleSettings::from_yaml(&text).expect_err(key);
            assert_eq!(error.key, key, "{error}");
            assert!(
                error.message.contains("only the ext_authz service"),
                "{error}"
            );
        }
    }

    #[test]
    fn fetched_keys_need_a_cluster_and_files_refuse_one() {
        let error = ModuleSettings::from_yaml(&issuer("")).expect_err("no cluster");
        assert_eq!(error.key, "issuers[0].cluster");
        let text = issuer(&format!("    jwks_file: {JWKS}\n    cluster: idp\n"));
        assert_eq!(
            ModuleSettings::from_yaml(&text).expect_err("file").key,
            "issuers[0].cluster"
        );
        assert_eq!(
            ModuleSettings::from_yaml("policy: {}\n")
                .expect_err("none")
                .key,
            "issuers"
        );
    }

    #[test]
    fn route_settings_become_the_cores_context_extensions() {
        let route = RouteSettings::from_yaml(
            "scopes: [admin, write]\ngroups: [ops]\nbinding: when_present\n",
        )
        .expect("valid");
        assert_eq!(route.extensions[EXT_SCOPES], "admin write");
        assert_eq!(route.extensions[EXT_GROUPS], "ops");
        assert_eq!(route.extensions[EXT_BINDING], "when_present");
        assert_eq!(
            RouteSettings::from_yaml("").expect("empty"),
            RouteSettings::default()
        );
        assert!(RouteSettings::from_yaml("binding: sometimes\n").is_err());
        assert!(RouteSettings::from_yaml("scopes: ['a b']\n").is_err());
        assert!(RouteSettings::from_yaml("bogus: 1\n").is_err());
    }
}
