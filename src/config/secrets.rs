//! Pipeline files must never hold credentials: the keys that would, the AWS access key ids that
//! would give one away anywhere in the file, and the masking of such ids in log lines.

use super::ConfigError;
use std::path::Path;
use toml::Spanned;

/// Keys that would hold literal credentials; never allowed in a pipeline file.
const SECRET_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "access_key",
    "secret_key",
    "secret",
    "password",
    "api_key",
    "apikey",
    "openai_api_key",
    "authorization",
    "bearer_token",
];

/// Keys of API keys (OpenAI-compatible servers), whose help names `api_key_env`.
const API_KEY_KEYS: &[&str] = &[
    "api_key",
    "apikey",
    "openai_api_key",
    "authorization",
    "bearer_token",
];

const API_KEY_HELP: &str = "put the key in an environment variable and name the variable: \
api_key_env = \"OPENAI_API_KEY\" (headers_env for other headers)";

const CREDENTIAL_HELP: &str = "remove it: embedpipe takes AWS credentials only from the AWS credential chain \
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables, AWS_PROFILE with ~/.aws/credentials or SSO, \
or an instance/ECS/EKS role)";

/// Byte offsets where an AWS access key id (`AKIA`/`ASIA` and 16 more capitals or digits, as a
/// word of its own) starts in `s`.
fn aws_key_id_starts(s: &str) -> impl Iterator<Item = usize> + '_ {
    let b = s.as_bytes();
    let key_char = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    (0..b.len().saturating_sub(19)).filter(move |&i| {
        (b[i..].starts_with(b"AKIA") || b[i..].starts_with(b"ASIA"))
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && b[i..i + 20].iter().all(|&c| key_char(c))
            && b.get(i + 20).is_none_or(|c| !c.is_ascii_alphanumeric())
    })
}

/// Whether `s` holds what looks like an OpenAI-style secret key (`sk-` and 20 or more key
/// characters, as a word of its own), e.g. `sk-proj-...`.
fn contains_api_key(s: &str) -> bool {
    let b = s.as_bytes();
    let key_char = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_';
    (0..b.len()).any(|i| {
        b[i..].starts_with(b"sk-")
            && (i == 0 || !key_char(&b[i - 1]))
            && b[i + 3..].iter().take_while(|c| key_char(c)).count() >= 20
    })
}

/// Whether `s` holds an AWS access key id anywhere, e.g. inside a template.
fn contains_aws_key_id(s: &str) -> bool {
    aws_key_id_starts(s).next().is_some()
}

/// `s` with every AWS access key id masked (for log lines).
pub fn redact_key_ids(s: &str) -> String {
    let starts: Vec<usize> = aws_key_id_starts(s).collect();
    if starts.is_empty() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    for i in starts {
        out.push_str(&s[from..i + 4]);
        out.push_str("****************");
        from = i + 20;
    }
    out.push_str(&s[from..]);
    out
}

/// Refuses secret-looking keys and literal AWS access key ids anywhere in `table`.
pub(super) fn check_no_secrets(
    path: &Path,
    text: &str,
    table: &toml::de::DeTable<'_>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter() {
        let k = key.get_ref().to_ascii_lowercase();
        // Header names map to the variables holding their values (`Authorization = "GW_KEY"`):
        // only the values can give a secret away.
        if k == "headers_env" {
            if let toml::de::DeValue::Table(headers) = value.get_ref() {
                for (_, v) in headers.iter() {
                    check_value(path, text, v)?;
                }
                continue;
            }
        }
        if SECRET_KEYS.contains(&k.as_str()) {
            return Err(ConfigError::at(
                path,
                text,
                Some(key.span()),
                format!(
                    "`{}` would put a literal secret in the pipeline file",
                    key.get_ref()
                ),
            )
            .with_help(if API_KEY_KEYS.contains(&k.as_str()) {
                API_KEY_HELP
            } else {
                CREDENTIAL_HELP
            }));
        }
        check_value(path, text, value)?;
    }
    Ok(())
}

fn check_value(
    path: &Path,
    text: &str,
    value: &Spanned<toml::de::DeValue<'_>>,
) -> Result<(), ConfigError> {
    use toml::de::DeValue;
    match value.get_ref() {
        DeValue::String(s) if contains_aws_key_id(s) => Err(ConfigError::at(
            path,
            text,
            Some(value.span()),
            "this value looks like a literal AWS access key id; pipeline files must not contain credentials",
        )
        .with_help(CREDENTIAL_HELP)),
        DeValue::String(s) if contains_api_key(s) => Err(ConfigError::at(
            path,
            text,
            Some(value.span()),
            "this value looks like a literal API key (sk-...); pipeline files must not contain credentials",
        )
        .with_help(API_KEY_HELP)),
        DeValue::Table(t) => check_no_secrets(path, text, t),
        DeValue::Array(items) => items.iter().try_for_each(|v| check_value(path, text, v)),
        _ => Ok(()),
    }
}
