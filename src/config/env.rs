//! `${VAR}` interpolation for string values of the pipeline file.
//!
//! `${NAME}` is replaced by the environment variable `NAME` (an error if unset), `${NAME:-default}`
//! falls back to `default`, and `$${` is a literal `${`. Values are never echoed in errors, since
//! they may hold secrets.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::ops::Deref;

/// A string from the pipeline file with `${VAR}` references expanded.
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
        let raw = String::deserialize(d)?;
        expand(&raw, |name| std::env::var(name).ok())
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
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
    fn malformed_references() {
        assert!(expand("${OPEN", env).unwrap_err().contains("unterminated"));
        assert!(expand("${a b}", env).unwrap_err().contains("not a valid"));
    }
}
