//! What both adapters validate the same way: issuers and their keys, the binding, certificate
//! sources, upstream headers, limits, key timing, route policy and the token cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::ConfigError;
use super::schema::{
    CertificateConfig, DpopConfig, FileConfig, IssuerConfig, PolicyConfig, ReplayMode,
    ReplayStoreKind, RequirementsConfig,
};
use crate::binding::BindingMode;
use crate::certificate::CertificateCache;
use crate::dpop::{DpopPolicy, NonceKeys};
use crate::jwa::Algorithm;
use crate::keys::{KeySet, KeySource, KeyTiming};
use crate::policy::{CertificateHeader, Policy, UpstreamPolicy};
use crate::request::CertificateSource;
use crate::routes::{HostMatch, PathMatch, Requirements, RoutePolicy, Rule, StepUp};
use crate::token::IssuerPolicy;
use crate::token_cache::TokenCache;

/// Default bound on the retry back-off when `keys.retry_max_seconds` is not set.
const DEFAULT_RETRY_MAX_SECONDS: u64 = 30;

/// What the decision core needs, validated; shared by both adapters.
#[derive(Clone, Debug)]
pub struct DecisionSettings {
    pub policy: Policy,
    /// `(iss, where its keys come from)`, in configuration order.
    pub key_sources: Vec<(String, KeySource)>,
    pub key_timing: KeyTiming,
    /// Longest a check waits for an unknown-`kid` refetch.
    pub unknown_kid_wait: Duration,
    /// Verified-token cache size (0: off) and entry lifetime bound.
    pub token_cache_entries: usize,
    pub token_cache_ttl_seconds: i64,
    /// What to warn about at start: opt-ins that weaken security (and, in the service,
    /// environment variables that match no key).
    pub warnings: Vec<String>,
    /// With DPoP enabled: where used proofs are remembered (each adapter builds its store).
    pub replay: Option<ReplaySettings>,
}

/// The DPoP replay store's settings, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplaySettings {
    pub store: ReplayStoreKind,
    pub mode: ReplayMode,
    /// May carry a password: never printed (see the `Debug` impl).
    pub url: Option<String>,
    /// Cluster seeds or sentinels; may carry passwords: never printed.
    pub urls: Vec<String>,
    pub master_name: Option<String>,
    pub max_entries: usize,
    pub max_per_key: usize,
    pub timeout: Duration,
    pub key_prefix: String,
    pub ca_file: Option<PathBuf>,
    /// Redis replicas that must acknowledge a proof (`WAIT`); 0: the master's answer is enough.
    pub wait_replicas: u32,
}

impl std::fmt::Debug for ReplaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplaySettings")
            .field("store", &self.store)
            .field("mode", &self.mode)
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("urls", &self.urls.len())
            .field("master_name", &self.master_name)
            .field("max_entries", &self.max_entries)
            .field("max_per_key", &self.max_per_key)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("ca_file", &self.ca_file)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

impl DecisionSettings {
    /// A fresh verified-token cache as configured (`None` when turned off).
    pub fn token_cache(&self) -> Option<TokenCache> {
        (self.token_cache_entries > 0)
            .then(|| TokenCache::new(self.token_cache_entries, self.token_cache_ttl_seconds))
    }
}

/// A relative path is taken as written when it exists, else relative to the config file's folder.
pub fn resolve(path: PathBuf, base: Option<&Path>) -> PathBuf {
    match base {
        Some(base) if path.is_relative() && !path.exists() => base.join(path),
        _ => path,
    }
}

/// Reads the file at `written` (a configuration value), [`resolve`]d against `base`. When it is
/// in neither place, the error names the path as written and both folders looked in, not the
/// two joined (`deploy/local/deploy/local/jwks.json` told a user nothing).
pub fn read_resolved(written: &Path, base: Option<&Path>) -> Result<(PathBuf, Vec<u8>), String> {
    let path = resolve(written.to_path_buf(), base);
    match std::fs::read(&path) {
        Ok(bytes) => Ok((path, bytes)),
        Err(e) => Err(not_found(written, base, &path, &e)),
    }
}

/// The error for a configured file that cannot be read (see [`read_resolved`]).
pub fn not_found(written: &Path, base: Option<&Path>, path: &Path, e: &std::io::Error) -> String {
    match base {
        Some(base) if written.is_relative() && e.kind() == std::io::ErrorKind::NotFound => {
            let cwd = std::env::current_dir()
                .map_or_else(|_| "(unknown)".into(), |d| d.display().to_string());
            let base = if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                base
            };
            format!(
                "cannot find {}: a relative path is looked up in the working directory ({cwd}), \
                 then in the configuration file's folder ({}); give an absolute path, or one \
                 relative to either",
                written.display(),
                base.display()
            )
        }
        _ => format!("cannot read {}: {e}", path.display()),
    }
}

/// Checks a URL certbound will fetch from (keys, discovery, introspection): `https://`, or
/// `http://` to a loopback host (127.0.0.0/8, `::1`, `localhost`). Plain HTTP to any other host
/// lets anyone on the path swap the keys, so it needs `allow_insecure_http`; the returned
/// warning says so and is logged at start.
pub fn check_url(
    url: &str,
    allow_insecure_http: bool,
    key: &str,
    opt_in_key: &str,
) -> Result<Option<String>, ConfigError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| ConfigError::new(key, format!("{url:?} is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(None),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(None)
            } else if allow_insecure_http {
                Ok(Some(format!(
                    "{key}: {url} is fetched over plain HTTP ({opt_in_key}: true): anyone on the \
                     path can change what certbound trusts; use https outside tests"
                )))
            } else {
                Err(ConfigError::new(
                    key,
                    format!(
                        "{url} uses plain http to a host that is not loopback: anyone on the path \
                         could change what certbound trusts; use https (or, for a test setup \
                         only, set {opt_in_key}: true)"
                    ),
                ))
            }
        }
        other => Err(ConfigError::new(
            key,
            format!("must be an http(s) URL, not {other}:"),
        )),
    }
}

impl FileConfig {
    /// Validates what both adapters share. Relative paths resolve against `base` (the config
    /// file's folder) when they do not exist relative to the working directory. `jwks_file`s
    /// are read and must hold usable keys.
    pub fn decision_settings(&self, base: Option<&Path>) -> Result<DecisionSettings, ConfigError> {
        if self.certificate.sources.is_empty() && self.binding.mode != BindingMode::Disabled {
            return Err(ConfigError::new(
                "certificate.sources",
                "at least one source is required unless binding.mode is disabled",
            ));
        }
        let certificate_header = validate_certificate_header(&self.certificate)?;
        let mut warnings = Vec::new();
        let mut issuers: Vec<IssuerPolicy> = Vec::new();
        let mut key_sources = Vec::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("issuers[{i}].{field}");
            if issuers.iter().any(|p| *p.issuer == *issuer.issuer) {
                return Err(ConfigError::new(key("issuer"), "duplicate issuer"));
            }
            let (policy, source) = validate_issuer(issuer, &key, base, &mut warnings)?;
            issuers.push(policy);
            key_sources.push((issuer.issuer.clone(), source));
        }
        let mut claim_headers = Vec::new();
        for (claim, header) in &self.upstream.claim_headers {
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
            claim_headers.push((claim.clone(), header.to_ascii_lowercase().into()));
        }
        if self.limits.max_token_bytes == 0 {
            return Err(ConfigError::new(
                "limits.max_token_bytes",
                "must be positive",
            ));
        }
        if self.limits.max_header_bytes == 0 {
            return Err(ConfigError::new(
                "limits.max_header_bytes",
                "must be positive",
            ));
        }
        let key_timing = self.key_timing()?;
        let routes = validate_policy(&self.policy, &issuers)?;
        let (dpop, replay) = match self.dpop.enabled {
            false => (None, None),
            true => {
                let (policy, replay) = validate_dpop(&self.dpop, base)?;
                if self.dpop.public_base_url.is_none() {
                    warnings.push(
                        "dpop.public_base_url is not set: a proof's htu is compared with the \
                         scheme and host of the request as the proxy forwards it, which the \
                         client chooses unless the proxy routes only your host; a proof made \
                         for another server could then be replayed here. Set it to the origin \
                         clients use"
                            .to_owned(),
                    );
                }
                (Some(Arc::new(policy)), Some(replay))
            }
        };
        let resources = super::resources::validate(
            self,
            &super::resources::Enforced {
                issuers: &issuers,
                introspection_issuer: self
                    .introspection
                    .as_ref()
                    .and_then(|i| i.issuer.as_deref()),
                routes: &routes,
                binding: self.binding.mode,
                dpop: dpop.as_deref(),
            },
        )?;
        // RFC 8707: a token issued for a resource verifies with its issuer (and is taken only
        // under that resource), without its identifier in the issuer's own `audiences`.
        for issuer in &mut issuers {
            issuer.resource_audiences = resources.audiences_for(&issuer.issuer);
        }
        let seconds = |value: u64, key: &str| {
            i64::try_from(value).map_err(|_| ConfigError::new(key, "too large"))
        };
        Ok(DecisionSettings {
            policy: Policy {
                issuers,
                leeway_seconds: seconds(self.leeway_seconds, "leeway_seconds")?,
                binding: self.binding.mode,
                certificate_sources: self.certificate.sources.clone(),
                upstream: UpstreamPolicy {
                    claim_headers,
                    remove_authorization: self.upstream.remove_authorization,
                },
                max_token_bytes: self.limits.max_token_bytes,
                max_header_bytes: self.limits.max_header_bytes,
                introspection: None,
                routes,
                xfcc_by: self.certificate.xfcc_by.clone(),
                certificate_header,
                reason_header: self.policy.reason_header,
                certificates: Arc::new(CertificateCache::new(CertificateCache::DEFAULT_CAPACITY)),
                dpop,
                resources: Arc::new(resources),
            },
            key_sources,
            key_timing,
            unknown_kid_wait: Duration::from_millis(self.keys.unknown_kid_wait_ms),
            token_cache_entries: self.token_cache.max_entries,
            token_cache_ttl_seconds: seconds(
                self.token_cache.ttl_seconds,
                "token_cache.ttl_seconds",
            )?,
            warnings,
            replay,
        })
    }

    fn key_timing(&self) -> Result<KeyTiming, ConfigError> {
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
            None => DEFAULT_RETRY_MAX_SECONDS.min(keys.max_refresh_seconds),
            Some(seconds) if seconds == 0 || seconds > keys.max_refresh_seconds => {
                return Err(ConfigError::new(
                    "keys.retry_max_seconds",
                    "must be between 1 and keys.max_refresh_seconds",
                ));
            }
            Some(seconds) => seconds,
        };
        Ok(KeyTiming {
            refresh_interval: Duration::from_secs(keys.refresh_interval_seconds),
            refetch_min_interval: Duration::from_secs(keys.refetch_min_interval_seconds),
            fetch_timeout: Duration::from_millis(keys.fetch_timeout_ms),
            min_refresh: Duration::from_secs(keys.min_refresh_seconds),
            max_refresh: Duration::from_secs(keys.max_refresh_seconds),
            max_stale_seconds: i64::try_from(keys.max_stale_seconds)
                .map_err(|_| ConfigError::new("keys.max_stale_seconds", "too large"))?,
            readiness: keys.ready_when,
            retry_max: Duration::from_secs(retry_max),
        })
    }
}

fn validate_issuer(
    issuer: &IssuerConfig,
    key: &dyn Fn(&str) -> String,
    base: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<(IssuerPolicy, KeySource), ConfigError> {
    if issuer.issuer.is_empty() {
        return Err(ConfigError::new(key("issuer"), "must not be empty"));
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
                            Algorithm::ALL.map(Algorithm::as_str).join(", ")
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
    let source = match (&issuer.jwks_file, &issuer.jwks_uri) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                key("jwks_file"),
                "set jwks_file or jwks_uri, not both",
            ));
        }
        (Some(written), None) => {
            let (path, bytes) = read_resolved(written, base)
                .map_err(|why| ConfigError::new(key("jwks_file"), why))?;
            check_jwks(&path, &bytes).map_err(|why| ConfigError::new(key("jwks_file"), why))?;
            KeySource::File(path)
        }
        (None, Some(uri)) => {
            let warning = check_url(
                uri,
                issuer.allow_insecure_http,
                &key("jwks_uri"),
                &key("allow_insecure_http"),
            )?;
            warnings.extend(warning);
            KeySource::Uri(uri.clone())
        }
        (None, None) => {
            if !(issuer.issuer.starts_with("https://") || issuer.issuer.starts_with("http://")) {
                return Err(ConfigError::new(
                    key("issuer"),
                    "discovery needs an http(s) issuer; or set jwks_file / jwks_uri",
                ));
            }
            let warning = check_url(
                &issuer.issuer,
                issuer.allow_insecure_http,
                &key("issuer"),
                &key("allow_insecure_http"),
            )?;
            warnings.extend(warning);
            KeySource::Discovery {
                issuer: issuer.issuer.clone(),
            }
        }
    };
    let policy = IssuerPolicy {
        issuer: issuer.issuer.as_str().into(),
        audiences: issuer.audiences.clone(),
        // Filled in once the resources are known.
        resource_audiences: Vec::new(),
        algorithms,
        require_typ,
    };
    Ok((policy, source))
}

/// A `jwks_file` must exist and hold a JWKS with at least one usable key.
fn check_jwks(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let (set, ignored) =
        KeySet::from_jwks(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if set.is_empty() {
        let why: Vec<String> = ignored
            .iter()
            .map(|k| format!("{} ({})", k.kid.as_deref().unwrap_or("no kid"), k.why))
            .collect();
        return Err(format!(
            "{} has no usable signing key{}",
            path.display(),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join(", "))
            }
        ));
    }
    Ok(())
}

fn validate_dpop(
    config: &DpopConfig,
    base: Option<&Path>,
) -> Result<(DpopPolicy, ReplaySettings), ConfigError> {
    let algorithms = match &config.algorithms {
        None => Algorithm::ALL.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(ConfigError::new("dpop.algorithms", "must not be empty"));
        }
        Some(names) => names
            .iter()
            .map(|name| {
                Algorithm::from_name(name).ok_or_else(|| {
                    ConfigError::new(
                        "dpop.algorithms",
                        format!("{name:?} is not a supported asymmetric JWS algorithm"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let seconds = |value: u64, key: &str| {
        i64::try_from(value).map_err(|_| ConfigError::new(key, "too large"))
    };
    if config.max_age_seconds == 0 {
        return Err(ConfigError::new("dpop.max_age_seconds", "must be positive"));
    }
    let public_base_url = match &config.public_base_url {
        None => None,
        Some(url) => {
            let normalized = crate::dpop::normalize_htu(url)
                .filter(|_| !url.contains(['?', '#']))
                .ok_or_else(|| {
                    ConfigError::new(
                        "dpop.public_base_url",
                        format!("{url:?} is not an http(s) URL without query or fragment"),
                    )
                })?;
            Some(normalized.trim_end_matches('/').to_owned())
        }
    };
    let nonces = match &config.nonce {
        None => None,
        Some(nonce) => {
            let (_, secret) = read_resolved(&nonce.secret_file, base)
                .map_err(|why| ConfigError::new("dpop.nonce.secret_file", why))?;
            let secret = secret.trim_ascii();
            if secret.len() < 16 {
                return Err(ConfigError::new(
                    "dpop.nonce.secret_file",
                    "the secret must be at least 16 bytes",
                ));
            }
            if nonce.lifetime_seconds == 0 {
                return Err(ConfigError::new(
                    "dpop.nonce.lifetime_seconds",
                    "must be positive",
                ));
            }
            Some(NonceKeys::new(
                secret,
                seconds(nonce.lifetime_seconds, "dpop.nonce.lifetime_seconds")?,
            ))
        }
    };
    let replay = &config.replay;
    let redis_url = |url: &str| url.starts_with("redis://") || url.starts_with("rediss://");
    if replay.store == ReplayStoreKind::Redis && replay.mode != ReplayMode::Standalone {
        if replay.url.is_some() {
            return Err(ConfigError::new(
                "dpop.replay.url",
                "for mode: standalone; cluster and sentinel take urls: [...]",
            ));
        }
        if replay.urls.is_empty() {
            return Err(ConfigError::new(
                "dpop.replay.urls",
                match replay.mode {
                    ReplayMode::Cluster => {
                        "mode: cluster needs the seed nodes: urls: [redis://host:port, ...]"
                    }
                    _ => "mode: sentinel needs the sentinels: urls: [redis://host:26379, ...]",
                },
            ));
        }
        if replay.urls.iter().any(|u| !redis_url(u)) {
            return Err(ConfigError::new(
                "dpop.replay.urls",
                "each must start with redis:// or rediss:// (TLS)",
            ));
        }
        let tls = replay
            .urls
            .iter()
            .filter(|u| u.starts_with("rediss://"))
            .count();
        if tls != 0 && tls != replay.urls.len() {
            return Err(ConfigError::new(
                "dpop.replay.urls",
                "all rediss:// (TLS) or all redis://, not a mix",
            ));
        }
    }
    match replay.mode {
        ReplayMode::Sentinel
            if replay.store == ReplayStoreKind::Redis
                && replay
                    .sentinel
                    .master_name
                    .as_deref()
                    .is_none_or(str::is_empty) =>
        {
            return Err(ConfigError::new(
                "dpop.replay.sentinel.master_name",
                "mode: sentinel needs the name the sentinels monitor (sentinel.master_name)",
            ));
        }
        ReplayMode::Sentinel => {}
        _ if replay.sentinel.master_name.is_some() => {
            return Err(ConfigError::new(
                "dpop.replay.sentinel.master_name",
                "only for mode: sentinel",
            ));
        }
        _ => {}
    }
    if replay.store == ReplayStoreKind::Memory && !replay.urls.is_empty() {
        return Err(ConfigError::new(
            "dpop.replay.urls",
            "only for store: redis",
        ));
    }
    let standalone = replay.mode == ReplayMode::Standalone;
    match (replay.store, &replay.url) {
        (ReplayStoreKind::Redis, None) if standalone => {
            return Err(ConfigError::new(
                "dpop.replay.url",
                "store: redis needs url: redis://host:port",
            ));
        }
        (ReplayStoreKind::Redis, Some(url))
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) =>
        {
            return Err(ConfigError::new(
                "dpop.replay.url",
                "must start with redis:// or rediss:// (TLS)",
            ));
        }
        (ReplayStoreKind::Memory, Some(_)) => {
            return Err(ConfigError::new("dpop.replay.url", "only for store: redis"));
        }
        _ => {}
    }
    let ca_file = match &replay.ca_file {
        None => None,
        Some(path) => {
            let tls = match replay.mode {
                ReplayMode::Standalone => replay
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("rediss://")),
                _ => replay.urls.iter().all(|u| u.starts_with("rediss://")),
            };
            if !tls {
                return Err(ConfigError::new(
                    "dpop.replay.ca_file",
                    "only for a rediss:// (TLS) url",
                ));
            }
            let path = resolve(path.clone(), base);
            if !path.exists() {
                return Err(ConfigError::new(
                    "dpop.replay.ca_file",
                    format!("{} does not exist", path.display()),
                ));
            }
            Some(path)
        }
    };
    if replay.store == ReplayStoreKind::Memory && replay.wait_replicas > 0 {
        return Err(ConfigError::new(
            "dpop.replay.wait_replicas",
            "only for store: redis (the in-memory store has no replicas)",
        ));
    }
    if replay.store == ReplayStoreKind::Memory && replay.max_entries == 0 {
        return Err(ConfigError::new(
            "dpop.replay.max_entries",
            "must be positive",
        ));
    }
    if replay.max_per_key == 0 {
        return Err(ConfigError::new(
            "dpop.replay.max_per_key",
            "must be positive",
        ));
    }
    if replay.timeout_ms == 0 {
        return Err(ConfigError::new(
            "dpop.replay.timeout_ms",
            "must be positive",
        ));
    }
    let algs = algorithms
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let policy = DpopPolicy {
        algorithms,
        max_age_seconds: seconds(config.max_age_seconds, "dpop.max_age_seconds")?,
        future_seconds: seconds(config.leeway_seconds, "dpop.leeway_seconds")?,
        public_base_url,
        trust_forwarded_headers: config.trust_forwarded_headers,
        nonces,
        algs: algs.into(),
        proof_keys: Default::default(),
    };
    let settings = ReplaySettings {
        store: replay.store,
        mode: replay.mode,
        url: replay.url.clone(),
        urls: replay.urls.clone(),
        master_name: replay.sentinel.master_name.clone(),
        max_entries: replay.max_entries,
        max_per_key: replay.max_per_key,
        timeout: Duration::from_millis(replay.timeout_ms),
        key_prefix: replay.key_prefix.clone(),
        ca_file,
        wait_replicas: replay.wait_replicas,
    };
    Ok((policy, settings))
}

fn validate_requirements(
    config: &RequirementsConfig,
    key: &str,
    issuers: &[IssuerPolicy],
) -> Result<Requirements, ConfigError> {
    if let Some(unknown) = config
        .issuers
        .iter()
        .find(|i| !issuers.iter().any(|p| *p.issuer == **i))
    {
        return Err(ConfigError::new(
            format!("{key}.issuers"),
            format!("{unknown:?} is not a configured issuer"),
        ));
    }
    if config
        .scopes
        .iter()
        .chain(&config.groups)
        .any(|s| s.is_empty() || s.contains(' '))
    {
        return Err(ConfigError::new(
            key,
            "scopes and groups must be non-empty words",
        ));
    }
    if config.acr_values.iter().any(|a| {
        a.is_empty()
            || !a
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        return Err(ConfigError::new(
            format!("{key}.acr_values"),
            "each must be a non-empty word (RFC 9470 §4: space-separated in the challenge)",
        ));
    }
    let max_age_seconds = config
        .max_age_seconds
        .map(|seconds| {
            i64::try_from(seconds)
                .map_err(|_| ConfigError::new(format!("{key}.max_age_seconds"), "too large"))
        })
        .transpose()?;
    let step_up = (!config.acr_values.is_empty() || max_age_seconds.is_some())
        .then(|| Arc::new(StepUp::new(config.acr_values.clone(), max_age_seconds)));
    if step_up.is_some() && config.allow_anonymous {
        return Err(ConfigError::new(
            format!("{key}.allow_anonymous"),
            "an anonymous route has no token whose acr_values or max_age_seconds to check",
        ));
    }
    Ok(Requirements {
        step_up,
        allow_anonymous: config.allow_anonymous,
        scopes: config.scopes.clone(),
        groups: config.groups.clone(),
        groups_match_all: config.match_all,
        binding: config.binding,
        issuers: config.issuers.clone(),
        audiences: config.audiences.clone(),
    })
}

fn validate_policy(
    config: &PolicyConfig,
    issuers: &[IssuerPolicy],
) -> Result<RoutePolicy, ConfigError> {
    let mut rules = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let key = format!("policy.rules[{i}]");
        let path = match (&rule.path, &rule.path_prefix, &rule.path_regex) {
            (None, None, None) => None,
            (Some(exact), None, None) => Some(PathMatch::Exact(exact.clone())),
            (None, Some(prefix), None) => Some(PathMatch::Prefix(prefix.clone())),
            (None, None, Some(pattern)) => {
                let regex = crate::routes::CasedRegex::new(pattern)
                    .map_err(|e| ConfigError::new(format!("{key}.path_regex"), e.to_string()))?;
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
            name: rule
                .name
                .clone()
                .unwrap_or_else(|| format!("rules[{i}]"))
                .into(),
            hosts: rule.hosts.iter().map(|h| HostMatch::parse(h)).collect(),
            path,
            methods: rule
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            requirements: validate_requirements(&rule.requirements(), &key, issuers)?,
        });
    }
    Ok(RoutePolicy {
        rules,
        default: validate_requirements(&config.default, "policy.default", issuers)?,
        groups_claim: config.groups_claim.clone(),
        allow_cors_preflight: config.allow_cors_preflight,
        escaped_slashes: config.escaped_slashes,
    })
}

/// A configured header name, lower-cased: an RFC 9110 token, else `None`.
pub fn header_name(text: &str) -> Option<String> {
    let name = text.trim().to_ascii_lowercase();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    (!name.is_empty() && name.chars().all(token)).then_some(name)
}

/// `certificate.header` is required by the `header` source and means nothing without it.
fn validate_certificate_header(
    certificate: &CertificateConfig,
) -> Result<Option<CertificateHeader>, ConfigError> {
    let listed = certificate.sources.contains(&CertificateSource::Header);
    match (&certificate.header, listed) {
        (None, false) => Ok(None),
        (None, true) => Err(ConfigError::new(
            "certificate.header",
            "the header source needs {name: ..., encoding: pem_url | der_base64}",
        )),
        (Some(_), false) => Err(ConfigError::new(
            "certificate.header",
            "set, but certificate.sources does not list header",
        )),
        (Some(header), true) => {
            let Some(name) = header_name(&header.name) else {
                return Err(ConfigError::new(
                    "certificate.header.name",
                    "not an HTTP header name",
                ));
            };
            let reserved = [
                "authorization",
                "dpop",
                "x-forwarded-client-cert",
                "client-cert",
            ];
            if reserved.contains(&name.as_str()) || name.starts_with(':') {
                return Err(ConfigError::new(
                    "certificate.header.name",
                    format!("{name} has a meaning of its own; name the proxy's certificate header"),
                ));
            }
            Ok(Some(CertificateHeader {
                name,
                encoding: header.encoding,
                certificates: Arc::new(CertificateCache::new(CertificateCache::DEFAULT_CAPACITY)),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str, allow: bool) -> Result<Option<String>, ConfigError> {
        check_url(
            u,
            allow,
            "issuers[0].jwks_uri",
            "issuers[0].allow_insecure_http",
        )
    }

    #[test]
    fn plain_http_is_for_loopback_hosts_only() {
        for ok in [
            "https://idp.example.com/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://127.1.2.3/jwks",
            "http://localhost:3000/jwks",
            "http://LOCALHOST/jwks",
            "http://[::1]:8080/jwks",
        ] {
            assert_eq!(url(ok, false), Ok(None), "{ok}");
        }
        for bad in [
            "http://idp.example.com/jwks",
            "http://10.0.0.1/jwks",
            "http://localhost.evil.com/jwks",
            "http://[::2]/jwks",
        ] {
            let error = url(bad, false).expect_err(bad);
            assert_eq!(error.key, "issuers[0].jwks_uri");
            assert!(error.message.contains("allow_insecure_http"), "{error}");
            let warning = url(bad, true).expect("opted in").expect("a warning");
            assert!(warning.contains("plain HTTP"), "{warning}");
        }
        assert!(url("ftp://idp/jwks", true).is_err());
        assert!(url("not a url", true).is_err());
    }
}
