//! `CERTBOUND_<KEY>` environment overrides, applied to the parsed file (nested keys use `__`:
//! `CERTBOUND_BINDING__MODE`). A bad value is blamed on its variable; a `CERTBOUND_*` variable
//! that matches no key is reported as a warning, never an error: Kubernetes sets
//! `CERTBOUND_SERVICE_HOST`, `CERTBOUND_PORT`, ... in every pod of a namespace with a Service
//! named `certbound`.

use std::collections::BTreeMap;

use certbound_core::config::{ConfigError, FileConfig};
use serde::de::DeserializeOwned;

/// Read by the command line itself (`--config`), not a configuration key.
const COMMAND_LINE: &[&str] = &["CERTBOUND_CONFIG"];

/// The overridable keys, as variable names, each with how it sets the file's value.
type Apply = fn(&mut FileConfig, &str, &str) -> Result<(), ConfigError>;
const OVERRIDES: &[(&str, Apply)] = &[
    ("CERTBOUND_LISTEN", |f, _, v| {
        f.listen = Some(v.to_owned());
        Ok(())
    }),
    ("CERTBOUND_ADMIN_LISTEN", |f, _, v| {
        f.admin_listen = Some(v.to_owned());
        Ok(())
    }),
    ("CERTBOUND_FORWARD_AUTH__LISTEN", |f, _, v| {
        f.forward_auth.get_or_insert_default().listen = Some(v.to_owned());
        Ok(())
    }),
    ("CERTBOUND_IDP_CA_FILE", |f, _, v| {
        f.idp_ca_file = Some(v.into());
        Ok(())
    }),
    ("CERTBOUND_LEEWAY_SECONDS", |f, n, v| {
        f.leeway_seconds = scalar(n, v)?;
        Ok(())
    }),
    ("CERTBOUND_LOG_FORMAT", |f, n, v| {
        f.log_format = Some(scalar(n, v)?);
        Ok(())
    }),
    ("CERTBOUND_BINDING__MODE", |f, n, v| {
        f.binding.mode = scalar(n, v)?;
        Ok(())
    }),
    ("CERTBOUND_LIMITS__MAX_TOKEN_BYTES", |f, n, v| {
        f.limits.max_token_bytes = scalar(n, v)?;
        Ok(())
    }),
    // The Redis URL may carry a password: from a Kubernetes Secret, not the ConfigMap.
    ("CERTBOUND_DPOP__REPLAY__URL", |f, _, v| {
        f.dpop.replay.url = Some(v.to_owned());
        Ok(())
    }),
    ("CERTBOUND_DPOP__REPLAY__MODE", |f, n, v| {
        f.dpop.replay.mode = scalar(n, v)?;
        Ok(())
    }),
    // Comma-separated (or a YAML list): the cluster seeds or the sentinels, maybe with passwords.
    ("CERTBOUND_DPOP__REPLAY__URLS", |f, n, v| {
        f.dpop.replay.urls = if v.trim_start().starts_with('[') {
            scalar(n, v)?
        } else {
            v.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Ok(())
    }),
    (
        "CERTBOUND_DPOP__REPLAY__SENTINEL__MASTER_NAME",
        |f, _, v| {
            f.dpop.replay.sentinel.master_name = Some(v.to_owned());
            Ok(())
        },
    ),
];

/// The variable names that override keys, for documentation and messages.
pub fn override_names() -> impl Iterator<Item = &'static str> {
    OVERRIDES.iter().map(|(name, _)| *name)
}

/// A value read as a YAML scalar of the key's type; errors name the variable.
fn scalar<T: DeserializeOwned>(name: &str, value: &str) -> Result<T, ConfigError> {
    serde_yaml_ng::from_str(value).map_err(|e| {
        let mut message = e.to_string();
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        ConfigError::new(name, format!("{value:?}: {message}"))
    })
}

/// Applies the overrides in `env` to `file`; returns a warning for each `CERTBOUND_*` variable
/// that matches no key.
pub fn apply(
    file: &mut FileConfig,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for (name, value) in env {
        if !name.starts_with("CERTBOUND_") || COMMAND_LINE.contains(&name.as_str()) {
            continue;
        }
        match OVERRIDES.iter().find(|(known, _)| known == name) {
            Some((_, set)) => set(file, name, value)?,
            None => warnings.push(unknown(name)),
        }
    }
    Ok(warnings)
}

fn unknown(name: &str) -> String {
    let service_link = [
        "CERTBOUND_SERVICE_HOST",
        "CERTBOUND_SERVICE_PORT",
        "CERTBOUND_PORT",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix));
    let hint = if service_link {
        " (Kubernetes sets it for a Service named certbound; `enableServiceLinks: false` in the \
         pod spec stops that)"
    } else {
        ""
    };
    format!(
        "environment variable {name} matches no configuration key and is ignored{hint}; the \
         overridable keys are {}",
        override_names().collect::<Vec<_>>().join(", ")
    )
}
