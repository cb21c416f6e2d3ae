//! Configuration: a YAML file plus `CERTBOUND_<KEY>` environment overrides, validated into the
//! settings the rest of the program is built from. Unknown keys are errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certbound_core::jwa::Algorithm;
use serde::Deserialize;

use crate::introspection::{AuthMethod, IntrospectionSettings, Secret};
use crate::keys::{KeySource, KeyTiming, Readiness};
use certbound_core::certificate::CertificateCache;
use certbound_core::routes::{HostMatch, PathMatch};
use certbound_core::{
    BindingMode, CertificateSource, IntrospectionPolicy, IssuerPolicy, Policy, Requirements,
    RoutePolicy, Rule, UpstreamPolicy,
};

/// Top-level keys that `CERTBOUND_<KEY>` may override (nested keys use `__`: `BINDING__MODE`).
const ENV_OVERRIDES: &[&str] = &[
    "listen",
    "admin_listen",
    "idp_ca_file",
    "leeway_seconds",
    "log_format",
    "binding__mode",
    "limits__max_token_bytes",
];

/// A configuration problem, naming the offending key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The configuration file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// JWT issuers; may be empty when every token is introspected.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Opaque tokens (and optionally JWTs) are checked by RFC 7662 introspection.
    pub introspection: Option<IntrospectionConfig>,
    /// Extra CA certificates (PEM) trusted for the IdP (discovery, JWKS, introspection).
    pub idp_ca_file: Option<PathBuf>,
    /// Admin HTTP listener: `/metrics`, `/healthz`, `/readyz`; empty to turn it off.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// TLS on the gRPC listener (Envoy to certbound).
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default)]
    pub binding: BindingConfig,
    #[serde(default)]
    pub certificate: CertificateConfig,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// Local JWKS file (demo, air-gapped setups).
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL; without it and `jwks_file`, OIDC discovery at `{issuer}/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    /// Allowed algorithms; default every asymmetric one.
    pub algorithms: Option<Vec<String>>,
    /// `at+jwt` to require RFC 9068 `typ`.
    pub require_typ: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, Envoy must present a client certificate issued by this CA (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// Validated TLS settings for the gRPC listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the configuration file changes (SIGHUP always reloads).
    #[serde(default = "yes")]
    pub watch: bool,
    #[serde(default = "default_poll")]
    pub poll_interval_seconds: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval_seconds: default_poll(),
        }
    }
}

/// The async runtime.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads: 1 (the default) is the single-threaded scheduler, the most checks per
    /// CPU-second; more use the work-stealing scheduler; 0 means one per CPU the process may use.
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
}

fn default_worker_threads() -> usize {
    1
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            worker_threads: default_worker_threads(),
        }
    }
}

/// The verified-token cache (JWTs): a hit skips signature and claim checks, never the binding.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// 0 turns the cache off.
    #[serde(default = "default_token_cache_entries")]
    pub max_entries: usize,
    /// Longest an entry lives; never past the token's `exp` either.
    #[serde(default = "default_token_cache_ttl")]
    pub ttl_seconds: u64,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_token_cache_entries(),
            ttl_seconds: default_token_cache_ttl(),
        }
    }
}

fn default_token_cache_entries() -> usize {
    100_000
}

fn default_token_cache_ttl() -> u64 {
    300
}

fn default_poll() -> u64 {
    5
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The endpoint; without it, `introspection_endpoint` from `issuer`'s discovery document.
    pub endpoint: Option<String>,
    /// The authorization server: discovery source, and (with `check_issuer`) the required `iss`.
    pub issuer: Option<String>,
    #[serde(default = "yes")]
    pub check_issuer: bool,
    /// When not empty, the answer's `aud` must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    pub client_id: String,
    /// File holding the client secret (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// Introspect JWTs too, not only tokens that are not three-part JWTs.
    #[serde(default)]
    pub introspect_jwts: bool,
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl_seconds: u64,
    #[serde(default = "default_inactive_ttl")]
    pub inactive_cache_ttl_seconds: u64,
    #[serde(default = "default_cache_entries")]
    pub cache_max_entries: usize,
    #[serde(default = "default_introspection_timeout")]
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    #[serde(default)]
    pub mode: BindingMode,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    #[serde(default = "default_sources")]
    pub sources: Vec<CertificateSource>,
    /// With `xfcc`: use the element added by this proxy identity (`By=`), not the last one.
    pub xfcc_by: Option<String>,
}

impl Default for CertificateConfig {
    fn default() -> Self {
        Self {
            sources: default_sources(),
            xfcc_by: None,
        }
    }
}

/// Route rules and how denials are shown.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Checked in order; the first match applies, else `default`.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub default: RequirementsConfig,
    /// Claim holding the groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// CORS preflights pass without a token.
    #[serde(default)]
    pub allow_cors_preflight: bool,
    /// Send the deny reason to the client in `x-certbound-reason` (off: it helps attackers too).
    #[serde(default)]
    pub reason_header: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Option<String>,
    /// Exact hosts, or `*.example.com`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Exact path (the query string is never matched).
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    /// A regex that must match the whole path.
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(flatten)]
    pub requirements: RequirementsConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RequirementsConfig {
    #[serde(default)]
    pub allow_anonymous: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// All `groups` instead of any one.
    #[serde(default)]
    pub match_all: bool,
    pub binding: Option<BindingMode>,
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
}

impl RequirementsConfig {
    fn validate(self, key: &str, issuers: &[IssuerPolicy]) -> Result<Requirements, ConfigError> {
        if let Some(unknown) = self
            .issuers
            .iter()
            .find(|i| !issuers.iter().any(|p| &p.issuer == *i))
        {
            return Err(ConfigError::new(
                format!("{key}.issuers"),
                format!("{unknown:?} is not a configured issuer"),
            ));
        }
        if self
            .scopes
            .iter()
            .chain(&self.groups)
            .any(|s| s.is_empty() || s.contains(' '))
        {
            return Err(ConfigError::new(
                key,
                "scopes and groups must be non-empty words",
            ));
        }
        Ok(Requirements {
            allow_anonymous: self.allow_anonymous,
            scopes: self.scopes,
            groups: self.groups,
            groups_match_all: self.match_all,
            binding: self.binding,
            issuers: self.issuers,
            audiences: self.audiences,
        })
    }
}

impl PolicyConfig {
    fn validate(self, issuers: &[IssuerPolicy]) -> Result<RoutePolicy, ConfigError> {
        let mut rules = Vec::new();
        for (i, rule) in self.rules.into_iter().enumerate() {
            let key = format!("policy.rules[{i}]");
            let path = match (rule.path, rule.path_prefix, rule.path_regex) {
                (None, None, None) => None,
                (Some(exact), None, None) => Some(PathMatch::Exact(exact)),
                (None, Some(prefix), None) => Some(PathMatch::Prefix(prefix)),
                (None, None, Some(pattern)) => {
                    let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                        ConfigError::new(format!("{key}.path_regex"), e.to_string())
                    })?;
                    Some(PathMatch::Regex(regex))
                }
                _ => {
                    return Err(ConfigError::new(
                        format!("{key}.path"),
                        "set one of path, path_prefix, path_regex",
                    ));
                }
            };
            rules.push(Rule {
                name: rule.name.unwrap_or_else(|| format!("rules[{i}]")),
                hosts: rule.hosts.iter().map(|h| HostMatch::parse(h)).collect(),
                path,
                methods: rule
                    .methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase())
                    .collect(),
                requirements: rule.requirements.validate(&key, issuers)?,
            });
        }
        Ok(RoutePolicy {
            rules,
            default: self.default.validate("policy.default", issuers)?,
            groups_claim: self.groups_claim,
            allow_cors_preflight: self.allow_cors_preflight,
        })
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: RequirementsConfig::default(),
            groups_claim: default_groups_claim(),
            allow_cors_preflight: false,
            reason_header: false,
        }
    }
}

fn default_groups_claim() -> String {
    "groups".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Claim name -> request header set on the upstream request.
    #[serde(default = "default_claim_headers")]
    pub claim_headers: BTreeMap<String, String>,
    /// Strip `authorization` before the upstream sees the request.
    #[serde(default)]
    pub remove_authorization: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            claim_headers: default_claim_headers(),
            remove_authorization: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Refresh interval when the JWKS response has no `Cache-Control: max-age`.
    #[serde(default = "default_refresh")]
    pub refresh_interval_seconds: u64,
    /// Bounds applied to the JWKS `Cache-Control: max-age`.
    #[serde(default = "default_min_refresh")]
    pub min_refresh_seconds: u64,
    #[serde(default = "default_max_refresh")]
    pub max_refresh_seconds: u64,
    /// How long the last good keys stay usable when refreshes fail; then checks answer 503.
    #[serde(default = "default_max_stale")]
    pub max_stale_seconds: u64,
    /// `all`: SERVING once every issuer has keys; `any`: once one has.
    #[serde(default)]
    pub ready_when: Readiness,
    #[serde(default = "default_refetch")]
    pub refetch_min_interval_seconds: u64,
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout_ms: u64,
    /// Longest a Check waits for an unknown-`kid` refetch.
    #[serde(default = "default_unknown_kid_wait")]
    pub unknown_kid_wait_ms: u64,
    /// Longest back-off between retries after failed fetches: at most `max_refresh_seconds`
    /// (default 30, or `max_refresh_seconds` when that is shorter). While keys are unusable,
    /// retries come at least every `min_refresh_seconds` whatever this says.
    pub retry_max_seconds: Option<u64>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            refresh_interval_seconds: default_refresh(),
            min_refresh_seconds: default_min_refresh(),
            max_refresh_seconds: default_max_refresh(),
            max_stale_seconds: default_max_stale(),
            ready_when: Readiness::default(),
            refetch_min_interval_seconds: default_refetch(),
            fetch_timeout_ms: default_fetch_timeout(),
            unknown_kid_wait_ms: default_unknown_kid_wait(),
            retry_max_seconds: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Longest header value certbound reads (authorization, certificate headers).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Checks decided at once; more get 503 (`overloaded`) at once instead of queueing.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_checks: usize,
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_max_concurrent() -> usize {
    4096
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_token_bytes: default_max_token_bytes(),
            max_header_bytes: default_max_header_bytes(),
            max_concurrent_checks: default_max_concurrent(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_leeway() -> u64 {
    60
}
fn default_sources() -> Vec<CertificateSource> {
    vec![CertificateSource::Peer]
}
fn default_claim_headers() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("sub".into(), "x-certbound-subject".into()),
        ("client_id".into(), "x-certbound-client-id".into()),
    ])
}
fn default_refresh() -> u64 {
    300
}
fn default_min_refresh() -> u64 {
    60
}
fn default_max_refresh() -> u64 {
    3600
}
fn default_max_stale() -> u64 {
    86_400
}
fn yes() -> bool {
    true
}
fn default_introspection_ttl() -> u64 {
    60
}
fn default_inactive_ttl() -> u64 {
    10
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_introspection_timeout() -> u64 {
    2000
}
fn default_refetch() -> u64 {
    30
}
fn default_fetch_timeout() -> u64 {
    5000
}
fn default_retry_max() -> u64 {
    30
}
fn default_unknown_kid_wait() -> u64 {
    1000
}
fn default_max_token_bytes() -> usize {
    16 * 1024
}

/// The validated settings everything is built from.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub tls: Option<TlsSettings>,
    pub max_concurrent_checks: usize,
    /// Poll interval for config file changes; `None` when watching is off.
    pub watch_interval: Option<Duration>,
    pub log_format: LogFormat,
    pub policy: Policy,
    pub key_sources: Vec<(String, KeySource)>,
    pub key_timing: KeyTiming,
    pub unknown_kid_wait: Duration,
    /// Verified-token cache size (0: off) and entry lifetime bound.
    pub token_cache_entries: usize,
    /// Tokio worker threads (0: one per CPU).
    pub worker_threads: usize,
    pub token_cache_ttl_seconds: i64,
    pub introspection: Option<IntrospectionSettings>,
    /// PEM bundle of extra CAs for the IdP's HTTPS.
    pub idp_ca_file: Option<PathBuf>,
}

impl Settings {
    /// A fresh verified-token cache as configured (`None` when turned off).
    pub fn token_cache(&self) -> Option<certbound_core::TokenCache> {
        (self.token_cache_entries > 0).then(|| {
            certbound_core::TokenCache::new(self.token_cache_entries, self.token_cache_ttl_seconds)
        })
    }

    /// Reads, overrides from the environment, and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("config", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_yaml(&text, std::env::vars(), path.parent())
    }

    /// Parses YAML text with the given environment; relative paths resolve against `base`
    /// (the config file's folder) when they do not exist relative to the working directory.
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        base: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let mut document: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| yaml_error(&e))?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        apply_env(&mut document, &env)?;
        // Deserialize from text, not from the Value, so that errors carry the key path.
        let text = serde_yaml_ng::to_string(&document).map_err(|e| yaml_error(&e))?;
        let file: FileConfig = serde_yaml_ng::from_str(&text).map_err(|e| yaml_error(&e))?;
        file.validate(base, &env)
    }
}

fn yaml_error(error: &serde_yaml_ng::Error) -> ConfigError {
    let text = error.to_string();
    // serde_yaml_ng prefixes the path ("issuers[0]: unknown field ..."); keep it as the key.
    match text.split_once(": ") {
        Some((key, rest)) if !key.contains(' ') => ConfigError::new(key, rest),
        _ => ConfigError::new("config", text),
    }
}

fn apply_env(
    document: &mut serde_yaml_ng::Value,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    use serde_yaml_ng::Value;
    for (name, value) in env {
        let Some(key) = name.strip_prefix("CERTBOUND_").map(str::to_ascii_lowercase) else {
            continue;
        };
        if !ENV_OVERRIDES.contains(&key.as_str()) {
            continue;
        }
        let parsed: Value = serde_yaml_ng::from_str(value)
            .map_err(|e| ConfigError::new(name.clone(), e.to_string()))?;
        let mut node = &mut *document;
        let path: Vec<&str> = key.split("__").collect();
        for (i, part) in path.iter().enumerate() {
            let Value::Mapping(map) = node else {
                return Err(ConfigError::new(
                    name.clone(),
                    "the configuration is not a mapping",
                ));
            };
            let k = Value::String((*part).to_owned());
            if i + 1 == path.len() {
                map.insert(k, parsed.clone());
                break;
            }
            node = map
                .entry(k)
                .or_insert_with(|| Value::Mapping(Default::default()));
        }
    }
    Ok(())
}

impl FileConfig {
    fn validate(
        self,
        base: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            ConfigError::new("listen", format!("not a socket address: {:?}", self.listen))
        })?;
        if self.issuers.is_empty() && self.introspection.is_none() {
            return Err(ConfigError::new(
                "issuers",
                "at least one issuer (or introspection) is required",
            ));
        }
        if self.certificate.sources.is_empty() && self.binding.mode != BindingMode::Disabled {
            return Err(ConfigError::new(
                "certificate.sources",
                "at least one source is required unless binding.mode is disabled",
            ));
        }
        let mut issuers = Vec::new();
        let mut key_sources = Vec::new();
        for (i, issuer) in self.issuers.into_iter().enumerate() {
            let key = |field: &str| format!("issuers[{i}].{field}");
            if issuer.issuer.is_empty() {
                return Err(ConfigError::new(key("issuer"), "must not be empty"));
            }
            if issuers
                .iter()
                .any(|p: &IssuerPolicy| p.issuer == issuer.issuer)
            {
                return Err(ConfigError::new(key("issuer"), "duplicate issuer"));
            }
            if issuer.audiences.is_empty() || issuer.audiences.iter().any(String::is_empty) {
                return Err(ConfigError::new(
                    key("audiences"),
                    "at least one non-empty audience is required",
                ));
            }
            let algorithms = match &issuer.algorithms {
                None => Algorithm::ALL.to_vec(),
                Some(names) if names.is_empty() => {
                    return Err(ConfigError::new(key("algorithms"), "must not be empty"));
                }
                Some(names) => names
                    .iter()
                    .map(|name| {
                        Algorithm::from_name(name).ok_or_else(|| {
                            ConfigError::new(
                                key("algorithms"),
                                format!(
                                    "{name:?} is not a supported JWS algorithm (supported: {})",
                                    supported_algorithms()
                                ),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            let require_typ = match issuer.require_typ.as_deref() {
                None => false,
                Some("at+jwt") => true,
                Some(other) => {
                    return Err(ConfigError::new(
                        key("require_typ"),
                        format!("only \"at+jwt\" is supported, not {other:?}"),
                    ));
                }
            };
            let source = match (issuer.jwks_file, issuer.jwks_uri) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        key("jwks_file"),
                        "set jwks_file or jwks_uri, not both",
                    ));
                }
                (Some(path), None) => KeySource::File(resolve(path, base)),
                (None, Some(uri)) => {
                    if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                        return Err(ConfigError::new(key("jwks_uri"), "must be an http(s) URL"));
                    }
                    KeySource::Uri(uri)
                }
                (None, None) => {
                    if !(issuer.issuer.starts_with("https://")
                        || issuer.issuer.starts_with("http://"))
                    {
                        return Err(ConfigError::new(
                            key("issuer"),
                            "discovery needs an http(s) issuer; or set jwks_file / jwks_uri",
                        ));
                    }
                    KeySource::Discovery {
                        issuer: issuer.issuer.clone(),
                    }
                }
            };
            key_sources.push((issuer.issuer.clone(), source));
            issuers.push(IssuerPolicy {
                issuer: issuer.issuer,
                audiences: issuer.audiences,
                algorithms,
                require_typ,
            });
        }
        let mut claim_headers = Vec::new();
        for (claim, header) in self.upstream.claim_headers {
            let valid = !header.is_empty()
                && header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid || header.eq_ignore_ascii_case("authorization") {
                return Err(ConfigError::new(
                    format!("upstream.claim_headers.{claim}"),
                    format!("{header:?} is not a usable header name"),
                ));
            }
            claim_headers.push((claim, header.to_ascii_lowercase()));
        }
        if self.limits.max_token_bytes == 0 {
            return Err(ConfigError::new(
                "limits.max_token_bytes",
                "must be positive",
            ));
        }
        let keys = &self.keys;
        if keys.refresh_interval_seconds == 0
            || keys.fetch_timeout_ms == 0
            || keys.min_refresh_seconds == 0
        {
            return Err(ConfigError::new(
                "keys",
                "intervals and timeouts must be positive",
            ));
        }
        if keys.min_refresh_seconds > keys.max_refresh_seconds {
            return Err(ConfigError::new(
                "keys.min_refresh_seconds",
                "must not exceed keys.max_refresh_seconds",
            ));
        }
        let retry_max = match keys.retry_max_seconds {
            None => default_retry_max().min(keys.max_refresh_seconds),
            Some(seconds) if seconds == 0 || seconds > keys.max_refresh_seconds => {
                return Err(ConfigError::new(
                    "keys.retry_max_seconds",
                    "must be between 1 and keys.max_refresh_seconds",
                ));
            }
            Some(seconds) => seconds,
        };
        let (introspection_policy, introspection) = match self.introspection {
            None => (None, None),
            Some(config) => {
                let (policy, settings) = config.validate(base, env)?;
                (Some(policy), Some(settings))
            }
        };
        let reason_header = self.policy.reason_header;
        let routes = self.policy.validate(&issuers)?;
        let idp_ca_file = self.idp_ca_file.map(|path| resolve(path, base));
        if let Some(path) = &idp_ca_file
            && !path.exists()
        {
            return Err(ConfigError::new(
                "idp_ca_file",
                format!("{} does not exist", path.display()),
            ));
        }
        let admin_listen = match self.admin_listen.trim() {
            "" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new("admin_listen", format!("not a socket address: {text:?}"))
            })?),
        };
        let tls = match self.tls {
            None => None,
            Some(tls) => {
                let settings = TlsSettings {
                    cert_file: resolve(tls.cert_file, base),
                    key_file: resolve(tls.key_file, base),
                    client_ca_file: tls.client_ca_file.map(|p| resolve(p, base)),
                };
                for (key, path) in [
                    ("tls.cert_file", Some(&settings.cert_file)),
                    ("tls.key_file", Some(&settings.key_file)),
                    ("tls.client_ca_file", settings.client_ca_file.as_ref()),
                ] {
                    if let Some(path) = path
                        && !path.exists()
                    {
                        return Err(ConfigError::new(
                            key,
                            format!("{} does not exist", path.display()),
                        ));
                    }
                }
                Some(settings)
            }
        };
        if self.limits.max_concurrent_checks == 0 || self.limits.max_header_bytes == 0 {
            return Err(ConfigError::new("limits", "limits must be positive"));
        }
        Ok(Settings {
            listen,
            admin_listen,
            tls,
            max_concurrent_checks: self.limits.max_concurrent_checks,
            watch_interval: self
                .reload
                .watch
                .then(|| Duration::from_secs(self.reload.poll_interval_seconds.max(1))),
            log_format: self.log_format,
            policy: Policy {
                issuers,
                leeway_seconds: i64::try_from(self.leeway_seconds)
                    .map_err(|_| ConfigError::new("leeway_seconds", "too large"))?,
                binding: self.binding.mode,
                certificate_sources: self.certificate.sources,
                upstream: UpstreamPolicy {
                    claim_headers,
                    remove_authorization: self.upstream.remove_authorization,
                },
                max_token_bytes: self.limits.max_token_bytes,
                max_header_bytes: self.limits.max_header_bytes,
                introspection: introspection_policy,
                routes,
                xfcc_by: self.certificate.xfcc_by,
                reason_header,
                certificates: Arc::new(CertificateCache::new(CertificateCache::DEFAULT_CAPACITY)),
            },
            key_sources,
            key_timing: KeyTiming {
                refresh_interval: Duration::from_secs(keys.refresh_interval_seconds),
                refetch_min_interval: Duration::from_secs(keys.refetch_min_interval_seconds),
                fetch_timeout: Duration::from_millis(keys.fetch_timeout_ms),
                min_refresh: Duration::from_secs(keys.min_refresh_seconds),
                max_refresh: Duration::from_secs(keys.max_refresh_seconds),
                max_stale_seconds: i64::try_from(keys.max_stale_seconds)
                    .map_err(|_| ConfigError::new("keys.max_stale_seconds", "too large"))?,
                readiness: keys.ready_when,
                retry_max: Duration::from_secs(retry_max),
            },
            unknown_kid_wait: Duration::from_millis(keys.unknown_kid_wait_ms),
            token_cache_entries: self.token_cache.max_entries,
            worker_threads: self.runtime.worker_threads,
            token_cache_ttl_seconds: i64::try_from(self.token_cache.ttl_seconds)
                .map_err(|_| ConfigError::new("token_cache.ttl_seconds", "too large"))?,
            introspection,
            idp_ca_file,
        })
    }
}

impl IntrospectionConfig {
    fn validate(
        self,
        base: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<(IntrospectionPolicy, IntrospectionSettings), ConfigError> {
        let http_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
        match (&self.endpoint, &self.issuer) {
            (Some(endpoint), _) if !http_url(endpoint) => {
                return Err(ConfigError::new(
                    "introspection.endpoint",
                    "must be an http(s) URL",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "introspection.endpoint",
                    "set endpoint, or issuer for discovery",
                ));
            }
            (None, Some(issuer)) if !http_url(issuer) => {
                return Err(ConfigError::new(
                    "introspection.issuer",
                    "discovery needs an http(s) issuer",
                ));
            }
            _ => {}
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::new(
                "introspection.client_id",
                "must not be empty",
            ));
        }
        let secret = match (&self.client_secret_file, &self.client_secret_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "introspection.client_secret_file",
                    "set client_secret_file or client_secret_env, not both",
                ));
            }
            (Some(path), None) => {
                let path = resolve(path.clone(), base);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(
                        "introspection.client_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                text.trim_end_matches(['\r', '\n']).to_owned()
            }
            (None, Some(name)) => env.get(name).cloned().ok_or_else(|| {
                ConfigError::new(
                    "introspection.client_secret_env",
                    format!("environment variable {name} is not set"),
                )
            })?,
            (None, None) => {
                return Err(ConfigError::new(
                    "introspection.client_secret_file",
                    "a client secret is required (client_secret_file or client_secret_env)",
                ));
            }
        };
        if secret.is_empty() {
            return Err(ConfigError::new(
                "introspection.client_secret_file",
                "the client secret is empty",
            ));
        }
        let seconds = |v: u64, key: &str| {
            i64::try_from(v)
                .map_err(|_| ConfigError::new(format!("introspection.{key}"), "too large"))
        };
        let policy = IntrospectionPolicy {
            introspect_jwts: self.introspect_jwts,
            issuer: self.issuer.clone().filter(|_| self.check_issuer),
            audiences: self.audiences,
        };
        let settings = IntrospectionSettings {
            endpoint: self.endpoint,
            discovery_issuer: self.issuer,
            client_id: self.client_id,
            client_secret: Secret::new(secret),
            auth_method: self.auth_method,
            cache_ttl_seconds: seconds(self.cache_ttl_seconds, "cache_ttl_seconds")?,
            inactive_cache_ttl_seconds: seconds(
                self.inactive_cache_ttl_seconds,
                "inactive_cache_ttl_seconds",
            )?,
            cache_max_entries: self.cache_max_entries,
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
        };
        Ok((policy, settings))
    }
}

/// The supported `alg` names, for error messages.
fn supported_algorithms() -> String {
    Algorithm::ALL.map(Algorithm::as_str).join(", ")
}

/// A relative path is taken as written when it exists, else relative to the config file.
fn resolve(path: PathBuf, base: Option<&Path>) -> PathBuf {
    match base {
        Some(base) if path.is_relative() && !path.exists() => base.join(path),
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
issuers:
  - issuer: https://idp.example.com
    audiences: [https://api.example.com]
    jwks_file: deploy/local/jwks.json
";

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_yaml(text, Vec::new(), None)
    }

    fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::from_yaml(text, env, None)
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let s = load(MINIMAL).expect("valid");
        assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.policy.leeway_seconds, 60);
        assert_eq!(s.policy.binding, BindingMode::Required);
        assert_eq!(s.policy.certificate_sources, [CertificateSource::Peer]);
        assert_eq!(s.policy.issuers[0].algorithms, Algorithm::ALL);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(
            s.key_sources[0].1,
            KeySource::File("deploy/local/jwks.json".into())
        );
    }

    #[test]
    fn the_full_documented_schema_parses() {
        let text = "
listen: 0.0.0.0:9000
issuers:
  - issuer: https://idp.example.com
    audiences: [https://api.example.com]
    algorithms: [ES256, RS256]
    require_typ: at+jwt
  - issuer: https://other.example.com
    audiences: [a]
    jwks_uri: https://other.example.com/keys
leeway_seconds: 30
binding:
  mode: when_present
certificate:
  sources: [xfcc, peer]
log_format: json
upstream:
  claim_headers: {sub: x-sub}
  remove_authorization: true
";
        let s = load(text).expect("valid");
        assert_eq!(s.policy.issuers.len(), 2);
        assert!(s.policy.issuers[0].require_typ);
        assert_eq!(
            s.key_sources[0].1,
            KeySource::Discovery {
                issuer: "https://idp.example.com".into()
            }
        );
        assert_eq!(s.policy.binding, BindingMode::WhenPresent);
        assert_eq!(
            s.policy.upstream.claim_headers,
            [("sub".to_string(), "x-sub".to_string())]
        );
        assert!(s.policy.upstream.remove_authorization);
    }

    #[test]
    fn every_supported_algorithm_can_be_pinned() {
        let s = load(&format!(
            "{MINIMAL}    algorithms: [ES512, Ed25519, EdDSA, ES256, PS512]\n"
        ))
        .expect("valid");
        assert_eq!(
            s.policy.issuers[0].algorithms,
            [
                Algorithm::ES512,
                Algorithm::Ed25519,
                Algorithm::EdDSA,
                Algorithm::ES256,
                Algorithm::PS512
            ]
        );
        let err = load(&format!("{MINIMAL}    algorithms: [HS256]\n")).expect_err("hmac");
        assert!(err.message.contains("supported: RS256"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = load(&format!("{MINIMAL}bogus: 1\n")).expect_err("invalid");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = load(&MINIMAL.replace("jwks_file", "jwks_fil")).expect_err("invalid");
        assert!(err.to_string().contains("issuers[0]"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            (
                MINIMAL.replace("[https://api.example.com]", "[]"),
                "issuers[0].audiences",
            ),
            (
                format!("{MINIMAL}    algorithms: [HS256]\n"),
                "issuers[0].algorithms",
            ),
            (
                format!("{MINIMAL}    algorithms: [none]\n"),
                "issuers[0].algorithms",
            ),
            (
                format!("{MINIMAL}    jwks_uri: https://x\n"),
                "issuers[0].jwks_file",
            ),
            (
                format!("{MINIMAL}    require_typ: JWT\n"),
                "issuers[0].require_typ",
            ),
            (format!("{MINIMAL}listen: nope\n"), "listen"),
            (
                format!("{MINIMAL}binding: {{mode: sometimes}}\n"),
                "binding.mode",
            ),
            ("issuers: []\n".to_string(), "issuers"),
        ];
        for (text, key) in cases {
            let err = load(&text).expect_err(key);
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn environment_overrides_top_level_scalars() {
        let s = load_env(
            MINIMAL,
            &[
                ("CERTBOUND_LISTEN", "127.0.0.1:6000"),
                ("CERTBOUND_LEEWAY_SECONDS", "5"),
                ("CERTBOUND_BINDING__MODE", "disabled"),
                ("CERTBOUND_UNRELATED", "ignored"),
            ],
        )
        .expect("valid");
        assert_eq!(s.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(s.policy.leeway_seconds, 5);
        assert_eq!(s.policy.binding, BindingMode::Disabled);
    }

    #[test]
    fn bad_claim_header_names_are_rejected() {
        let err = load(&format!(
            "{MINIMAL}upstream: {{claim_headers: {{sub: \"bad header\"}}}}\n"
        ))
        .expect_err("invalid");
        assert_eq!(err.key, "upstream.claim_headers.sub");
    }

    #[test]
    fn introspection_reads_its_secret_from_the_environment_and_redacts_it() {
        let text = "
introspection:
  endpoint: https://idp.example.com/introspect
  client_id: certbound
  client_secret_env: IDP_SECRET
";
        let s = load_env(text, &[("IDP_SECRET", "hunter2")]).expect("valid");
        let introspection = s.introspection.expect("configured");
        assert_eq!(introspection.client_secret.expose(), "hunter2");
        assert!(!format!("{introspection:?}").contains("hunter2"));
        assert!(s.policy.issuers.is_empty());
        let err = load(text).expect_err("secret missing");
        assert_eq!(err.key, "introspection.client_secret_env");
    }

    #[test]
    fn introspection_needs_an_endpoint_or_an_issuer() {
        let text = "introspection:\n  client_id: c\n  client_secret_env: S\n";
        let err = load_env(text, &[("S", "x")]).expect_err("no endpoint");
        assert_eq!(err.key, "introspection.endpoint");
    }

    #[test]
    fn key_timing_bounds_are_validated() {
        let err = load(&format!(
            "{MINIMAL}keys:\n  min_refresh_seconds: 100\n  max_refresh_seconds: 10\n"
        ))
        .expect_err("invalid");
        assert_eq!(err.key, "keys.min_refresh_seconds");
        let s = load(&format!(
            "{MINIMAL}keys:\n  max_stale_seconds: 60\n  ready_when: any\n"
        ))
        .expect("valid");
        assert_eq!(s.key_timing.max_stale_seconds, 60);
        assert_eq!(s.key_timing.readiness, Readiness::Any);
        assert_eq!(s.key_timing.retry_max, Duration::from_secs(30));
        let s = load(&format!(
            "{MINIMAL}keys:\n  min_refresh_seconds: 1\n  max_refresh_seconds: 10\n"
        ))
        .expect("valid");
        assert_eq!(
            s.key_timing.retry_max,
            Duration::from_secs(10),
            "bounded by max_refresh"
        );
        let err = load(&format!(
            "{MINIMAL}keys:\n  min_refresh_seconds: 1\n  max_refresh_seconds: 10\n  retry_max_seconds: 11\n"
        ))
        .expect_err("above max_refresh");
        assert_eq!(err.key, "keys.retry_max_seconds");
    }

    #[test]
    fn policy_rules_parse_and_validate() {
        let text = format!(
            "{MINIMAL}policy:
  groups_claim: roles
  rules:
    - name: health
      path: /healthz
      allow_anonymous: true
    - hosts: ['*.example.com']
      path_regex: /items/[0-9]+
      methods: [put]
      scopes: [items:write]
      groups: [a, b]
      match_all: true
      binding: when_present
      issuers: [https://idp.example.com]
  default:
    scopes: [read]
"
        );
        let s = load(&text).expect("valid");
        let routes = &s.policy.routes;
        assert_eq!(routes.groups_claim, "roles");
        assert_eq!(routes.rules.len(), 2);
        assert_eq!(routes.rules[1].name, "rules[1]");
        assert_eq!(routes.rules[1].methods, ["PUT"]);
        assert!(routes.rules[1].requirements.groups_match_all);
        assert_eq!(routes.default.scopes, ["read"]);
    }

    #[test]
    fn policy_errors_name_the_rule() {
        let cases = [
            (
                "    - path: /a\n      path_prefix: /b\n",
                "policy.rules[0].path",
            ),
            ("    - path_regex: '('\n", "policy.rules[0].path_regex"),
            (
                "    - issuers: [https://unknown]\n",
                "policy.rules[0].issuers",
            ),
        ];
        for (rule, key) in cases {
            let err = load(&format!("{MINIMAL}policy:\n  rules:\n{rule}")).expect_err(key);
            assert_eq!(err.key, key, "{err}");
        }
        let err =
            load(&format!("{MINIMAL}policy:\n  rules:\n    - bogus: 1\n")).expect_err("unknown");
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
