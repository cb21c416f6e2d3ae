//! `forward_auth`: the HTTP authorization API's listener, who may call it, and where the original
//! request is described.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use certbound_core::config::{ConfigError, ForwardAuthConfig, header_name};
use ipnet::IpNet;

use super::{TlsSettings, tls_settings};

/// Validated `forward_auth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardAuthSettings {
    pub listen: SocketAddr,
    pub tls: Option<TlsSettings>,
    /// Peers whose forwarded headers and certificate header are believed.
    pub trusted_peers: Vec<IpNet>,
    pub headers: ForwardedHeaders,
    /// Envoy `http_service`: the check's own path after this prefix is the original path.
    pub path_prefix: Option<String>,
}

/// The header each part of the original request is described in, lower-case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedHeaders {
    pub method: String,
    pub uri: String,
    pub host: String,
    pub proto: String,
}

impl ForwardAuthSettings {
    /// Whether `peer` may describe requests to certbound.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_peers.iter().any(|net| net.contains(&peer))
    }
}

/// `None` when the API is off (no `forward_auth`, or `listen` absent or empty).
pub fn validate(
    config: Option<ForwardAuthConfig>,
    base: Option<&Path>,
) -> Result<Option<ForwardAuthSettings>, ConfigError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let listen = match config.listen.as_deref().map(str::trim) {
        None | Some("") => return Ok(None),
        Some(text) => text.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "forward_auth.listen",
                format!("not a socket address: {text:?}"),
            )
        })?,
    };
    let tls = config
        .tls
        .map(|tls| tls_settings(tls, base, "forward_auth.tls"))
        .transpose()?;
    let trusted_peers = match config.trusted_peers {
        None => vec![
            "127.0.0.0/8".parse().expect("a CIDR"),
            "::1/128".parse().expect("a CIDR"),
        ],
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, text)| parse_peer(text, i))
            .collect::<Result<_, _>>()?,
    };
    let names = |name: String, key: &str| -> Result<String, ConfigError> {
        header_name(&name).ok_or_else(|| {
            ConfigError::new(
                format!("forward_auth.headers.{key}"),
                format!("{name:?} is not an HTTP header name"),
            )
        })
    };
    let headers = ForwardedHeaders {
        method: names(config.headers.method, "method")?,
        uri: names(config.headers.uri, "uri")?,
        host: names(config.headers.host, "host")?,
        proto: names(config.headers.proto, "proto")?,
    };
    let path_prefix = match config.path_prefix {
        None => None,
        Some(prefix) if prefix.starts_with('/') && !prefix.contains(['?', '#']) => {
            Some(prefix.trim_end_matches('/').to_owned()).filter(|p| !p.is_empty())
        }
        Some(prefix) => {
            return Err(ConfigError::new(
                "forward_auth.path_prefix",
                format!("{prefix:?} is not a path (it starts with /, as Envoy's path_prefix)"),
            ));
        }
    };
    Ok(Some(ForwardAuthSettings {
        listen,
        tls,
        trusted_peers,
        headers,
        path_prefix,
    }))
}

/// A CIDR, or one address.
fn parse_peer(text: &str, index: usize) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ConfigError::new(
                format!("forward_auth.trusted_peers[{index}]"),
                format!("{text:?} is neither an address nor a CIDR"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Result<Option<ForwardAuthSettings>, ConfigError> {
        validate(serde_yaml_ng::from_str(yaml).unwrap(), None)
    }

    #[test]
    fn off_unless_listen_is_set() {
        assert_eq!(validate(None, None).unwrap(), None);
        assert_eq!(settings("{}").unwrap(), None);
        assert_eq!(settings("{listen: ''}").unwrap(), None);
    }

    #[test]
    fn loopback_is_trusted_by_default_and_nothing_else() {
        let on = settings("{listen: 127.0.0.1:9292}").unwrap().unwrap();
        assert!(on.trusts("127.0.0.1".parse().unwrap()));
        assert!(on.trusts("::1".parse().unwrap()));
        // An IPv4 peer on a dual-stack listener arrives as a mapped IPv6 address.
        assert!(on.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!on.trusts("10.0.0.5".parse().unwrap()));
        assert_eq!(on.headers.uri, "x-forwarded-uri");
    }

    #[test]
    fn peers_are_cidrs_or_addresses() {
        let on = settings("{listen: '[::]:9292', trusted_peers: [10.42.0.0/16, 192.0.2.7]}")
            .unwrap()
            .unwrap();
        assert!(on.trusts("10.42.3.4".parse().unwrap()));
        assert!(on.trusts("192.0.2.7".parse().unwrap()));
        assert!(!on.trusts("192.0.2.8".parse().unwrap()));
        assert!(
            !on.trusts("127.0.0.1".parse().unwrap()),
            "the list replaces the default"
        );
        let error = settings("{listen: 127.0.0.1:1, trusted_peers: [10.0.0.0/40]}").unwrap_err();
        assert_eq!(error.key, "forward_auth.trusted_peers[0]");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            ("{listen: localhost}", "forward_auth.listen"),
            (
                "{listen: 127.0.0.1:1, path_prefix: auth}",
                "forward_auth.path_prefix",
            ),
            (
                "{listen: 127.0.0.1:1, headers: {uri: 'x uri'}}",
                "forward_auth.headers.uri",
            ),
            (
                "{listen: 127.0.0.1:1, tls: {cert_file: /nope, key_file: /nope}}",
                "forward_auth.tls.cert_file",
            ),
        ] {
            assert_eq!(settings(yaml).unwrap_err().key, key, "{yaml}");
        }
    }

    #[test]
    fn header_names_are_lower_cased_and_the_prefix_loses_its_slash() {
        let on = settings(
            "{listen: 127.0.0.1:1, headers: {uri: X-Original-URI}, path_prefix: /certbound/}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.headers.uri, "x-original-uri");
        assert_eq!(on.headers.method, "x-forwarded-method");
        assert_eq!(on.path_prefix.as_deref(), Some("/certbound"));
    }
}
