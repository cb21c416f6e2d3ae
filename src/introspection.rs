//! RFC 7662 token introspection for opaque access tokens, with a bounded cache.
//!
//! The only network call a Check may make. Answers are cached by SHA-256 of the token for
//! `min(exp, cache_ttl)` (inactive answers for `inactive_cache_ttl`); transport errors are never
//! cached. The binding and expiry are re-checked by the core on every use, cached or not.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::metrics::Metrics;
use certbound_core::cache::{TtlCache, token_key};
pub use certbound_core::config::AuthMethod;

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where the endpoint is and how to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntrospectionSettings {
    /// The endpoint; `None` means discovery (`introspection_endpoint`) at `discovery_issuer`.
    pub endpoint: Option<String>,
    pub discovery_issuer: Option<String>,
    pub client_id: String,
    pub client_secret: Secret,
    pub auth_method: AuthMethod,
    pub cache_ttl_seconds: i64,
    pub inactive_cache_ttl_seconds: i64,
    pub cache_max_entries: usize,
    pub timeout: Duration,
}

/// Why no introspection answer could be had (the Check answers 503).
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    #[error("introspection request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("introspection endpoint answered HTTP {0}")]
    Status(u16),
    /// HTTP 400 `{"error": "unsupported_token_type"}`: the server does not introspect tokens of
    /// this type (some refuse JWTs they issued).
    #[error(
        "introspection endpoint does not introspect this type of token (unsupported_token_type)"
    )]
    UnsupportedTokenType,
    #[error(
        "introspection endpoint rejected certbound's client credentials (HTTP {0}): check \
         introspection.client_id and the client secret"
    )]
    CredentialsRejected(u16),
    #[error("introspection answer is not usable: {0}")]
    BadAnswer(&'static str),
    #[error("introspection endpoint discovery failed: {0}")]
    Discovery(String),
}

/// Calls the introspection endpoint, through the cache.
pub struct Introspector {
    settings: IntrospectionSettings,
    http: reqwest::Client,
    endpoint: ArcSwapOption<String>,
    cache: TtlCache<Arc<Map<String, Value>>>,
    metrics: Arc<Metrics>,
    /// Until when (Unix seconds) JWTs are verified locally because the endpoint refused to
    /// introspect one (`unsupported_token_type`).
    jwts_refused_until: AtomicI64,
}

/// How long a refusal to introspect JWTs is remembered before the endpoint is asked again.
pub const JWT_REFUSAL_MEMORY_SECONDS: i64 = 300;

impl Introspector {
    pub fn new(
        settings: IntrospectionSettings,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        let endpoint = ArcSwapOption::new(settings.endpoint.clone().map(Arc::new));
        let cache = TtlCache::new(settings.cache_max_entries);
        Self {
            settings,
            http,
            endpoint,
            cache,
            metrics,
            jwts_refused_until: AtomicI64::new(i64::MIN),
        }
    }

    /// Whether the endpoint refused to introspect a JWT less than
    /// [`JWT_REFUSAL_MEMORY_SECONDS`] ago (JWTs are then verified locally).
    pub fn refuses_jwts(&self, now: i64) -> bool {
        now < self.jwts_refused_until.load(Ordering::Relaxed)
    }

    /// Remembers that the endpoint refused to introspect a JWT; `true` the first time (for
    /// one log line per refusal period).
    pub fn remember_jwts_refused(&self, now: i64) -> bool {
        let until = now.saturating_add(JWT_REFUSAL_MEMORY_SECONDS);
        self.jwts_refused_until.swap(until, Ordering::Relaxed) <= now
    }

    /// The authorization server's answer for `token` at `now`, cached or fresh.
    pub async fn introspect(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Arc<Map<String, Value>>, IntrospectionError> {
        let key = token_key(token);
        if let Some(answer) = self.cache.get(&key, now) {
            Metrics::count(&self.metrics.introspection_cache, "hit");
            return Ok(answer);
        }
        Metrics::count(&self.metrics.introspection_cache, "miss");
        let answer = match self.call(token).await {
            Ok(answer) => Arc::new(answer),
            Err(error) => {
                Metrics::count(&self.metrics.introspection_requests, "error");
                return Err(error);
            }
        };
        let active = answer.get("active") == Some(&Value::Bool(true));
        Metrics::count(
            &self.metrics.introspection_requests,
            if active { "active" } else { "inactive" },
        );
        let expires_at = if active {
            let ttl_end = now.saturating_add(self.settings.cache_ttl_seconds);
            match answer.get("exp").and_then(Value::as_i64) {
                Some(exp) => exp.min(ttl_end),
                None => ttl_end,
            }
        } else {
            now.saturating_add(self.settings.inactive_cache_ttl_seconds)
        };
        self.cache.insert(key, Arc::clone(&answer), expires_at, now);
        Ok(answer)
    }

    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    async fn call(&self, token: &str) -> Result<Map<String, Value>, IntrospectionError> {
        let endpoint = self.endpoint().await?;
        let s = &self.settings;
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let mut request = self.http.post(endpoint.as_str()).timeout(s.timeout);
        match s.auth_method {
            AuthMethod::ClientSecretBasic => {
                let encode = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
                let credentials = format!(
                    "{}:{}",
                    encode(&s.client_id),
                    encode(s.client_secret.expose())
                );
                request = request.header(
                    "authorization",
                    format!("Basic {}", STANDARD.encode(credentials)),
                );
            }
            AuthMethod::ClientSecretPost => {
                form.push(("client_id", &s.client_id));
                form.push(("client_secret", s.client_secret.expose()));
            }
        }
        let response = request
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            401 | 403 => {
                let error = IntrospectionError::CredentialsRejected(status);
                tracing::error!(%error, "introspection");
                return Err(error);
            }
            400 => {
                let body = response.bytes().await.unwrap_or_default();
                let error = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
                return Err(match error.as_deref() {
                    Some("unsupported_token_type") => IntrospectionError::UnsupportedTokenType,
                    _ => IntrospectionError::Status(status),
                });
            }
            _ => return Err(IntrospectionError::Status(status)),
        }
        let body = response.bytes().await?;
        let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&body) else {
            return Err(IntrospectionError::BadAnswer("not a JSON object"));
        };
        if !answer.get("active").is_some_and(Value::is_boolean) {
            return Err(IntrospectionError::BadAnswer("no boolean \"active\""));
        }
        Ok(answer)
    }

    async fn endpoint(&self) -> Result<Arc<String>, IntrospectionError> {
        if let Some(endpoint) = self.endpoint.load_full() {
            return Ok(endpoint);
        }
        let issuer = self
            .settings
            .discovery_issuer
            .as_deref()
            .ok_or_else(|| IntrospectionError::Discovery("no endpoint and no issuer".into()))?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let response = self
            .http
            .get(&url)
            .timeout(self.settings.timeout)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(IntrospectionError::Discovery(format!(
                "{url}: HTTP {}",
                response.status().as_u16()
            )));
        }
        let document: Value = response.json().await?;
        let endpoint = document
            .get("introspection_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                IntrospectionError::Discovery(format!("{url}: no introspection_endpoint"))
            })?;
        let endpoint = Arc::new(endpoint.to_owned());
        self.endpoint.store(Some(Arc::clone(&endpoint)));
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(secret.expose(), "hunter2");
    }
}
