//! The configuration file as written: one schema for both adapters. Every key is documented
//! here and in docs/src/configuration.md (tests/config_reference.rs keeps the two in step);
//! which adapter accepts which key is decided by its validation
//! ([`FileConfig::decision_settings`] for what both share, the adapters for the rest).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::binding::BindingMode;
use crate::keys::Readiness;
use crate::request::CertificateSource;

/// The configuration file as written. Keys only the service understands are `Option`s without
/// defaults here, so that the Envoy module can tell that they were written and refuse them; the
/// service applies their defaults when it validates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Service: gRPC listen address (default `127.0.0.1:50051`).
    pub listen: Option<String>,
    /// JWT issuers; may be empty when every token is introspected.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Service: opaque tokens (and optionally JWTs) are checked by RFC 7662 introspection.
    pub introspection: Option<IntrospectionConfig>,
    /// Service: extra CA certificates (PEM) trusted for the IdP (discovery, JWKS, introspection).
    pub idp_ca_file: Option<PathBuf>,
    /// Service: admin HTTP listener, `/metrics`, `/healthz`, `/readyz`; empty to turn it off
    /// (default `127.0.0.1:9090`).
    pub admin_listen: Option<String>,
    /// Service: TLS on the gRPC listener (Envoy to certbound).
    pub tls: Option<TlsConfig>,
    /// Service: the HTTP authorization API, for NGINX, Traefik, Caddy, HAProxy and Envoy's
    /// `http_service` (off unless `listen` is set).
    pub forward_auth: Option<ForwardAuthConfig>,
    /// Service: reload when the file changes.
    pub reload: Option<ReloadConfig>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default)]
    pub binding: BindingConfig,
    #[serde(default)]
    pub certificate: CertificateConfig,
    /// Service: `text` (default) or `json` logs.
    pub log_format: Option<LogFormat>,
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
    /// Service: the async runtime.
    pub runtime: Option<RuntimeConfig>,
    /// DPoP (RFC 9449), the other sender constraint.
    #[serde(default)]
    pub dpop: DpopConfig,
    /// Service: OpenTelemetry export.
    pub telemetry: Option<TelemetryConfig>,
    /// Protected resources: RFC 9728 metadata, `resource_metadata` in challenges, RFC 8707
    /// audiences.
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    /// Envoy module: what it hands Envoy besides the answer (the service refuses it).
    pub module: Option<ModuleConfig>,
}

/// The Envoy module's own settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// Set the decision as Envoy dynamic metadata (namespace `certbound`: decision, reason,
    /// rule, iss, sub, client_id, scope, x5t#S256, jkt) on every check, for access logs and later
    /// filters: `true` (the default) every field, `false` none, or a list of the fields that
    /// something reads (each costs Envoy a `Struct` entry per request).
    #[serde(default = "default_dynamic_metadata")]
    pub dynamic_metadata: DynamicMetadataConfig,
}

/// `module.dynamic_metadata`: all fields, none, or the ones named.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum DynamicMetadataConfig {
    All(bool),
    Fields(Vec<String>),
}

/// One protected resource (RFC 9728): its identifier and the requests it covers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// The resource identifier (`https://mcp.example.com/mcp`): the metadata's `resource`, byte
    /// for byte, and the audience tokens must carry.
    pub id: String,
    /// The requests it covers, whole segments (default: the identifier's path).
    pub path_prefix: Option<String>,
    /// The authorization servers clients are sent to; default every configured issuer. When
    /// set, tokens under the resource must come from one of them.
    pub authorization_servers: Option<Vec<String>>,
    /// Default: the scopes the rules under `path_prefix` (and `policy.default`) require.
    pub scopes_supported: Option<Vec<String>>,
    /// `aud` must contain one of these under the resource (default: `[id]`); `[]` leaves only
    /// the issuers' and rules' audience checks.
    pub audiences: Option<Vec<String>>,
    /// Refuse tokens that are not DPoP-bound under the resource (needs `dpop.enabled`).
    #[serde(default)]
    pub dpop_bound_access_tokens_required: bool,
    /// RFC 9728's descriptive members, published as written.
    pub resource_name: Option<String>,
    pub resource_documentation: Option<String>,
    pub resource_policy_uri: Option<String>,
    pub resource_tos_uri: Option<String>,
}

/// OpenTelemetry export (the service; the module's requests are traced by Envoy's own tracer).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub traces: Option<TracesConfig>,
}

/// One span per check, exported over OTLP (gRPC or HTTP). Off unless an endpoint is set here or in
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`; the standard `OTEL_*`
/// variables apply where a key is left out.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector: `http://otel-collector:4317` (gRPC), `http://otel-collector:4318`
    /// (HTTP; `/v1/traces` is added to a URL without a path).
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; default `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, else `grpc`.
    pub protocol: Option<OtlpProtocol>,
    /// Share of new traces sampled (0..1), parent-based: a caller's sampling decision is
    /// followed. Default `OTEL_TRACES_SAMPLER`, else every trace.
    pub sample_ratio: Option<f64>,
    /// Default `OTEL_SERVICE_NAME`, else `certbound`.
    pub service_name: Option<String>,
    /// Sent with every export (an API key); `OTEL_EXPORTER_OTLP_HEADERS` also applies.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest an export may take (default 5000).
    pub timeout_ms: Option<u64>,
    /// Spans waiting for export; beyond it new spans are dropped and counted (default 4096).
    pub max_queue: Option<usize>,
}

/// How spans travel to the collector (the OTLP specification's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The specification's name (`OTEL_EXPORTER_OTLP_PROTOCOL`'s values).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

/// DPoP (RFC 9449): tokens bound to a key the client proves it holds on every request.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopConfig {
    /// Accept `Authorization: DPoP` with a `DPoP` proof (default off).
    #[serde(default)]
    pub enabled: bool,
    /// Algorithms a proof may use; default every supported asymmetric one.
    pub algorithms: Option<Vec<String>>,
    /// How old a proof's `iat` may be (default 60).
    #[serde(default = "default_dpop_max_age")]
    pub max_age_seconds: u64,
    /// How far in the future a proof's `iat` may be, for clock skew (default 5).
    #[serde(default = "default_dpop_leeway")]
    pub leeway_seconds: u64,
    /// The base URL clients reach this API at (`https://api.example.com`), when a proxy in front
    /// of Envoy changes scheme or host; proofs' `htu` are compared with it plus the path.
    pub public_base_url: Option<String>,
    /// Take scheme and host from `x-forwarded-proto` / `x-forwarded-host`: only behind a proxy
    /// that sets them (never trusted otherwise).
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    #[serde(default)]
    pub replay: ReplayConfig,
    /// Require server nonces (RFC 9449 §8).
    pub nonce: Option<NonceConfig>,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithms: None,
            max_age_seconds: default_dpop_max_age(),
            leeway_seconds: default_dpop_leeway(),
            public_base_url: None,
            trust_forwarded_headers: false,
            replay: ReplayConfig::default(),
            nonce: None,
        }
    }
}

/// Where used proofs are remembered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayStoreKind {
    /// In this process (one replica).
    #[default]
    Memory,
    /// Service: in Redis (or Valkey), shared by every replica.
    Redis,
}

/// How Redis is deployed, for `store: redis`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayMode {
    /// One server (or a proxy in front of several): `url`.
    #[default]
    Standalone,
    /// Redis Cluster: `urls` are seed nodes; slots and redirections are followed.
    Cluster,
    /// Behind Sentinel: `urls` are the sentinels, `sentinel.master_name` the monitored master;
    /// a failover is followed.
    Sentinel,
}

/// `dpop.replay.sentinel`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    pub master_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    #[serde(default)]
    pub store: ReplayStoreKind,
    /// `standalone` (default), `cluster` or `sentinel`, for `store: redis`.
    #[serde(default)]
    pub mode: ReplayMode,
    /// `redis://host:port[/db]` (or `rediss://`), for `store: redis` in standalone mode.
    pub url: Option<String>,
    /// Cluster seed nodes, or the sentinels (`redis://host:port`, `rediss://` for TLS).
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub sentinel: SentinelConfig,
    /// Bound on the in-memory store; when full of live proofs, checks answer 503 (default 200000).
    #[serde(default = "default_replay_entries")]
    pub max_entries: usize,
    /// Live proofs one DPoP key may hold in the in-memory store; past it only that key's
    /// requests get 503 (default 10000: one client cannot fill the store for the others).
    #[serde(default = "default_replay_per_key")]
    pub max_per_key: usize,
    /// Longest wait for Redis; then 503 `replay_store_unavailable` (default 250).
    #[serde(default = "default_replay_timeout")]
    pub timeout_ms: u64,
    /// Prefix of the Redis keys (default `certbound:dpop:`).
    #[serde(default = "default_replay_prefix")]
    pub key_prefix: String,
    /// PEM CA bundle that signs the Redis server's certificate (`rediss://` only; default: the
    /// system's trust store).
    pub ca_file: Option<PathBuf>,
    /// Redis: a proof counts as recorded only once this many replicas acknowledged it (`WAIT`,
    /// within `timeout_ms`); fewer is a 503. 0 (default) trusts the master's answer, and a
    /// failover right after a write can forget that proof (replication is asynchronous).
    #[serde(default)]
    pub wait_replicas: u32,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            store: ReplayStoreKind::Memory,
            mode: ReplayMode::Standalone,
            url: None,
            urls: Vec::new(),
            sentinel: SentinelConfig::default(),
            max_entries: default_replay_entries(),
            max_per_key: default_replay_per_key(),
            timeout_ms: default_replay_timeout(),
            key_prefix: default_replay_prefix(),
            ca_file: None,
            wait_replicas: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceConfig {
    /// A file with the secret (at least 16 bytes) every replica shares.
    pub secret_file: PathBuf,
    /// How long a nonce is current; it is accepted for twice that (default 60).
    #[serde(default = "default_nonce_lifetime")]
    pub lifetime_seconds: u64,
}

fn default_dpop_max_age() -> u64 {
    60
}
fn default_dpop_leeway() -> u64 {
    5
}
fn default_replay_entries() -> usize {
    200_000
}
fn default_replay_per_key() -> usize {
    10_000
}
fn default_replay_timeout() -> u64 {
    250
}
fn default_replay_prefix() -> String {
    "certbound:dpop:".into()
}
fn default_nonce_lifetime() -> u64 {
    60
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
    /// Accept `http://` for the issuer's discovery and `jwks_uri` on a host that is not
    /// loopback: anyone on the path could swap the keys. For test setups only.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Envoy module: the Envoy cluster through which `jwks_uri` and discovery are fetched.
    pub cluster: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, Envoy must present a client certificate issued by this CA (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// The HTTP authorization API ("forward auth"): every path on its listener is a check of the
/// request the proxy describes in its headers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// `127.0.0.1:9292`; absent or `''` turns the API off. HTTP/1.1 and h2c (or h2 with `tls`).
    pub listen: Option<String>,
    /// TLS on this listener, as `tls` for the gRPC one.
    pub tls: Option<TlsConfig>,
    /// CIDRs whose forwarded headers and certificate header are believed (default loopback
    /// only); any other peer's check is denied (`proxy_untrusted`).
    pub trusted_peers: Option<Vec<String>>,
    /// The one header the proxy describes each part of the original request in. A check that
    /// carries another header a client could use to name a method, path, host or scheme, or
    /// two values of one, is refused (`request_invalid`).
    #[serde(default)]
    pub headers: ForwardedHeadersConfig,
    /// Envoy `http_service`: the check request's own method and path are the original ones,
    /// after this `path_prefix` (the one in Envoy's config) is removed; its Host is the
    /// original host.
    pub path_prefix: Option<String>,
}

/// The header a proxy describes each part of the original request in: one name per part, the
/// header the proxy sets and overwrites (a client's copy never survives it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedHeadersConfig {
    #[serde(default = "default_method_header")]
    pub method: String,
    /// Path and query, as the client sent them.
    #[serde(default = "default_uri_header")]
    pub uri: String,
    #[serde(default = "default_host_header")]
    pub host: String,
    #[serde(default = "default_proto_header")]
    pub proto: String,
}

impl Default for ForwardedHeadersConfig {
    fn default() -> Self {
        Self {
            method: default_method_header(),
            uri: default_uri_header(),
            host: default_host_header(),
            proto: default_proto_header(),
        }
    }
}

fn default_method_header() -> String {
    "x-forwarded-method".into()
}

fn default_uri_header() -> String {
    "x-forwarded-uri".into()
}

fn default_host_header() -> String {
    "x-forwarded-host".into()
}

fn default_proto_header() -> String {
    "x-forwarded-proto".into()
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
    /// Accept an `http://` endpoint (or discovery issuer) on a host that is not loopback.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

/// How certbound authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with the form-encoded client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
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
    /// With `header`: the header a proxy writes the client certificate into, and how.
    pub header: Option<CertificateHeaderConfig>,
}

impl Default for CertificateConfig {
    fn default() -> Self {
        Self {
            sources: default_sources(),
            xfcc_by: None,
            header: None,
        }
    }
}

/// A proxy's certificate header: `{name: x-ssl-client-cert, encoding: pem_url}` behind NGINX,
/// `{name: x-forwarded-tls-client-cert, encoding: der_base64}` behind Traefik.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateHeaderConfig {
    pub name: String,
    pub encoding: crate::certificate::HeaderEncoding,
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
    /// `%2F` / `%5C` in a path: `reject` (400 `path_unsafe`) or `keep` (inside the segment).
    #[serde(default)]
    pub escaped_slashes: crate::path::EscapedSlashes,
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
    // The requirements, as in `policy.default`. Spelled out rather than `#[serde(flatten)]`:
    // with flatten, a typo's error cannot list the keys a rule accepts.
    #[serde(default)]
    pub allow_anonymous: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub match_all: bool,
    pub binding: Option<BindingMode>,
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// RFC 9470: the token's `acr` must be one of these.
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// RFC 9470: the token's `auth_time` must be no older than this.
    pub max_age_seconds: Option<u64>,
}

impl RuleConfig {
    /// What a request matching this rule must present.
    pub fn requirements(&self) -> RequirementsConfig {
        RequirementsConfig {
            allow_anonymous: self.allow_anonymous,
            scopes: self.scopes.clone(),
            groups: self.groups.clone(),
            match_all: self.match_all,
            binding: self.binding,
            issuers: self.issuers.clone(),
            audiences: self.audiences.clone(),
            acr_values: self.acr_values.clone(),
            max_age_seconds: self.max_age_seconds,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// RFC 9470: the token's `acr` must be one of these.
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// RFC 9470: the token's `auth_time` must be no older than this.
    pub max_age_seconds: Option<u64>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: RequirementsConfig::default(),
            groups_claim: default_groups_claim(),
            allow_cors_preflight: false,
            escaped_slashes: crate::path::EscapedSlashes::default(),
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
    /// Strip `authorization` (and `dpop`, the proof that goes with the token) before the
    /// upstream sees the request.
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
    /// Service: checks decided at once; more get 503 (`overloaded`) at once instead of queueing
    /// (default 4096).
    pub max_concurrent_checks: Option<usize>,
    /// Service: what a connection to any of its listeners may hold.
    #[serde(default)]
    pub connections: ConnectionLimitsConfig,
}

/// How many connections each listener keeps open, and for how long a silent one is kept.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimitsConfig {
    /// Open connections per listener (gRPC, forward_auth); beyond, a new one is closed at once.
    /// The admin listener keeps at most 64.
    #[serde(default = "default_max_open")]
    pub max_open: usize,
    /// forward_auth: connections from peers outside `trusted_peers`, each answered one 403 and
    /// closed; beyond, closed at once.
    #[serde(default = "default_untrusted_max_open")]
    pub untrusted_max_open: usize,
    /// A connection that sends nothing (not even a TLS hello) for this long is closed.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout_seconds: u64,
    /// A connection on which nothing is read or written for this long is closed (HTTP/1
    /// keep-alive and idle HTTP/2 alike; a check in progress is never that slow).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// A request's headers, all together (HTTP/1 buffer, HTTP/2 header list).
    #[serde(default = "default_max_request_header_bytes")]
    pub max_request_header_bytes: usize,
}

impl Default for ConnectionLimitsConfig {
    fn default() -> Self {
        Self {
            max_open: default_max_open(),
            untrusted_max_open: default_untrusted_max_open(),
            first_byte_timeout_seconds: default_first_byte_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            max_request_header_bytes: default_max_request_header_bytes(),
        }
    }
}

fn default_max_open() -> usize {
    1024
}

fn default_untrusted_max_open() -> usize {
    64
}

fn default_first_byte_timeout() -> u64 {
    10
}

fn default_idle_timeout() -> u64 {
    300
}

fn default_max_request_header_bytes() -> usize {
    96 * 1024
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_token_bytes: default_max_token_bytes(),
            max_header_bytes: default_max_header_bytes(),
            max_concurrent_checks: None,
            connections: ConnectionLimitsConfig::default(),
        }
    }
}

fn default_dynamic_metadata() -> DynamicMetadataConfig {
    DynamicMetadataConfig::All(true)
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
fn default_unknown_kid_wait() -> u64 {
    1000
}
fn default_max_token_bytes() -> usize {
    16 * 1024
}
