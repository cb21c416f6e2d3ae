//! Route policy: which requirements apply to a request (first matching rule, else the default),
//! Envoy's per-route `context_extensions`, and the scope and group checks.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde_json::{Map, Value};

use crate::binding::BindingMode;
use crate::decision::DenyReason;
use crate::path::{self, EscapedSlashes};
use crate::request::AccessRequest;

/// `context_extensions` keys that Envoy routes may set (`check_settings.context_extensions`).
pub const EXT_SCOPES: &str = "certbound.scopes";
pub const EXT_GROUPS: &str = "certbound.groups";
pub const EXT_BINDING: &str = "certbound.binding";

/// How a rule matches a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com` (not `example.com` itself).
    Suffix(String),
}

impl HostMatch {
    pub fn parse(pattern: &str) -> Self {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => Self::Suffix(format!(".{suffix}")),
            None => Self::Exact(pattern),
        }
    }

    /// Whether an `:authority` (host, maybe with a port) matches, case-insensitively. A
    /// fully qualified name's trailing dot (`admin.example.com.`) names the same host.
    fn matches(&self, authority: &str) -> bool {
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                host
            }
            _ => authority,
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        match self {
            Self::Exact(exact) => host == *exact,
            Self::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// How a rule matches a path (the query string is never part of the match).
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole path must match.
    Regex(CasedRegex),
}

/// A rule's `path_regex`, anchored, and the same ignoring ASCII case.
#[derive(Clone, Debug)]
pub struct CasedRegex {
    exact: Regex,
    folded: Regex,
}

impl CasedRegex {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            exact: Regex::new(&format!("^(?:{pattern})$"))?,
            folded: Regex::new(&format!("(?i-u)^(?:{pattern})$"))
                .or_else(|_| Regex::new(&format!("(?i)^(?:{pattern})$")))?,
        })
    }
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Self::Regex(regex) => regex.exact.is_match(path),
        }
    }

    /// As an upstream that routes without regard to ASCII case matches (Express, ASP.NET Core
    /// by default).
    fn matches_folded(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path.eq_ignore_ascii_case(exact),
            Self::Prefix(prefix) => path
                .as_bytes()
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
            Self::Regex(regex) => regex.folded.is_match(path),
        }
    }
}

/// What a request must satisfy beyond a valid, bound token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// No token needed (health checks); claim headers are still stripped.
    pub allow_anonymous: bool,
    /// All of these must be in the token's scopes.
    pub scopes: Vec<String>,
    /// Any of these (all, with `groups_match_all`) must be in the token's groups.
    pub groups: Vec<String>,
    pub groups_match_all: bool,
    /// Overrides the global binding mode.
    pub binding: Option<BindingMode>,
    /// When not empty, the token's issuer must be one of these.
    pub issuers: Vec<String>,
    /// When not empty, the token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// RFC 9470 step-up: the user authentication the token must attest.
    pub step_up: Option<std::sync::Arc<StepUp>>,
}

/// RFC 9470: how recent and how strong the user's authentication must be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepUp {
    /// The token's `acr` must be one of these (when not empty).
    pub acr_values: Vec<String>,
    /// The token's `auth_time` must be no older than this.
    pub max_age_seconds: Option<i64>,
    /// The challenge's parameters, built once: `acr_values="a b", max_age="300"`.
    pub challenge: String,
}

impl StepUp {
    pub fn new(acr_values: Vec<String>, max_age_seconds: Option<i64>) -> Self {
        let mut params = Vec::new();
        if !acr_values.is_empty() {
            params.push(format!(r#"acr_values="{}""#, acr_values.join(" ")));
        }
        if let Some(max_age) = max_age_seconds {
            params.push(format!(r#"max_age="{max_age}""#));
        }
        Self {
            acr_values,
            max_age_seconds,
            challenge: params.join(", "),
        }
    }

    /// Whether the token's `acr` and `auth_time` meet the requirement at `now`.
    pub fn check(&self, claims: &Map<String, Value>, now: i64) -> Result<(), DenyReason> {
        if !self.acr_values.is_empty() {
            let acr = claims.get("acr").and_then(Value::as_str);
            if !acr.is_some_and(|acr| self.acr_values.iter().any(|a| a == acr)) {
                return Err(DenyReason::AcrInsufficient);
            }
        }
        if let Some(max_age) = self.max_age_seconds {
            // RFC 9470 §4: `auth_time` is a JSON number of seconds (OIDC Core §2); a float is
            // accepted and truncated, anything else counts as missing.
            let auth_time = match claims.get("auth_time") {
                Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
                _ => None,
            };
            let Some(auth_time) = auth_time else {
                return Err(DenyReason::AuthTimeMissing);
            };
            if now.saturating_sub(auth_time) > max_age {
                return Err(DenyReason::AuthTimeTooOld);
            }
        }
        Ok(())
    }
}

/// One route rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: Arc<str>,
    pub hosts: Vec<HostMatch>,
    pub path: Option<PathMatch>,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    pub requirements: Requirements,
}

impl Rule {
    /// A rule for `GET` also matches `HEAD`: upstreams answer `HEAD` with their `GET` handler.
    fn matches(&self, request: &AccessRequest, path: &str) -> bool {
        self.matches_with(request, path, PathMatch::matches)
    }

    fn matches_with(
        &self,
        request: &AccessRequest,
        path: &str,
        path_matches: fn(&PathMatch, &str) -> bool,
    ) -> bool {
        let method = request.method.as_str();
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(&request.host)))
            && self.path.as_ref().is_none_or(|p| path_matches(p, path))
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| {
                    m.eq_ignore_ascii_case(method)
                        || (m == "GET" && method.eq_ignore_ascii_case("HEAD"))
                }))
    }
}

/// The route table: rules in order, the default, and how claims are read.
#[derive(Clone, Debug, Default)]
pub struct RoutePolicy {
    pub rules: Vec<Rule>,
    pub default: Requirements,
    /// Claim holding the groups (default `groups`).
    pub groups_claim: String,
    /// Let CORS preflights (`OPTIONS` with `origin` and `access-control-request-method`) through
    /// without a token.
    pub allow_cors_preflight: bool,
    /// `%2F` and `%5C` in a path: refused (default) or kept inside their segment.
    pub escaped_slashes: EscapedSlashes,
}

/// The requirements chosen for one request, and the name of the rule that gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<'a> {
    /// Shared with the configuration (no copy per request).
    pub rule: Arc<str>,
    /// The rule's own unless the route's `context_extensions` add to them.
    pub requirements: Cow<'a, Requirements>,
}

/// The name of the requirements that apply when no rule matches.
static DEFAULT_RULE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("default"));

impl RoutePolicy {
    /// First matching rule (else the default), with the route's `context_extensions` applied:
    /// their scopes and groups add to the rule's, their binding mode replaces the rule's.
    /// Rules see only a canonical path ([`path::routable`]); any other spelling is refused
    /// (`path_unsafe`), and so is a path whose `;` parameters would change the rule for an
    /// upstream that drops them (Tomcat, Spring).
    pub fn select(&self, request: &AccessRequest) -> Result<Applied<'_>, DenyReason> {
        let path = path::routable(&request.path, self.escaped_slashes)
            .map_err(|_| DenyReason::PathUnsafe)?;
        self.select_canonical(request, path)
    }

    /// [`RoutePolicy::select`] for a request whose routable path ([`path::routable`]) the
    /// caller already has.
    pub fn select_canonical(
        &self,
        request: &AccessRequest,
        path: &str,
    ) -> Result<Applied<'_>, DenyReason> {
        let index = self.rule_index(request, path);
        if path.contains(';') && self.rule_index(request, &path::without_parameters(path)) != index
        {
            return Err(DenyReason::PathUnsafe);
        }
        // An upstream that ignores case (Express, ASP.NET Core) serves `/ADMIN/x` from its
        // `/admin` handler: a path whose rule depends on its case is refused.
        let folded = self
            .rules
            .iter()
            .position(|r| r.matches_with(request, path, PathMatch::matches_folded));
        if folded != index {
            return Err(DenyReason::PathUnsafe);
        }
        let (rule, mut requirements) = match index.map(|i| &self.rules[i]) {
            Some(rule) => (Arc::clone(&rule.name), Cow::Borrowed(&rule.requirements)),
            None => (Arc::clone(&DEFAULT_RULE), Cow::Borrowed(&self.default)),
        };
        let ext = &request.context_extensions;
        if let Some(scopes) = ext.get(EXT_SCOPES) {
            requirements.to_mut().scopes.extend(split_list(scopes));
        }
        if let Some(groups) = ext.get(EXT_GROUPS) {
            requirements.to_mut().groups.extend(split_list(groups));
        }
        if let Some(binding) = ext.get(EXT_BINDING) {
            // A route asking for an unknown mode is a configuration error: fail closed.
            requirements.to_mut().binding =
                Some(parse_binding(binding).ok_or(DenyReason::PolicyInvalid)?);
        }
        if self.allow_cors_preflight && request.cors_preflight && !requirements.allow_anonymous {
            requirements.to_mut().allow_anonymous = true;
        }
        Ok(Applied { rule, requirements })
    }
}

impl RoutePolicy {
    /// The first rule matching a request on `path` (a canonical path), by position.
    pub fn rule_index(&self, request: &AccessRequest, path: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(request, path))
    }

    /// The name of the rule a request on `path` (already resolved) falls under, `default` when
    /// none matches: what the differential tests compare an upstream's view with.
    pub fn rule_name(&self, request: &AccessRequest, path: &str) -> &str {
        self.rule_index(request, path)
            .map_or("default", |i| &*self.rules[i].name)
    }
}

fn split_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub fn parse_binding(value: &str) -> Option<BindingMode> {
    match value.trim() {
        "required" => Some(BindingMode::Required),
        "when_present" => Some(BindingMode::WhenPresent),
        "disabled" => Some(BindingMode::Disabled),
        _ => None,
    }
}

/// The token's scopes: the space-separated `scope` claim, else the `scp` array (or string).
pub fn token_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(scope)), _) => scope.split(' ').filter(|s| !s.is_empty()).collect(),
        (_, Some(Value::Array(scp))) => scp.iter().filter_map(Value::as_str).collect(),
        (_, Some(Value::String(scp))) => scp.split(' ').filter(|s| !s.is_empty()).collect(),
        _ => Vec::new(),
    }
}

/// The token's groups: strings, or `{id, name}` objects (either matches).
pub fn token_groups<'c>(claims: &'c Map<String, Value>, claim: &str) -> Vec<&'c str> {
    let entry = |v: &'c Value| -> Vec<&'c str> {
        match v {
            Value::String(s) => vec![s.as_str()],
            Value::Object(o) => ["id", "name"]
                .iter()
                .filter_map(|k| o.get(*k).and_then(Value::as_str))
                .collect(),
            _ => Vec::new(),
        }
    };
    match claims.get(claim) {
        Some(Value::Array(items)) => items.iter().flat_map(entry).collect(),
        Some(single) => entry(single),
        None => Vec::new(),
    }
}

/// Scopes the token lacks (all required ones must be present).
pub fn missing_scopes<'r>(
    requirements: &'r Requirements,
    claims: &Map<String, Value>,
) -> Vec<&'r str> {
    if requirements.scopes.is_empty() {
        return Vec::new();
    }
    let have = token_scopes(claims);
    requirements
        .scopes
        .iter()
        .filter(|s| !have.contains(&s.as_str()))
        .map(String::as_str)
        .collect()
}

/// Whether the token's groups satisfy the requirement (any-of, or all-of).
pub fn groups_satisfied(
    requirements: &Requirements,
    claims: &Map<String, Value>,
    claim: &str,
) -> bool {
    if requirements.groups.is_empty() {
        return true;
    }
    let have = token_groups(claims, claim);
    let has = |g: &String| have.contains(&g.as_str());
    if requirements.groups_match_all {
        requirements.groups.iter().all(has)
    } else {
        requirements.groups.iter().any(has)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(method: &str, host: &str, path: &str) -> AccessRequest {
        AccessRequest {
            method: method.into(),
            host: host.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    fn rule(name: &str, hosts: &[&str], path: Option<PathMatch>, methods: &[&str]) -> Rule {
        Rule {
            name: name.into(),
            hosts: hosts.iter().map(|h| HostMatch::parse(h)).collect(),
            path,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            requirements: Requirements {
                scopes: vec![name.into()],
                ..Default::default()
            },
        }
    }

    fn table() -> RoutePolicy {
        RoutePolicy {
            rules: vec![
                rule(
                    "health",
                    &[],
                    Some(PathMatch::Exact("/healthz".into())),
                    &[],
                ),
                rule(
                    "admin",
                    &["admin.example.com"],
                    Some(PathMatch::Prefix("/".into())),
                    &[],
                ),
                rule("tenants", &["*.tenants.example.com"], None, &["GET"]),
                rule(
                    "items",
                    &[],
                    Some(PathMatch::Regex(CasedRegex::new("/items/[0-9]+").unwrap())),
                    &["PUT", "DELETE"],
                ),
            ],
            default: Requirements {
                scopes: vec!["default".into()],
                ..Default::default()
            },
            groups_claim: "groups".into(),
            allow_cors_preflight: false,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }

    fn selected(method: &str, host: &str, path: &str) -> String {
        table()
            .select(&request(method, host, path))
            .unwrap()
            .rule
            .to_string()
    }

    #[test]
    fn rules_match_only_a_canonical_path() {
        assert_eq!(selected("PUT", "h", "/items/7"), "items");
        assert_eq!(selected("PUT", "h", "/items/7?x=/../y"), "items");
        for spelling in [
            "//items/7",
            "/./items/7",
            "/%69tems/7",
            "/x/../items/7",
            "/healthz/../items/7",
            "/healthz/%2e%2e/items//7",
            "//healthz",
            "/healthz/..%2fitems/7",
            "/healthz/..;/items/7",
            "/../items/7",
            "/;/items/7",
            "/healthz#/../items/7",
        ] {
            assert_eq!(
                table().select(&request("PUT", "h", spelling)).err(),
                Some(DenyReason::PathUnsafe),
                "{spelling}"
            );
        }
    }

    /// Express and ASP.NET Core route `/ADMIN/x` to their `/admin` handler.
    #[test]
    fn a_path_whose_rule_depends_on_its_case_is_refused() {
        let policy = RoutePolicy {
            rules: vec![
                rule(
                    "public",
                    &[],
                    Some(PathMatch::Prefix("/public/".into())),
                    &[],
                ),
                rule("admin", &[], Some(PathMatch::Prefix("/admin".into())), &[]),
                rule(
                    "item",
                    &[],
                    Some(PathMatch::Regex(CasedRegex::new("/items/[0-9]+").unwrap())),
                    &[],
                ),
            ],
            ..Default::default()
        };
        let at = |path: &str| {
            let req = AccessRequest {
                method: "GET".into(),
                path: path.into(),
                ..Default::default()
            };
            policy.select(&req).map(|a| a.rule.to_string())
        };
        assert_eq!(at("/admin/x").unwrap(), "admin");
        assert_eq!(at("/items/7").unwrap(), "item");
        for path in ["/ADMIN/x", "/Admin/x", "/PUBLIC/x", "/Items/7"] {
            assert_eq!(at(path), Err(DenyReason::PathUnsafe), "{path}");
        }
        // Case that changes no rule is no concern.
        assert_eq!(at("/public/ReadMe").unwrap(), "public");
        assert_eq!(at("/Other").unwrap(), "default");
    }

    #[test]
    fn parameters_that_would_change_the_rule_are_refused() {
        // `/healthz;x` is not `/healthz` for certbound, but is for Tomcat: refused.
        assert_eq!(
            table().select(&request("GET", "h", "/healthz;x")).err(),
            Some(DenyReason::PathUnsafe)
        );
        assert_eq!(
            table().select(&request("PUT", "h", "/items;v=2/7")).err(),
            Some(DenyReason::PathUnsafe)
        );
        // The same rule either way: decided.
        assert_eq!(selected("PUT", "h", "/other;v=2/7;x"), "default");
        assert_eq!(selected("GET", "admin.example.com", "/a;b/c"), "admin");
    }

    #[test]
    fn a_get_rule_covers_head_and_a_trailing_dot_names_the_host() {
        let mut t = table();
        t.rules[3].methods = vec!["GET".into()];
        assert_eq!(
            t.select(&request("HEAD", "h", "/items/1")).unwrap().rule,
            "items".into()
        );
        assert_eq!(selected("GET", "admin.example.com.", "/x"), "admin");
        assert_eq!(selected("GET", "ADMIN.example.com.:8443", "/x"), "admin");
    }

    #[test]
    fn first_matching_rule_wins_else_the_default() {
        assert_eq!(selected("GET", "api.example.com", "/healthz"), "health");
        assert_eq!(selected("GET", "admin.example.com", "/healthz"), "health");
        assert_eq!(selected("GET", "admin.example.com", "/x"), "admin");
        assert_eq!(selected("GET", "api.example.com", "/x"), "default");
    }

    #[test]
    fn paths_match_without_the_query() {
        assert_eq!(selected("GET", "api", "/healthz?verbose=1"), "health");
        assert_eq!(selected("GET", "api", "/healthz/more"), "default");
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard_suffix_ignoring_port_and_case() {
        assert_eq!(selected("GET", "ADMIN.example.com:8443", "/x"), "admin");
        assert_eq!(selected("GET", "a.tenants.example.com", "/x"), "tenants");
        assert_eq!(
            selected("GET", "a.b.tenants.example.com:443", "/x"),
            "tenants"
        );
        assert_eq!(selected("GET", "tenants.example.com", "/x"), "default");
        assert_eq!(selected("GET", "evil-tenants.example.com", "/x"), "default");
    }

    #[test]
    fn methods_and_regexes_must_both_match() {
        assert_eq!(selected("PUT", "api", "/items/42"), "items");
        assert_eq!(selected("delete", "api", "/items/42"), "items");
        assert_eq!(selected("GET", "api", "/items/42"), "default");
        assert_eq!(selected("PUT", "api", "/items/42/x"), "default");
        assert_eq!(selected("POST", "a.tenants.example.com", "/x"), "default");
    }

    #[test]
    fn context_extensions_add_scopes_and_groups_and_replace_binding() {
        let mut req = request("GET", "api", "/healthz");
        req.context_extensions
            .insert(EXT_SCOPES.into(), "a b,c".into());
        req.context_extensions
            .insert(EXT_GROUPS.into(), "g1".into());
        req.context_extensions
            .insert(EXT_BINDING.into(), "when_present".into());
        let policy = table();
        let applied = policy.select(&req).unwrap();
        assert_eq!(applied.requirements.scopes, ["health", "a", "b", "c"]);
        assert_eq!(applied.requirements.groups, ["g1"]);
        assert_eq!(applied.requirements.binding, Some(BindingMode::WhenPresent));
        req.context_extensions
            .insert(EXT_BINDING.into(), "sometimes".into());
        assert_eq!(table().select(&req).unwrap_err(), DenyReason::PolicyInvalid);
    }

    #[test]
    fn cors_preflight_is_anonymous_only_when_enabled() {
        let mut req = request("OPTIONS", "api", "/x");
        req.cors_preflight = true;
        assert!(!table().select(&req).unwrap().requirements.allow_anonymous);
        let mut t = table();
        t.allow_cors_preflight = true;
        assert!(t.select(&req).unwrap().requirements.allow_anonymous);
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let r = Requirements {
            scopes: vec!["read".into(), "write".into()],
            ..Default::default()
        };
        let claims = |v: Value| v.as_object().unwrap().clone();
        assert!(missing_scopes(&r, &claims(json!({"scope": "read  write admin"}))).is_empty());
        assert_eq!(
            missing_scopes(&r, &claims(json!({"scope": "read"}))),
            ["write"]
        );
        assert!(missing_scopes(&r, &claims(json!({"scp": ["write", "read"]}))).is_empty());
        assert_eq!(missing_scopes(&r, &claims(json!({}))), ["read", "write"]);
    }

    #[test]
    fn groups_are_strings_or_id_name_objects_any_or_all() {
        let claims = json!({"groups": ["eng", {"id": "g-42", "name": "ops"}], "roles": "admin"});
        let claims = claims.as_object().unwrap();
        let any = |groups: &[&str], all: bool| Requirements {
            groups: groups.iter().map(|g| g.to_string()).collect(),
            groups_match_all: all,
            ..Default::default()
        };
        assert!(groups_satisfied(
            &any(&["ops", "nope"], false),
            claims,
            "groups"
        ));
        assert!(groups_satisfied(&any(&["g-42"], false), claims, "groups"));
        assert!(!groups_satisfied(&any(&["nope"], false), claims, "groups"));
        assert!(groups_satisfied(
            &any(&["eng", "ops"], true),
            claims,
            "groups"
        ));
        assert!(!groups_satisfied(
            &any(&["eng", "nope"], true),
            claims,
            "groups"
        ));
        assert!(groups_satisfied(&any(&["admin"], false), claims, "roles"));
        assert!(groups_satisfied(&any(&[], true), claims, "groups"));
    }
}
