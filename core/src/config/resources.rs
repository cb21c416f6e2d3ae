//! `resources`: each protected resource validated, and its RFC 9728 metadata document built
//! once. What the document says is derived from what is enforced, and a configuration whose
//! document would contradict it (DPoP required while DPoP is off, an authorization server that
//! is not a configured issuer) is refused.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::ConfigError;
use super::schema::{FileConfig, ResourceConfig};
use crate::binding::BindingMode;
use crate::dpop::DpopPolicy;
use crate::path::{self, EscapedSlashes};
use crate::resource::{Resource, Resources, WELL_KNOWN_PREFIX, covers, split_identifier};
use crate::routes::{PathMatch, RoutePolicy};
use crate::token::IssuerPolicy;

/// What the resources' validation reads beyond their own keys.
pub(super) struct Enforced<'a> {
    pub issuers: &'a [IssuerPolicy],
    pub introspection_issuer: Option<&'a str>,
    pub routes: &'a RoutePolicy,
    pub binding: BindingMode,
    pub dpop: Option<&'a DpopPolicy>,
}

pub(super) fn validate(
    file: &FileConfig,
    enforced: &Enforced<'_>,
) -> Result<Resources, ConfigError> {
    let mut list: Vec<Arc<Resource>> = Vec::new();
    for (i, config) in file.resources.iter().enumerate() {
        let resource = validate_one(config, &|field| format!("resources[{i}].{field}"), enforced)?;
        let clash = |what: &str, field: &str| {
            ConfigError::new(
                format!("resources[{i}].{field}"),
                format!("another resource has the same {what}"),
            )
        };
        if list.iter().any(|r| r.id == resource.id) {
            return Err(clash("id", "id"));
        }
        if list.iter().any(|r| r.path_prefix == resource.path_prefix) {
            return Err(clash("path_prefix", "path_prefix"));
        }
        if list
            .iter()
            .any(|r| r.well_known_path == resource.well_known_path)
        {
            return Err(clash(
                "metadata path (RFC 9728 §3.1: the identifier's path after the host)",
                "id",
            ));
        }
        list.push(Arc::new(resource));
    }
    Ok(Resources { list })
}

/// An identifier clients compare byte for byte: a URL with https (or http to a loopback host,
/// for tests), no query, fragment or user information, and nothing a quoted challenge
/// parameter cannot carry.
fn check_identifier(id: &str, key: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::new(key, format!("{id:?} {why}"));
    let uri_char = |b: u8| b.is_ascii_graphic() && !b"\"\\<>^`{|}".contains(&b);
    if !id.bytes().all(uri_char) {
        return Err(bad(
            "is not a URL (spaces, quotes or other characters a URL cannot hold)",
        ));
    }
    let url = url::Url::parse(id).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if split_identifier(id).is_none() || url.host().is_none() {
        return Err(bad("is not an absolute URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() || id.contains(['?', '#']) {
        return Err(bad(
            "must have no query or fragment (RFC 9728 §1.2, RFC 8707 §2)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry user information"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(bad(
            "must be an https URL (http only to a loopback host, for tests)",
        )),
    }
}

fn validate_one(
    config: &ResourceConfig,
    key: &dyn Fn(&str) -> String,
    enforced: &Enforced<'_>,
) -> Result<Resource, ConfigError> {
    check_identifier(&config.id, &key("id"))?;
    let (_, id_path) = split_identifier(&config.id).unwrap_or_default();
    // The metadata path is the identifier's path under the well-known prefix: it must be a path
    // requests can take (rules see only canonical paths).
    if !id_path.is_empty() && path::routable(id_path, EscapedSlashes::Reject) != Ok(id_path) {
        return Err(ConfigError::new(
            key("id"),
            format!(
                "{:?}: its path must be canonical (no dot-segments, repeated slashes, `;` \
                 segments or percent-encoded unreserved characters)",
                config.id
            ),
        ));
    }
    let path_prefix = match &config.path_prefix {
        Some(prefix) => prefix.clone(),
        None if id_path.is_empty() => "/".to_owned(),
        None => id_path.to_owned(),
    };
    let canonical = path::canonical(&path_prefix, EscapedSlashes::Reject);
    if !path_prefix.starts_with('/') || canonical.as_deref() != Ok(path_prefix.as_str()) {
        return Err(ConfigError::new(
            key("path_prefix"),
            format!(
                "{path_prefix:?} must be a canonical path starting with / (no dot-segments, \
                 repeated slashes, query or percent-encoded unreserved characters)"
            ),
        ));
    }
    if covers(WELL_KNOWN_PREFIX, &path_prefix) {
        return Err(ConfigError::new(
            key("path_prefix"),
            format!("{WELL_KNOWN_PREFIX} is where the metadata is served, not a resource"),
        ));
    }
    let mut allowed: Vec<&str> = enforced.issuers.iter().map(|i| &*i.issuer).collect();
    allowed.extend(enforced.introspection_issuer);
    let authorization_servers = match &config.authorization_servers {
        Some(servers) => {
            if servers.is_empty() {
                return Err(ConfigError::new(
                    key("authorization_servers"),
                    "must name at least one authorization server (or leave it out: every \
                     configured issuer)",
                ));
            }
            if let Some(unknown) = servers.iter().find(|s| !allowed.contains(&s.as_str())) {
                return Err(ConfigError::new(
                    key("authorization_servers"),
                    format!(
                        "{unknown:?} is not a configured issuer (issuers[].issuer or \
                         introspection.issuer): clients would get tokens certbound refuses"
                    ),
                ));
            }
            Some(servers.clone())
        }
        None => None,
    };
    let published: Vec<String> = match &authorization_servers {
        Some(servers) => servers.clone(),
        None => allowed.iter().map(|s| (*s).to_owned()).collect(),
    };
    if published.is_empty() {
        return Err(ConfigError::new(
            key("authorization_servers"),
            "no issuer is configured to name; set issuers or introspection.issuer",
        ));
    }
    let word = |s: &String| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    };
    let scopes = match &config.scopes_supported {
        Some(scopes) => {
            if !scopes.iter().all(word) {
                return Err(ConfigError::new(
                    key("scopes_supported"),
                    "scopes must be non-empty words (RFC 6749 §3.3)",
                ));
            }
            scopes.clone()
        }
        None => required_scopes(enforced.routes, &path_prefix),
    };
    let audiences = match &config.audiences {
        None => vec![config.id.clone()],
        Some(audiences) if audiences.iter().any(String::is_empty) => {
            return Err(ConfigError::new(
                key("audiences"),
                "must not hold an empty audience",
            ));
        }
        Some(audiences) => audiences.clone(),
    };
    if config.dpop_bound_access_tokens_required && enforced.dpop.is_none() {
        return Err(ConfigError::new(
            key("dpop_bound_access_tokens_required"),
            "true while dpop.enabled is false: no token could be accepted; enable DPoP or \
             remove the key",
        ));
    }
    let mut document = Map::new();
    document.insert("resource".into(), Value::String(config.id.clone()));
    document.insert("authorization_servers".into(), strings(&published));
    if !scopes.is_empty() {
        document.insert("scopes_supported".into(), strings(&scopes));
    }
    document.insert(
        "bearer_methods_supported".into(),
        strings(&["header".to_owned()]),
    );
    // Where DPoP is required a certificate-bound token is refused (`dpop_required`): a client
    // that trusts the document must not pick that binding.
    document.insert(
        "tls_client_certificate_bound_access_tokens".into(),
        Value::Bool(
            verifies_certificates(enforced, &path_prefix)
                && !config.dpop_bound_access_tokens_required,
        ),
    );
    if let Some(dpop) = enforced.dpop {
        let algs: Vec<String> = dpop
            .algorithms
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect();
        document.insert("dpop_signing_alg_values_supported".into(), strings(&algs));
        document.insert(
            "dpop_bound_access_tokens_required".into(),
            Value::Bool(config.dpop_bound_access_tokens_required),
        );
    }
    if let Some(name) = &config.resource_name {
        if name.trim().is_empty() {
            return Err(ConfigError::new(key("resource_name"), "must not be empty"));
        }
        document.insert("resource_name".into(), Value::String(name.clone()));
    }
    for (field, value) in [
        ("resource_documentation", &config.resource_documentation),
        ("resource_policy_uri", &config.resource_policy_uri),
        ("resource_tos_uri", &config.resource_tos_uri),
    ] {
        if let Some(url) = value {
            let parsed = url::Url::parse(url).ok();
            if !parsed.is_some_and(|u| matches!(u.scheme(), "https" | "http")) {
                return Err(ConfigError::new(
                    key(field),
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            document.insert(field.into(), Value::String(url.clone()));
        }
    }
    let document = Value::Object(document).to_string();
    Resource::new(
        config.id.clone(),
        path_prefix,
        authorization_servers,
        audiences,
        config.dpop_bound_access_tokens_required,
        document,
    )
    .ok_or_else(|| ConfigError::new(key("id"), "its metadata path cannot be derived"))
}

fn strings(values: &[String]) -> Value {
    Value::Array(values.iter().cloned().map(Value::String).collect())
}

/// Whether a rule may apply to requests under `prefix` (a regex cannot be told: left out).
fn may_apply(path: Option<&PathMatch>, prefix: &str) -> bool {
    match path {
        None => true,
        Some(PathMatch::Exact(exact)) => covers(prefix, exact),
        Some(PathMatch::Prefix(rule)) => covers(prefix, rule) || prefix.starts_with(rule.as_str()),
        Some(PathMatch::Regex(_)) => false,
    }
}

/// The scopes rules under the prefix and the default require, in order, once each.
fn required_scopes(routes: &RoutePolicy, prefix: &str) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    let rules = routes
        .rules
        .iter()
        .filter(|r| may_apply(r.path.as_ref(), prefix))
        .map(|r| &r.requirements);
    for requirements in rules.chain([&routes.default]) {
        for scope in &requirements.scopes {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
    }
    scopes
}

/// Whether certificate-bound tokens are verified anywhere under the prefix (RFC 8705 §3.4's
/// "support").
fn verifies_certificates(enforced: &Enforced<'_>, prefix: &str) -> bool {
    enforced.binding != BindingMode::Disabled
        || enforced.routes.rules.iter().any(|r| {
            may_apply(r.path.as_ref(), prefix)
                && r.requirements
                    .binding
                    .is_some_and(|b| b != BindingMode::Disabled)
        })
}
