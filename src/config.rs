//! Configuration: a YAML file plus `CERTBOUND_<KEY>` environment overrides, validated into the
//! settings the rest of the program is built from. Unknown keys are errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::authz::{BindingMode, CertificateSource, IssuerPolicy, Policy, UpstreamPolicy};
use crate::keys::{KeySource, KeyTiming};

/// Top-level keys that `CERTBOUND_<KEY>` may override (nested keys use `__`: `BINDING__MODE`).
const ENV_OVERRIDES: &[&str] = &[
    "listen",
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
    pub issuers: Vec<IssuerConfig>,
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
}

impl Default for CertificateConfig {
    fn default() -> Self {
        Self {
            sources: default_sources(),
        }
    }
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
    #[serde(default = "default_refresh")]
    pub refresh_interval_seconds: u64,
    #[serde(default = "default_refetch")]
    pub refetch_min_interval_seconds: u64,
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout_ms: u64,
    /// Longest a Check waits for an unknown-`kid` refetch.
    #[serde(default = "default_unknown_kid_wait")]
    pub unknown_kid_wait_ms: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            refresh_interval_seconds: default_refresh(),
            refetch_min_interval_seconds: default_refetch(),
            fetch_timeout_ms: default_fetch_timeout(),
            unknown_kid_wait_ms: default_unknown_kid_wait(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_token_bytes: default_max_token_bytes(),
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
fn default_refetch() -> u64 {
    30
}
fn default_fetch_timeout() -> u64 {
    5000
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
    pub log_format: LogFormat,
    pub policy: Policy,
    pub key_sources: Vec<(String, KeySource)>,
    pub key_timing: KeyTiming,
    pub unknown_kid_wait: Duration,
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Settings {
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
        apply_env(&mut document, env)?;
        // Deserialize from text, not from the Value, so that errors carry the key path.
        let text = serde_yaml_ng::to_string(&document).map_err(|e| yaml_error(&e))?;
        let file: FileConfig = serde_yaml_ng::from_str(&text).map_err(|e| yaml_error(&e))?;
        file.validate(base)
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
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    use serde_yaml_ng::Value;
    for (name, value) in env {
        let Some(key) = name.strip_prefix("CERTBOUND_").map(str::to_ascii_lowercase) else {
            continue;
        };
        if !ENV_OVERRIDES.contains(&key.as_str()) {
            continue;
        }
        let parsed: Value = serde_yaml_ng::from_str(&value)
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
    fn validate(self, base: Option<&Path>) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            ConfigError::new("listen", format!("not a socket address: {:?}", self.listen))
        })?;
        if self.issuers.is_empty() {
            return Err(ConfigError::new(
                "issuers",
                "at least one issuer is required",
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
                None => ASYMMETRIC.to_vec(),
                Some(names) if names.is_empty() => {
                    return Err(ConfigError::new(key("algorithms"), "must not be empty"));
                }
                Some(names) => names
                    .iter()
                    .map(|name| {
                        name.parse::<Algorithm>()
                            .ok()
                            .filter(|alg| ASYMMETRIC.contains(alg))
                            .ok_or_else(|| {
                                ConfigError::new(
                                    key("algorithms"),
                                    format!("{name:?} is not an asymmetric JWS algorithm"),
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
        if keys.refresh_interval_seconds == 0 || keys.fetch_timeout_ms == 0 {
            return Err(ConfigError::new(
                "keys",
                "intervals and timeouts must be positive",
            ));
        }
        Ok(Settings {
            listen,
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
            },
            key_sources,
            key_timing: KeyTiming {
                refresh_interval: Duration::from_secs(keys.refresh_interval_seconds),
                refetch_min_interval: Duration::from_secs(keys.refetch_min_interval_seconds),
                fetch_timeout: Duration::from_millis(keys.fetch_timeout_ms),
                ..KeyTiming::default()
            },
            unknown_kid_wait: Duration::from_millis(keys.unknown_kid_wait_ms),
        })
    }
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
        assert_eq!(s.policy.issuers[0].algorithms.len(), 9);
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
}
