//! The service's configuration: the YAML file (certbound's one schema,
//! [`certbound_core::config::FileConfig`]), then `CERTBOUND_<KEY>` environment overrides
//! ([`env`]), validated into the [`Settings`] the service is built from. The core validates what
//! both adapters share; here are the keys only the service reads (listeners, TLS, reload, the
//! runtime, introspection, the IdP's CA bundle). Unknown keys are errors, and errors name the
//! key and, when it can be told, the line.

pub mod env;
mod forward_auth;

pub use forward_auth::{ForwardAuthSettings, ForwardedHeaders};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certbound_core::IntrospectionPolicy;
use certbound_core::config::{
    self as schema, DecisionSettings, FileConfig, IntrospectionConfig, check_url, read_resolved,
    resolve,
};

pub use certbound_core::config::{ConfigError, LogFormat};
pub use certbound_core::keys::{KeyTiming, Readiness};

use crate::introspection::{IntrospectionSettings, Secret};

/// Validated TLS settings for a listener (gRPC, or the HTTP authorization API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

/// The validated settings everything is built from.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub tls: Option<TlsSettings>,
    /// The HTTP authorization API, when on.
    pub forward_auth: Option<ForwardAuthSettings>,
    /// OpenTelemetry traces, when on.
    pub traces: Option<crate::telemetry::TracesSettings>,
    pub max_concurrent_checks: usize,
    /// What a connection to any listener may hold (restart to change).
    pub connections: crate::listener::ConnectionLimits,
    /// Poll interval for config file changes; `None` when watching is off.
    pub watch_interval: Option<Duration>,
    pub log_format: LogFormat,
    /// The decision core's settings (policy, key sources and timing, token cache, DPoP replay,
    /// warnings), with the service's additions: the introspection policy, and warnings for
    /// environment variables that match no key.
    pub decision: DecisionSettings,
    /// Tokio worker threads (0: one per CPU).
    pub worker_threads: usize,
    pub introspection: Option<IntrospectionSettings>,
    /// PEM bundle of extra CAs for the IdP's HTTPS.
    pub idp_ca_file: Option<PathBuf>,
}

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
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut file = schema::parse(text)?;
        let env_warnings = env::apply(&mut file, &env)?;
        let mut settings = validate(file, base, &env).map_err(|e| e.locate(text))?;
        settings.decision.warnings.extend(env_warnings);
        Ok(settings)
    }
}

fn validate(
    file: FileConfig,
    base: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Settings, ConfigError> {
    if file.issuers.is_empty() && file.introspection.is_none() {
        return Err(ConfigError::new(
            "issuers",
            "at least one issuer (or introspection) is required",
        ));
    }
    if let Some(i) = file.issuers.iter().position(|i| i.cluster.is_some()) {
        return Err(ConfigError::new(
            format!("issuers[{i}].cluster"),
            "only the Envoy module fetches keys through an Envoy cluster; the service fetches \
             jwks_uri and discovery itself (remove cluster)",
        ));
    }
    if file.module.is_some() {
        return Err(ConfigError::new(
            "module",
            "only the Envoy module reads this key (the service's answer carries its metadata \
             to Envoy's ext_authz filter); remove it",
        ));
    }
    let mut decision = file.decision_settings(base)?;
    let listen_text = file.listen.as_deref().unwrap_or("127.0.0.1:50051");
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::new("listen", format!("not a socket address: {listen_text:?}"))
    })?;
    let admin_listen = match file
        .admin_listen
        .as_deref()
        .unwrap_or("127.0.0.1:9090")
        .trim()
    {
        "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new("admin_listen", format!("not a socket address: {text:?}"))
        })?),
    };
    let tls = file
        .tls
        .map(|tls| tls_settings(tls, base, "tls"))
        .transpose()?;
    let forward_auth = forward_auth::validate(file.forward_auth, base)?;
    let traces =
        crate::telemetry::TracesSettings::validate(file.telemetry.and_then(|t| t.traces), env)?;
    let max_concurrent_checks = file.limits.max_concurrent_checks.unwrap_or(4096);
    if max_concurrent_checks == 0 {
        return Err(ConfigError::new(
            "limits.max_concurrent_checks",
            "must be positive",
        ));
    }
    let connections = crate::listener::ConnectionLimits::validate(&file.limits.connections)?;
    let idp_ca_file = file.idp_ca_file.map(|path| resolve(path, base));
    if let Some(path) = &idp_ca_file
        && !path.exists()
    {
        return Err(ConfigError::new(
            "idp_ca_file",
            format!("{} does not exist", path.display()),
        ));
    }
    let introspection = match file.introspection {
        None => None,
        Some(config) => {
            let (introspection_policy, settings, warning) = introspection(config, base, env)?;
            decision.policy.introspection = Some(introspection_policy);
            decision.warnings.extend(warning);
            Some(settings)
        }
    };
    let reload = file.reload.unwrap_or_default();
    Ok(Settings {
        listen,
        admin_listen,
        tls,
        forward_auth,
        traces,
        max_concurrent_checks,
        connections,
        watch_interval: reload
            .watch
            .then(|| Duration::from_secs(reload.poll_interval_seconds.max(1))),
        log_format: file.log_format.unwrap_or_default(),
        decision,
        worker_threads: file.runtime.unwrap_or_default().worker_threads,
        introspection,
        idp_ca_file,
    })
}

/// A listener's TLS files, which must exist (`key` names the setting in errors).
fn tls_settings(
    tls: schema::TlsConfig,
    base: Option<&Path>,
    key: &str,
) -> Result<TlsSettings, ConfigError> {
    let settings = TlsSettings {
        cert_file: resolve(tls.cert_file, base),
        key_file: resolve(tls.key_file, base),
        client_ca_file: tls.client_ca_file.map(|p| resolve(p, base)),
    };
    for (field, path) in [
        ("cert_file", Some(&settings.cert_file)),
        ("key_file", Some(&settings.key_file)),
        ("client_ca_file", settings.client_ca_file.as_ref()),
    ] {
        if let Some(path) = path
            && !path.exists()
        {
            return Err(ConfigError::new(
                format!("{key}.{field}"),
                format!("{} does not exist", path.display()),
            ));
        }
    }
    Ok(settings)
}

/// RFC 7662 settings: where the endpoint is (URL rules as for keys), the client's credentials
/// (from a file or an environment variable, never logged), and what answers must say.
fn introspection(
    config: IntrospectionConfig,
    base: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<(IntrospectionPolicy, IntrospectionSettings, Option<String>), ConfigError> {
    let opt_in = "introspection.allow_insecure_http";
    let warning = match (&config.endpoint, &config.issuer) {
        (Some(endpoint), _) => check_url(
            endpoint,
            config.allow_insecure_http,
            "introspection.endpoint",
            opt_in,
        )?,
        (None, Some(issuer)) => check_url(
            issuer,
            config.allow_insecure_http,
            "introspection.issuer",
            opt_in,
        )?,
        (None, None) => {
            return Err(ConfigError::new(
                "introspection.endpoint",
                "set endpoint, or issuer for discovery",
            ));
        }
    };
    if config.client_id.is_empty() {
        return Err(ConfigError::new(
            "introspection.client_id",
            "must not be empty",
        ));
    }
    let secret = match (&config.client_secret_file, &config.client_secret_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "introspection.client_secret_file",
                "set client_secret_file or client_secret_env, not both",
            ));
        }
        (Some(path), None) => {
            let (_, bytes) = read_resolved(path, base)
                .map_err(|why| ConfigError::new("introspection.client_secret_file", why))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                ConfigError::new("introspection.client_secret_file", "is not UTF-8 text")
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
        i64::try_from(v).map_err(|_| ConfigError::new(format!("introspection.{key}"), "too large"))
    };
    let policy = IntrospectionPolicy {
        introspect_jwts: config.introspect_jwts,
        issuer: config.issuer.clone().filter(|_| config.check_issuer),
        audiences: config.audiences,
    };
    let settings = IntrospectionSettings {
        endpoint: config.endpoint,
        discovery_issuer: config.issuer,
        client_id: config.client_id,
        client_secret: Secret::new(secret),
        auth_method: config.auth_method,
        cache_ttl_seconds: seconds(config.cache_ttl_seconds, "cache_ttl_seconds")?,
        inactive_cache_ttl_seconds: seconds(
            config.inactive_cache_ttl_seconds,
            "inactive_cache_ttl_seconds",
        )?,
        cache_max_entries: config.cache_max_entries,
        timeout: Duration::from_millis(config.timeout_ms.max(1)),
    };
    Ok((policy, settings, warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use certbound_core::config::ReplayMode;
    use certbound_core::jwa::Algorithm;
    use certbound_core::keys::KeySource;
    use certbound_core::{BindingMode, CertificateSource};

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
        assert_eq!(s.decision.policy.leeway_seconds, 60);
        assert_eq!(s.decision.policy.binding, BindingMode::Required);
        assert_eq!(
            s.decision.policy.certificate_sources,
            [CertificateSource::Peer]
        );
        assert_eq!(s.decision.policy.issuers[0].algorithms, Algorithm::ALL);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(
            s.decision.key_sources[0].1,
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
        assert_eq!(s.decision.policy.issuers.len(), 2);
        assert!(s.decision.policy.issuers[0].require_typ);
        assert_eq!(
            s.decision.key_sources[0].1,
            KeySource::Discovery {
                issuer: "https://idp.example.com".into()
            }
        );
        assert_eq!(s.decision.policy.binding, BindingMode::WhenPresent);
        assert_eq!(
            s.decision.policy.upstream.claim_headers,
            [("sub".to_string(), "x-sub".into())]
        );
        assert!(s.decision.policy.upstream.remove_authorization);
    }

    #[test]
    fn every_supported_algorithm_can_be_pinned() {
        let s = load(&format!(
            "{MINIMAL}    algorithms: [ES512, Ed25519, EdDSA, ES256, PS512]\n"
        ))
        .expect("valid");
        assert_eq!(
            s.decision.policy.issuers[0].algorithms,
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
                ("CERTBOUND_CONFIG", "/etc/certbound/certbound.yaml"),
            ],
        )
        .expect("valid");
        assert_eq!(s.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(s.decision.policy.leeway_seconds, 5);
        assert_eq!(s.decision.policy.binding, BindingMode::Disabled);
        assert_eq!(s.decision.warnings.len(), 1, "{:?}", s.decision.warnings);
        assert!(
            s.decision.warnings[0].contains("CERTBOUND_UNRELATED"),
            "{:?}",
            s.decision.warnings
        );
    }

    #[test]
    fn the_redis_url_can_come_from_the_environment_and_is_never_printed() {
        let text = format!("{MINIMAL}dpop:\n  enabled: true\n  replay:\n    store: redis\n");
        let err = load_env(&text, &[]).expect_err("a url is needed");
        assert_eq!(err.key, "dpop.replay.url");
        let url = "redis://:hunter2@redis.example:6379/0";
        let s = load_env(&text, &[("CERTBOUND_DPOP__REPLAY__URL", url)]).expect("valid");
        let replay = s.decision.replay.expect("replay settings");
        assert_eq!(replay.url.as_deref(), Some(url));
        assert!(!format!("{replay:?}").contains("hunter2"));
        let bad = load_env(
            &text,
            &[("CERTBOUND_DPOP__REPLAY__URL", "http://:hunter2@x")],
        );
        let err = bad.expect_err("not a redis URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn cluster_and_sentinel_modes_are_validated_at_the_users_line() {
        let base = format!("{MINIMAL}dpop:\n  enabled: true\n  replay:\n    store: redis\n");
        let cluster = format!("{base}    mode: cluster\n");
        let err = load_env(&cluster, &[]).expect_err("seeds needed");
        assert_eq!(err.key, "dpop.replay.urls", "{err}");
        let s = load_env(
            &cluster,
            &[(
                "CERTBOUND_DPOP__REPLAY__URLS",
                "redis://:s3cret@a:7000, redis://b:7001",
            )],
        )
        .expect("valid");
        let replay = s.decision.replay.expect("replay");
        assert_eq!(replay.mode, ReplayMode::Cluster);
        assert_eq!(replay.urls.len(), 2);
        assert!(!format!("{replay:?}").contains("s3cret"));
        let mixed = format!("{cluster}    urls: [redis://a:1, rediss://b:2]\n");
        assert_eq!(
            load_env(&mixed, &[]).expect_err("mixed").key,
            "dpop.replay.urls"
        );
        let with_url = format!("{cluster}    url: redis://a:1\n    urls: [redis://a:1]\n");
        assert_eq!(
            load_env(&with_url, &[]).expect_err("url").key,
            "dpop.replay.url"
        );
        let sentinel = format!("{base}    mode: sentinel\n    urls: [redis://s:26379]\n");
        let err = load_env(&sentinel, &[]).expect_err("a master name is needed");
        assert_eq!(err.key, "dpop.replay.sentinel.master_name", "{err}");
        assert!(
            err.to_string().contains("line"),
            "at the user's line: {err}"
        );
        let s = load_env(
            &sentinel,
            &[("CERTBOUND_DPOP__REPLAY__SENTINEL__MASTER_NAME", "mymaster")],
        )
        .expect("valid");
        assert_eq!(
            s.decision.replay.expect("replay").master_name.as_deref(),
            Some("mymaster")
        );
        let stray = format!("{base}    url: redis://a:1\n    sentinel:\n      master_name: m\n");
        assert_eq!(
            load_env(&stray, &[]).expect_err("not sentinel").key,
            "dpop.replay.sentinel.master_name"
        );
    }

    #[test]
    fn a_bad_environment_override_names_its_variable() {
        let err = load_env(MINIMAL, &[("CERTBOUND_LEEWAY_SECONDS", "abc")]).expect_err("bad");
        assert_eq!(err.key, "CERTBOUND_LEEWAY_SECONDS", "{err}");
        assert!(err.message.contains("\"abc\""), "{err}");
        let err = load_env(MINIMAL, &[("CERTBOUND_BINDING__MODE", "sometimes")]).expect_err("bad");
        assert_eq!(err.key, "CERTBOUND_BINDING__MODE", "{err}");
        let err = load_env(MINIMAL, &[("CERTBOUND_LISTEN", "nope")]).expect_err("bad");
        assert_eq!(
            err.key, "listen",
            "a listen value is validated as the key it sets"
        );
    }

    /// DPoP without a pinned origin: the htu is compared with a host the client may choose.
    #[test]
    fn dpop_without_a_public_base_url_is_a_warning() {
        let warned = |text: &str| {
            load(text)
                .unwrap()
                .decision
                .warnings
                .iter()
                .any(|w| w.contains("dpop.public_base_url is not set"))
        };
        assert!(warned(&format!("{MINIMAL}dpop: {{enabled: true}}\n")));
        assert!(!warned(&format!(
            "{MINIMAL}dpop: {{enabled: true, public_base_url: https://api.example.com}}\n"
        )));
        assert!(!warned(MINIMAL));
    }

    /// Kubernetes sets these in every pod of a namespace that has a Service named `certbound`:
    /// they must never stop certbound, only be mentioned.
    #[test]
    fn kubernetes_service_links_are_warnings_not_errors() {
        let links = [
            ("CERTBOUND_SERVICE_HOST", "10.96.0.12"),
            ("CERTBOUND_SERVICE_PORT", "50051"),
            ("CERTBOUND_SERVICE_PORT_GRPC", "50051"),
            ("CERTBOUND_PORT", "tcp://10.96.0.12:50051"),
            ("CERTBOUND_PORT_50051_TCP", "tcp://10.96.0.12:50051"),
            ("CERTBOUND_PORT_50051_TCP_PROTO", "tcp"),
            ("CERTBOUND_PORT_50051_TCP_PORT", "50051"),
            ("CERTBOUND_PORT_50051_TCP_ADDR", "10.96.0.12"),
        ];
        let s = load_env(MINIMAL, &links).expect("service links never stop certbound");
        assert_eq!(s.decision.warnings.len(), links.len());
        for (name, _) in links {
            assert!(
                s.decision
                    .warnings
                    .iter()
                    .any(|w| w.contains(name) && w.contains("enableServiceLinks")),
                "{name}: {:?}",
                s.decision.warnings
            );
        }
    }

    #[test]
    fn a_jwks_file_must_exist_and_hold_usable_keys() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let config = |path: &Path| {
            format!(
                "issuers:\n  - issuer: https://idp.example.com\n    audiences: [a]\n    jwks_file: {}\n",
                path.display()
            )
        };
        let err = load(&config(&missing)).expect_err("missing");
        assert_eq!(err.key, "issuers[0].jwks_file");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("cannot read"), "{err}");
        for (name, content, why) in [
            ("text.json", "not json", "not JSON"),
            ("nokeys.json", "{}", "no \"keys\""),
            (
                "hmac.json",
                r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
                "no usable signing key: h (symmetric keys are never accepted)",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let err = load(&config(&path)).expect_err(name);
            assert_eq!(err.key, "issuers[0].jwks_file", "{err}");
            assert!(err.message.contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn plain_http_needs_loopback_or_an_explicit_opt_in() {
        let issuer = |extra: &str| {
            format!("issuers:\n  - issuer: http://idp.example.com\n    audiences: [a]\n{extra}")
        };
        let err = load(&issuer("")).expect_err("http discovery");
        assert_eq!(err.key, "issuers[0].issuer");
        let err = load(&issuer("    jwks_uri: http://keys.example.com/jwks\n")).expect_err("http");
        assert_eq!(
            (err.key.as_str(), err.line),
            ("issuers[0].jwks_uri", Some(4))
        );
        let s = load(&issuer("    allow_insecure_http: true\n")).expect("opted in");
        assert!(
            s.decision.warnings.iter().any(|w| w.contains("plain HTTP")),
            "{:?}",
            s.decision.warnings
        );
        let loopback = "issuers:\n  - issuer: http://127.0.0.1:8080\n    audiences: [a]\n";
        assert!(
            load(loopback)
                .expect("loopback")
                .decision
                .warnings
                .is_empty()
        );
        let intro = "introspection:\n  endpoint: http://idp.example.com/introspect\n  client_id: c\n  client_secret_env: S\n";
        let err = load_env(intro, &[("S", "x")]).expect_err("http introspection");
        assert_eq!(err.key, "introspection.endpoint");
        let opted = format!("{intro}  allow_insecure_http: true\n");
        let s = load_env(&opted, &[("S", "x")]).expect("opted in");
        assert_eq!(s.decision.warnings.len(), 1);
    }

    #[test]
    fn the_module_only_cluster_key_is_refused() {
        let err = load(&format!("{MINIMAL}    cluster: idp\n")).expect_err("cluster");
        assert_eq!(err.key, "issuers[0].cluster");
    }

    #[test]
    fn the_module_only_section_is_refused() {
        let err =
            load(&format!("{MINIMAL}module: {{dynamic_metadata: false}}\n")).expect_err("module");
        assert_eq!(err.key, "module");
        assert!(err.message.contains("only the Envoy module"), "{err}");
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
        assert!(s.decision.policy.issuers.is_empty());
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
        assert_eq!(s.decision.key_timing.max_stale_seconds, 60);
        assert_eq!(s.decision.key_timing.readiness, Readiness::Any);
        assert_eq!(s.decision.key_timing.retry_max, Duration::from_secs(30));
        let s = load(&format!(
            "{MINIMAL}keys:\n  min_refresh_seconds: 1\n  max_refresh_seconds: 10\n"
        ))
        .expect("valid");
        assert_eq!(
            s.decision.key_timing.retry_max,
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
        let routes = &s.decision.policy.routes;
        assert_eq!(routes.groups_claim, "roles");
        assert_eq!(routes.rules.len(), 2);
        assert_eq!(&*routes.rules[1].name, "rules[1]");
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
