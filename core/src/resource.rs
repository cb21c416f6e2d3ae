//! Protected resources (`resources`): RFC 9728 metadata that clients discover, the
//! `resource_metadata` their challenges point at, and the RFC 8707 audience a token must carry
//! under them.
//!
//! Everything a request needs is built once per configuration: the metadata document's bytes,
//! its well-known path, and the challenge parameter. A request only looks its resource up.

use std::sync::Arc;

/// Where RFC 9728 §3 publishes metadata: inserted between the host and the resource's path.
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// `Cache-Control` of the metadata document: public, and re-read within minutes of a reload.
pub const METADATA_CACHE_CONTROL: &str = "public, max-age=300";

/// One protected resource, validated.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// The identifier exactly as configured (the metadata's `resource`, RFC 9728 §3.3).
    pub id: String,
    /// Canonical path prefix of the requests it covers, segment by segment (`/mcp` covers
    /// `/mcp` and `/mcp/...`, not `/mcpx`).
    pub path_prefix: String,
    /// The authorization servers a token under this resource must come from, when configured
    /// (the default names every configured issuer, which the token's is already one of).
    pub authorization_servers: Option<Vec<String>>,
    /// `aud` must contain one of these (default: the identifier); empty: no resource audience.
    pub audiences: Vec<String>,
    /// Tokens must be DPoP-bound (RFC 9449) under this resource.
    pub dpop_required: bool,
    /// The metadata URL derived from the identifier (RFC 9728 §3.1), never from a request.
    pub metadata_url: String,
    /// The canonical path the metadata is served at.
    pub well_known_path: String,
    /// The metadata document, serialised once.
    pub document: String,
    /// `, resource_metadata="<metadata_url>"`, appended to challenges.
    challenge_param: String,
    /// The challenge to a request without credentials (DPoP off), built once.
    bearer_challenge: String,
}

impl Resource {
    /// Builds a resource from validated parts; `document` is the metadata JSON.
    pub fn new(
        id: String,
        path_prefix: String,
        authorization_servers: Option<Vec<String>>,
        audiences: Vec<String>,
        dpop_required: bool,
        document: String,
    ) -> Option<Self> {
        let (origin, path) = split_identifier(&id)?;
        let path = if path == "/" { "" } else { path };
        let metadata_url = format!("{origin}{WELL_KNOWN_PREFIX}{path}");
        let well_known_path = crate::path::canonical(
            &format!("{WELL_KNOWN_PREFIX}{path}"),
            crate::path::EscapedSlashes::Keep,
        )
        .ok()?
        .into_owned();
        let challenge_param = format!(r#", resource_metadata="{metadata_url}""#);
        let bearer_challenge = format!(r#"Bearer resource_metadata="{metadata_url}""#);
        Some(Self {
            id,
            path_prefix,
            authorization_servers,
            audiences,
            dpop_required,
            metadata_url,
            well_known_path,
            document,
            challenge_param,
            bearer_challenge,
        })
    }

    /// `, resource_metadata="..."`, for a challenge.
    pub fn challenge_param(&self) -> &str {
        &self.challenge_param
    }

    /// `Bearer resource_metadata="..."`: the challenge to a request without credentials.
    pub fn bearer_challenge(&self) -> &str {
        &self.bearer_challenge
    }

    /// Whether a canonical path is under this resource's prefix, segment by segment.
    pub fn covers(&self, path: &str) -> bool {
        covers(&self.path_prefix, path)
    }
}

/// Whether `prefix` covers `path` segment by segment.
pub fn covers(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

/// [`covers`] ignoring ASCII case, as an upstream that routes case-insensitively reads it.
pub fn covers_folded(prefix: &str, path: &str) -> bool {
    match path.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => {
            let rest = &path[prefix.len()..];
            rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/')
        }
        _ => false,
    }
}

/// `https://host:port` and the path (`/mcp`, or `` when there is none) of an identifier without
/// query or fragment.
pub fn split_identifier(id: &str) -> Option<(&str, &str)> {
    let after_scheme = id.find("://")? + 3;
    let path_at = id[after_scheme..]
        .find('/')
        .map_or(id.len(), |at| after_scheme + at);
    Some((&id[..path_at], &id[path_at..]))
}

/// What a metadata path answers.
#[derive(Debug, PartialEq, Eq)]
pub enum WellKnown {
    /// The document of this resource.
    Document(Arc<Resource>),
    /// Under the well-known prefix, but no resource's: 404.
    Unknown,
}

/// The configured resources.
#[derive(Debug, Default)]
pub struct Resources {
    pub list: Vec<Arc<Resource>>,
}

impl Resources {
    /// The audiences of every resource whose tokens `issuer` may issue (all of them, unless a
    /// resource names its authorization servers), each once.
    pub fn audiences_for(&self, issuer: &str) -> Vec<String> {
        let mut audiences: Vec<String> = Vec::new();
        for resource in &self.list {
            if resource
                .authorization_servers
                .as_ref()
                .is_some_and(|servers| !servers.iter().any(|s| s == issuer))
            {
                continue;
            }
            for audience in &resource.audiences {
                if !audiences.contains(audience) {
                    audiences.push(audience.clone());
                }
            }
        }
        audiences
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The resource a canonical path is under: the longest covering prefix.
    pub fn for_path(&self, path: &str) -> Option<&Arc<Resource>> {
        self.list
            .iter()
            .filter(|r| r.covers(path))
            .max_by_key(|r| r.path_prefix.len())
    }

    /// [`Resources::for_path`], refused (`Err`) when the answer would change for an upstream
    /// that ignores case: `/MCP/x` reaches `/mcp`'s handler there, so it must not escape the
    /// resource's audience check here.
    pub fn for_path_checked(
        &self,
        path: &str,
    ) -> Result<Option<&Arc<Resource>>, crate::decision::DenyReason> {
        let exact = self.for_path(path);
        let folded = self
            .list
            .iter()
            .filter(|r| covers_folded(&r.path_prefix, path))
            .max_by_key(|r| r.path_prefix.len());
        match (exact, folded) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => Ok(exact),
            (None, None) => Ok(None),
            _ => Err(crate::decision::DenyReason::PathUnsafe),
        }
    }

    /// Whether a path differs from a metadata path only in case (refused rather than decided
    /// differently from a case-insensitive upstream).
    pub fn well_known_in_other_case(&self, path: &str) -> bool {
        covers_folded(WELL_KNOWN_PREFIX, path) && !covers(WELL_KNOWN_PREFIX, path)
    }

    /// What a canonical path under the well-known prefix answers; `None` for any other path
    /// (decided like every path: `/.well-known/other` is not special).
    pub fn well_known(&self, path: &str) -> Option<WellKnown> {
        if !covers(WELL_KNOWN_PREFIX, path) {
            return None;
        }
        Some(match self.list.iter().find(|r| r.well_known_path == path) {
            Some(resource) => WellKnown::Document(Arc::clone(resource)),
            None => WellKnown::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_lends_only_the_audiences_of_resources_it_may_issue_for() {
        let resource = |id: &str, servers: Option<Vec<String>>, audiences: &[&str]| {
            Arc::new(
                Resource::new(
                    id.into(),
                    "/x".into(),
                    servers,
                    audiences.iter().map(|a| (*a).to_owned()).collect(),
                    false,
                    String::new(),
                )
                .unwrap(),
            )
        };
        let resources = Resources {
            list: vec![
                resource("https://a.example/mcp", None, &["https://a.example/mcp"]),
                resource(
                    "https://b.example/mcp",
                    Some(vec!["https://idp-b".into()]),
                    &["https://b.example/mcp", "https://a.example/mcp"],
                ),
            ],
        };
        assert_eq!(
            resources.audiences_for("https://idp-a"),
            ["https://a.example/mcp"]
        );
        assert_eq!(
            resources.audiences_for("https://idp-b"),
            ["https://a.example/mcp", "https://b.example/mcp"]
        );
    }

    fn resource(id: &str, prefix: &str) -> Arc<Resource> {
        Arc::new(
            Resource::new(
                id.into(),
                prefix.into(),
                None,
                vec![id.into()],
                false,
                "{}".into(),
            )
            .expect("valid"),
        )
    }

    #[test]
    fn the_metadata_url_inserts_the_well_known_path_after_the_host() {
        let mcp = resource("https://mcp.example.com/mcp", "/mcp");
        assert_eq!(
            mcp.metadata_url,
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            mcp.well_known_path,
            "/.well-known/oauth-protected-resource/mcp"
        );
        // RFC 9728 §3.1: a terminating slash after the host is removed first.
        for id in ["https://api.example.com", "https://api.example.com/"] {
            let root = resource(id, "/");
            assert_eq!(
                root.metadata_url,
                "https://api.example.com/.well-known/oauth-protected-resource"
            );
            assert_eq!(root.well_known_path, WELL_KNOWN_PREFIX);
        }
        let port = resource("http://127.0.0.1:8080/a/b", "/a/b");
        assert_eq!(
            port.metadata_url,
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/a/b"
        );
        assert_eq!(
            mcp.challenge_param(),
            r#", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#
        );
    }

    #[test]
    fn prefixes_cover_whole_segments_and_the_longest_wins() {
        let resources = Resources {
            list: vec![
                resource("https://h/mcp", "/mcp"),
                resource("https://h/mcp/admin", "/mcp/admin"),
            ],
        };
        let id = |path: &str| resources.for_path(path).map(|r| r.id.as_str());
        assert_eq!(id("/mcp"), Some("https://h/mcp"));
        assert_eq!(id("/mcp/tools"), Some("https://h/mcp"));
        assert_eq!(id("/mcp/admin/x"), Some("https://h/mcp/admin"));
        assert_eq!(id("/mcpx"), None);
        assert_eq!(id("/"), None);
    }

    #[test]
    fn only_the_well_known_prefix_is_claimed() {
        let resources = Resources {
            list: vec![resource("https://h/mcp", "/mcp")],
        };
        assert!(matches!(
            resources.well_known("/.well-known/oauth-protected-resource/mcp"),
            Some(WellKnown::Document(_))
        ));
        for unknown in [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/other",
            "/.well-known/oauth-protected-resource/mcp/x",
        ] {
            assert_eq!(
                resources.well_known(unknown),
                Some(WellKnown::Unknown),
                "{unknown}"
            );
        }
        for other in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-protected-resourcex",
            "/mcp",
        ] {
            assert_eq!(resources.well_known(other), None, "{other}");
        }
    }
}
