//! Resolve layer: `[storage]` and the environment → how object storage is reached, once, for the
//! sources, the sink and its side files.

use crate::config::{check_s3_endpoint, ConfigError, Pipeline};
use std::time::Duration;

/// Timeout of one S3 request attempt (a row group of a big Parquet file fits well inside).
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts of an S3 request that failed for a transient reason (503 SlowDown, 5xx, resets).
pub const DEFAULT_S3_RETRIES: usize = 8;
/// Objects fetched at once by a source (image folders) and side-file readers.
pub const DEFAULT_S3_CONCURRENCY: usize = 16;

/// How S3 is reached. Credentials are never here: the AWS chain provides them (or, with
/// `--emulator`, the emulator's dummy keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageSettings {
    /// `[storage] region`; else the AWS config chain.
    pub region: Option<String>,
    /// An S3-compatible server; requests are then path-style.
    pub endpoint: Option<String>,
    /// Sign with the emulator's dummy credentials instead of the AWS chain.
    pub emulator_credentials: bool,
}

impl StorageSettings {
    /// `[storage]`, then `--emulator`'s local server, then `AWS_ENDPOINT_URL_S3` /
    /// `AWS_ENDPOINT_URL`. An endpoint from the environment is checked like one in the file.
    pub fn resolve(pipeline: &Pipeline, overrides: &super::Overrides) -> Result<Self, ConfigError> {
        let storage = pipeline.storage();
        let from_file = storage
            .and_then(|s| s.s3_endpoint_url.as_ref())
            .map(|u| u.get_ref().to_string());
        let endpoint = match overrides.s3_endpoint_url.clone().or(from_file) {
            Some(e) => Some(e),
            None => match endpoint_from_env() {
                Some((name, value)) => {
                    check_s3_endpoint(&value).map_err(|why| {
                        ConfigError::whole_file(
                            &pipeline.path,
                            format!("the environment's {name} {why}"),
                        )
                        .with_help(format!(
                            "fix or unset {name}, or set [storage] s3_endpoint_url"
                        ))
                    })?;
                    Some(value)
                }
                None => None,
            },
        };
        Ok(Self {
            region: storage
                .and_then(|s| s.region.as_ref())
                .map(|r| r.get_ref().to_string()),
            endpoint,
            emulator_credentials: overrides.emulator_credentials,
        })
    }

    /// Plain HTTP is allowed only to a loopback endpoint (checked when it was resolved).
    pub fn allow_http(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    }
}

/// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` (the AWS SDKs' own names), with the name.
fn endpoint_from_env() -> Option<(&'static str, String)> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|n| {
            std::env::var(n)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (n, v))
        })
}
