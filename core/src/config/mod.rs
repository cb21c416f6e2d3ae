//! Configuration: certbound's one YAML schema ([`FileConfig`]), parsed with errors that point at
//! the user's line, and validated into what the decision core needs ([`DecisionSettings`]).
//! Each adapter validates the keys only it understands on top: the service its listeners, TLS,
//! introspection...; the Envoy module's rules ([`ModuleSettings`]) are here, so that the
//! service's `check-config --module` can check a module configuration too.

mod locate;
mod module;
mod resources;
mod schema;
mod validate;

pub use locate::line_of;
pub use module::{ModuleSettings, RouteSettings};
pub use schema::*;
pub use validate::{
    DecisionSettings, ReplaySettings, check_url, header_name, read_resolved, resolve,
};

use std::fmt;

/// A configuration problem, naming the offending key (and its line, when known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key path (`issuers[0].audiences`), `config` for the whole file, or the environment
    /// variable that set it.
    pub key: String,
    pub message: String,
    /// 1-based line in the configuration text.
    pub line: Option<usize>,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            line: None,
        }
    }

    /// Points the error at the line of its key in `text`, when it has none yet and can be found;
    /// a key that is missing is pointed at the entry it is missing from.
    pub fn locate(mut self, text: &str) -> Self {
        let mut path = self.key.as_str();
        while self.line.is_none() && !path.is_empty() {
            self.line = line_of(text, path);
            path = match path.rfind(['.', '[']) {
                Some(at) => &path[..at],
                None => "",
            };
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses configuration text. Errors carry the line in `text` (the text itself is decoded, never
/// a re-serialised copy of it), and an empty file gets a sentence.
pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
    match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        Err(error) => return Err(yaml_error(&error)),
        Ok(serde_yaml_ng::Value::Null) => {
            return Err(ConfigError::new(
                "config",
                "the configuration is empty; it needs at least `issuers` (see the \
                 configuration reference, docs/src/configuration.md, or deploy/local/certbound.yaml for an example)",
            ));
        }
        Ok(serde_yaml_ng::Value::Mapping(_)) => {}
        Ok(_) => {
            return Err(ConfigError::new(
                "config",
                "the configuration must be a mapping of keys (`issuers: ...`), not a list or a value",
            ));
        }
    }
    serde_yaml_ng::from_str(text).map_err(|e| yaml_error(&e))
}

fn yaml_error(error: &serde_yaml_ng::Error) -> ConfigError {
    let line = error.location().map(|l| l.line());
    let mut text = error.to_string();
    // The location is kept as `line`; the column adds nothing for a key.
    if let Some(at) = text.rfind(" at line ") {
        text.truncate(at);
    }
    // serde_yaml_ng prefixes the path ("issuers[0]: unknown field ..."); keep it as the key.
    let mut error = match text.split_once(": ") {
        Some((key, rest)) if !key.contains(' ') => ConfigError::new(key, rest),
        _ => ConfigError::new("config", text),
    };
    error.line = line;
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_reported_at_its_own_line() {
        let text = "\
# comment lines and blank lines count too

issuers:
  - issuer: https://idp.test
    audiences: [a]
    jwks_file: k.json
binding:
  mode: required
upstream:
  remove_authorization: true
certificate:
  sorces: [peer]
";
        let error = parse(text).expect_err("typo");
        assert_eq!(error.line, Some(12), "{error}");
        assert_eq!(error.key, "certificate");
        assert!(error.message.contains("unknown field `sorces`"), "{error}");
        assert!(
            error.to_string().starts_with("line 12: certificate: "),
            "{error}"
        );
    }

    #[test]
    fn a_typo_in_a_requirement_is_refused_not_ignored() {
        // `scope` for `scopes` would otherwise drop the requirement: an allow where a 403 was meant.
        for text in [
            "policy: {default: {scope: [admin]}}",
            "policy: {rules: [{path_prefix: /admin, scope: [admin]}]}",
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.message.contains("unknown field `scope`"), "{error}");
            assert!(
                error.message.contains("`scopes`"),
                "the keys are listed: {error}"
            );
        }
    }

    #[test]
    fn syntax_errors_keep_their_line() {
        let error = parse("issuers:\n  - issuer: a\n   bad: [\n").expect_err("syntax");
        assert!(error.line.is_some_and(|l| l >= 3), "{error}");
    }

    #[test]
    fn an_empty_file_gets_a_sentence() {
        for text in ["", "\n\n", "# only a comment\n", "---\n", "~\n"] {
            let error = parse(text).expect_err("empty");
            assert!(
                error.message.starts_with("the configuration is empty"),
                "{text:?}: {error}"
            );
            assert!(!error.message.contains("unit value"));
        }
        let error = parse("- a\n- b\n").expect_err("list");
        assert!(error.message.contains("must be a mapping"), "{error}");
    }

    #[test]
    fn semantic_errors_can_be_located() {
        let text = "issuers:\n  - issuer: x\n    audiences: []\n";
        let error = ConfigError::new("issuers[0].audiences", "empty").locate(text);
        assert_eq!(error.to_string(), "line 3: issuers[0].audiences: empty");
        let missing = ConfigError::new("issuers[0].cluster", "required").locate(text);
        assert_eq!(missing.line, Some(2), "a missing key points at its entry");
    }
}
