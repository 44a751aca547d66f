//! `${VAR}` interpolation for string values of the pipeline file.
//!
//! `${NAME}` is replaced by the environment variable `NAME` (an error if unset), `${NAME:-default}`
//! falls back to `default`, and `$${` is a literal `${`. Every string value of the file is expanded
//! once, before it is deserialised ([`expand_strings`]), so the rule is the same for every key.
//! Values are never echoed in errors, since they may hold secrets, and credential variables
//! cannot be interpolated at all: a secret must never reach a table, a log or a failures file.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::ops::Deref;

/// A string value of the pipeline file (its `${VAR}` references were expanded with every other
/// string's, see [`expand_strings`]).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct EnvString(pub String);

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Deref for EnvString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(EnvString)
    }
}

/// Variables that hold credentials: interpolating them would copy a secret into table metadata,
/// failures files or logs. AWS credentials come from the credential chain; other keys are named
/// by variable (`*_env` keys), never expanded into the file.
pub fn is_credential_variable(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    matches!(
        n.as_str(),
        "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_SESSION_TOKEN" | "AWS_SECURITY_TOKEN"
    ) || n.contains("SECRET")
        || n.contains("PASSWORD")
        || n.ends_with("_TOKEN")
        || n.ends_with("API_KEY")
}

/// Expands `${VAR}` in every string value of a parsed file, in place; on error, the span of the
/// value and the message.
pub fn expand_strings(
    value: &mut toml::Spanned<toml::de::DeValue<'_>>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), (std::ops::Range<usize>, String)> {
    use toml::de::DeValue;
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains('$') => {
            let expanded = expand(s, lookup).map_err(|m| (span, m))?;
            *s = std::borrow::Cow::Owned(expanded);
        }
        DeValue::Table(t) => expand_table(t, lookup)?,
        DeValue::Array(items) => {
            for v in items.iter_mut() {
                expand_strings(v, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// [`expand_strings`] over every value of a table.
pub fn expand_table(
    table: &mut toml::de::DeTable<'_>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), (std::ops::Range<usize>, String)> {
    for (_, v) in table.iter_mut() {
        expand_strings(v, lookup)?;
    }
    Ok(())
}

/// Expands `${VAR}` references in `raw` using `lookup`.
pub fn expand(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or_else(|| {
                "unterminated `${` in value: close it with `}` (write `$${` for a literal `${`)"
                    .to_string()
            })?;
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{inner}}}` is not a valid variable reference: names use letters, digits and `_`"
                ));
            }
            if is_credential_variable(name) {
                return Err(format!(
                    "`${{{name}}}` would copy a credential into the pipeline: credential variables cannot be interpolated"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set; export it, or give a default with `${{{name}:-default}}`"
                    ))
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOME_DIR").then(|| "/home/u".to_string())
    }

    #[test]
    fn expands_set_and_default_and_escape() {
        assert_eq!(expand("${HOME_DIR}/x", env).unwrap(), "/home/u/x");
        assert_eq!(expand("${NOPE:-fallback}", env).unwrap(), "fallback");
        assert_eq!(
            expand("cost $5 $${HOME_DIR}", env).unwrap(),
            "cost $5 ${HOME_DIR}"
        );
    }

    #[test]
    fn unset_variable_is_an_error_naming_it() {
        let e = expand("${NOPE}", env).unwrap_err();
        assert!(e.contains("`NOPE` is not set"), "{e}");
    }

    #[test]
    fn credential_variables_are_never_interpolated() {
        let all = |_: &str| Some("s3cr3t".to_string());
        for name in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "OPENAI_API_KEY",
            "DB_PASSWORD",
        ] {
            let e = expand(&format!("x ${{{name}}}"), all).unwrap_err();
            assert!(e.contains("credential"), "{name}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        assert_eq!(expand("${AWS_REGION}", all).unwrap(), "s3cr3t");
    }

    #[test]
    fn malformed_references() {
        assert!(expand("${OPEN", env).unwrap_err().contains("unterminated"));
        assert!(expand("${a b}", env).unwrap_err().contains("not a valid"));
    }
}
