//! The emulator's own small S3 client, for async and batch jobs: list and read inputs, write
//! result files.
//! Path-style requests to the configured S3-compatible server, signed with the emulator's dummy
//! credentials ([`crate::ACCESS_KEY`]). Its own code, not the pipeline's client: the emulator
//! stands alone.

use anyhow::{anyhow, bail, Context, Result};
use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls;
use std::time::Duration;

/// `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Uri {
    pub(crate) bucket: String,
    /// Without a leading `/`; may be empty (the bucket's root) or end with `/` (a folder).
    pub(crate) key: String,
}

impl S3Uri {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| anyhow!("`{s}` is not an S3 URI (`s3://bucket/key`)"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("`{s}` names no bucket (`s3://bucket/key`)");
        }
        Ok(Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The URI of `name` inside this folder.
    pub(crate) fn join(&self, name: &str) -> Self {
        let key = if self.key.is_empty() || self.key.ends_with('/') {
            format!("{}{name}", self.key)
        } else {
            format!("{}/{name}", self.key)
        };
        Self {
            bucket: self.bucket.clone(),
            key,
        }
    }
}

impl std::fmt::Display for S3Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// A client of the S3-compatible server at one endpoint.
pub(crate) struct S3Client {
    client: aws_sdk_s3::Client,
}

impl S3Client {
    /// A client of `endpoint` (path-style, region `us-east-1`, the emulator's credentials, no
    /// SDK retries, `timeout` per attempt).
    pub(crate) async fn connect(endpoint: &str, timeout: Duration) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let cfg = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(timeout)
                    .build(),
            )
            .endpoint_url(endpoint)
            .credentials_provider(aws_credential_types::Credentials::new(
                crate::ACCESS_KEY,
                crate::SECRET_KEY,
                None,
                None,
                "embedpipe-emulator",
            ))
            .region(Region::new("us-east-1"))
            .load()
            .await;
        let s3 = aws_sdk_s3::config::Builder::from(&cfg)
            .force_path_style(true)
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(s3),
        }
    }

    /// Reads a whole object.
    pub(crate) async fn get(&self, uri: &S3Uri) -> Result<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .send()
            .await
            .map_err(|e| explain(e, "read", uri))?;
        let bytes = out
            .body
            .collect()
            .await
            .with_context(|| format!("reading {uri} was cut off"))?;
        Ok(bytes.into_bytes().to_vec())
    }

    /// The keys of every object whose key starts with `uri`'s key, in key order.
    pub(crate) async fn list(&self, uri: &S3Uri) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&uri.bucket)
                .prefix(&uri.key)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| explain(e, "list", uri))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            token = out.next_continuation_token().map(String::from);
            if token.is_none() || out.is_truncated() != Some(true) {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    pub(crate) async fn put_bytes(&self, uri: &S3Uri, bytes: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| explain(e, "write", uri))?;
        Ok(())
    }
}

/// An S3 error with the URI, the operation and a hint (no credentials in it): a job's failure
/// message quotes it.
fn explain<E, R>(e: SdkError<E, R>, what: &str, uri: &S3Uri) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let detail = match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("(no message)")
            )
        }
        other => {
            let mut parts = vec![other.to_string()];
            let mut cur = std::error::Error::source(other);
            while let Some(s) = cur {
                parts.push(s.to_string());
                cur = s.source();
            }
            parts.join(": ")
        }
    };
    let hint = if detail.contains("AccessDenied") || detail.contains("Forbidden") {
        " (check the credentials' s3 permissions on that bucket)"
    } else if detail.contains("NoSuchBucket") {
        " (the bucket does not exist: create it or fix the URI)"
    } else {
        ""
    };
    anyhow!("cannot {what} {uri}: {detail}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = S3Uri::parse("s3://b/out").unwrap();
        assert_eq!(u.join("x.json").to_string(), "s3://b/out/x.json");
        let root = S3Uri::parse("s3://b").unwrap();
        assert_eq!(root.join("k").to_string(), "s3://b/k");
        assert!(S3Uri::parse("http://b/k").is_err());
        assert!(S3Uri::parse("s3:///k").is_err());
    }
}
