//! Object storage — S3 and S3-compatible servers — through `object_store`, the client LanceDB
//! itself uses, so the sources, the sink and its side files share one way in: the AWS
//! credential chain (the same one Bedrock uses), the region, the endpoint override
//! (path-style), and retries with backoff on transient errors (503 SlowDown, 5xx, resets).
//!
//! The sources read on blocking threads, so [`ObjectRead`] gives them a plain `Read` over an
//! object, fetched in ranged GETs (one ahead), never the whole object at once.

use super::bedrock::{load_sdk_config, Connection, EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY};
use crate::resolve::storage::{DEFAULT_S3_RETRIES, DEFAULT_S3_TIMEOUT};
pub use crate::resolve::StorageSettings;
use crate::util::S3Uri;
use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, CredentialProvider, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Region used with an endpoint override when none is configured (S3-compatible servers take
/// any; SigV4 needs one).
const FALLBACK_REGION: &str = "us-east-1";

/// One object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub uri: S3Uri,
    pub size: u64,
}

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object is ours.
    Yes,
    /// Someone wrote it first; nothing was written.
    AlreadyThere,
}

/// Connected object storage: one client per bucket, sharing credentials.
#[derive(Clone)]
pub struct Stores {
    inner: Arc<Inner>,
}

struct Inner {
    settings: StorageSettings,
    region: String,
    credentials: Arc<ChainCredentials>,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Stores {
    /// Resolves the region and the credential chain (credentials themselves are fetched on
    /// first use).
    pub async fn connect(settings: &StorageSettings) -> Result<Self> {
        let conn = Connection {
            region: settings.region.clone(),
            endpoint_url: None,
            timeout: DEFAULT_S3_TIMEOUT,
            emulator_credentials: settings.emulator_credentials,
            ..Default::default()
        };
        let cfg = load_sdk_config(&conn, None).await;
        let region = match (cfg.region(), &settings.endpoint) {
            (Some(r), _) => r.to_string(),
            (None, Some(_)) => FALLBACK_REGION.to_string(),
            (None, None) => bail!("no AWS region is configured for S3: set `region` in [storage], or AWS_REGION in the environment"),
        };
        let provider = cfg
            .credentials_provider()
            .ok_or_else(|| anyhow!("the AWS credential chain offers no credentials provider"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                region,
                credentials: Arc::new(ChainCredentials {
                    provider,
                    cached: tokio::sync::Mutex::new(None),
                }),
                buckets: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn settings(&self) -> &StorageSettings {
        &self.inner.settings
    }

    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// The client of `bucket` (built once).
    pub fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut buckets = self.inner.buckets.lock().expect("stores");
        if let Some(s) = buckets.get(bucket) {
            return Ok(s.clone());
        }
        let s = &self.inner.settings;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.inner.region)
            .with_credentials(self.inner.credentials.clone())
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: DEFAULT_S3_RETRIES,
                retry_timeout: Duration::from_secs(180),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(DEFAULT_S3_TIMEOUT)
                    .with_connect_timeout(Duration::from_secs(10)),
            );
        if let Some(e) = &s.endpoint {
            b = b
                .with_endpoint(e)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(s.allow_http());
        }
        let store: Arc<dyn ObjectStore> = Arc::new(
            b.build()
                .map_err(|e| anyhow!("cannot set up S3 for bucket {bucket}: {e}"))?,
        );
        buckets.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    /// The client of `uri`'s bucket and the object's path in it.
    pub fn locate(&self, uri: &S3Uri) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        Ok((self.bucket(&uri.bucket)?, object_path(&uri.key)))
    }
}

/// The options LanceDB needs to open a database in S3 the way [`Stores`] reaches it: region
/// (when configured; else Lance asks the same AWS chain), endpoint, path-style, plain HTTP
/// (loopback only). No credentials — Lance asks the AWS chain itself — except the emulator's
/// dummy keys with `--emulator`.
pub fn lance_options(s: &StorageSettings) -> Vec<(String, String)> {
    let mut o = Vec::new();
    if let Some(r) = &s.region {
        o.push(("region".to_string(), r.clone()));
    }
    if let Some(e) = &s.endpoint {
        o.push(("aws_endpoint".into(), e.clone()));
        o.push(("aws_virtual_hosted_style_request".into(), "false".into()));
        o.push(("allow_http".into(), s.allow_http().to_string()));
    }
    if s.emulator_credentials {
        o.push(("aws_access_key_id".into(), EMULATOR_ACCESS_KEY.into()));
        o.push(("aws_secret_access_key".into(), EMULATOR_SECRET_KEY.into()));
    }
    o.push(("client_max_retries".into(), DEFAULT_S3_RETRIES.to_string()));
    o
}

impl Stores {
    /// Every object under the folder `prefix` (all pages), in key order.
    pub async fn list(&self, prefix: &S3Uri) -> Result<Vec<ObjectInfo>> {
        let (store, path) = self.locate(prefix)?;
        let folder = prefix.folder();
        let prefix_path = (!path.as_ref().is_empty()).then_some(path);
        let mut out: Vec<ObjectInfo> = store
            .list(prefix_path.as_ref())
            .map_ok(|m| ObjectInfo {
                uri: S3Uri {
                    bucket: prefix.bucket.clone(),
                    key: m.location.to_string(),
                },
                size: m.size,
            })
            .try_collect()
            .await
            .map_err(|e| explain(e, "list", &folder))?;
        out.sort_by(|a, b| a.uri.key.cmp(&b.uri.key));
        Ok(out)
    }

    /// Checks that the folder `prefix` can be listed: the bucket exists, the endpoint answers,
    /// the credentials may read it.
    pub async fn probe(&self, prefix: &S3Uri) -> Result<()> {
        let (store, path) = self.locate(prefix)?;
        let prefix_path = (!path.as_ref().is_empty()).then_some(path);
        store
            .list_with_delimiter(prefix_path.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| explain(e, "list", &prefix.folder()))
    }

    /// Size of the object, `None` when there is none.
    pub async fn head(&self, uri: &S3Uri) -> Result<Option<u64>> {
        let (store, path) = self.locate(uri)?;
        match store.head(&path).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(explain(e, "read", uri)),
        }
    }

    /// The whole object, `None` when there is none (side files: small by design).
    pub async fn get(&self, uri: &S3Uri) -> Result<Option<Bytes>> {
        let (store, path) = self.locate(uri)?;
        match store.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| explain(e, "read", uri)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(explain(e, "read", uri)),
        }
    }

    pub async fn get_range(&self, uri: &S3Uri, range: Range<u64>) -> Result<Bytes> {
        let (store, path) = self.locate(uri)?;
        store
            .get_range(&path, range)
            .await
            .map_err(|e| explain(e, "read", uri))
    }

    /// Writes the whole object (a PUT is atomic: readers see the old object or the new one).
    pub async fn put(&self, uri: &S3Uri, bytes: impl Into<PutPayload>) -> Result<()> {
        let (store, path) = self.locate(uri)?;
        store
            .put(&path, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| explain(e, "write", uri))
    }

    /// Writes the object only if there is none (`If-None-Match: *`): of two writers, one wins.
    pub async fn put_new(&self, uri: &S3Uri, bytes: impl Into<PutPayload>) -> Result<Created> {
        let (store, path) = self.locate(uri)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store.put_opts(&path, bytes.into(), opts).await {
            Ok(_) => Ok(Created::Yes),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Created::AlreadyThere),
            Err(e) => Err(explain(e, "write", uri)),
        }
    }

    /// Deletes the object (none there is no error).
    pub async fn delete(&self, uri: &S3Uri) -> Result<()> {
        let (store, path) = self.locate(uri)?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(explain(e, "delete", uri)),
        }
    }

    /// A blocking reader of the object (for readers on blocking threads): ranged GETs of
    /// `chunk` bytes, the next one fetched while the current one is read.
    pub fn reader(&self, uri: &S3Uri, size: u64, chunk: usize) -> Result<ObjectRead> {
        let (store, path) = self.locate(uri)?;
        Ok(ObjectRead {
            store,
            path,
            uri: uri.clone(),
            size,
            chunk: chunk.max(64 * 1024) as u64,
            next_start: 0,
            current: Bytes::new(),
            ahead: None,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

/// An object key as `object_store` takes it (no leading or trailing `/`).
pub fn object_path(key: &str) -> ObjectPath {
    let key = key.trim_matches('/');
    ObjectPath::parse(key).unwrap_or_else(|_| ObjectPath::from(key))
}

/// A `Read` over an S3 object for code on a blocking thread (never inside the async runtime).
pub struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    uri: S3Uri,
    size: u64,
    chunk: u64,
    /// Where the next range starts.
    next_start: u64,
    current: Bytes,
    ahead: Option<tokio::task::JoinHandle<object_store::Result<Bytes>>>,
    runtime: tokio::runtime::Handle,
}

impl ObjectRead {
    fn fetch_next(&mut self) {
        if self.next_start >= self.size {
            self.ahead = None;
            return;
        }
        let end = (self.next_start + self.chunk).min(self.size);
        let (store, path) = (self.store.clone(), self.path.clone());
        let range = self.next_start..end;
        self.next_start = end;
        self.ahead = Some(
            self.runtime
                .spawn(async move { store.get_range(&path, range).await }),
        );
    }
}

impl std::io::Read for ObjectRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.current.is_empty() {
            if self.ahead.is_none() {
                self.fetch_next();
            }
            let Some(task) = self.ahead.take() else {
                return Ok(0);
            };
            let got = self
                .runtime
                .block_on(task)
                .map_err(std::io::Error::other)?
                .map_err(|e| std::io::Error::other(explain(e, "read", &self.uri)))?;
            self.current = got;
            self.fetch_next();
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

impl Drop for ObjectRead {
    fn drop(&mut self) {
        if let Some(t) = self.ahead.take() {
            t.abort();
        }
    }
}

/// The AWS chain as `object_store` asks for it, with the credentials kept until shortly before
/// they expire (the chain may call IMDS or STS). Its `Debug` shows no secret.
struct ChainCredentials {
    provider: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl std::fmt::Debug for ChainCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainCredentials")
    }
}

#[async_trait]
impl CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((cred, expiry)) = &*cached {
            let fresh = expiry.is_none_or(|e| e > SystemTime::now() + Duration::from_secs(300));
            if fresh {
                return Ok(cred.clone());
            }
        }
        let c = self.provider.provide_credentials().await.map_err(|e| {
            object_store::Error::Unauthenticated {
                path: String::new(),
                source: format!("no AWS credentials: {e}").into(),
            }
        })?;
        let cred = Arc::new(AwsCredential {
            key_id: c.access_key_id().to_string(),
            secret_key: c.secret_access_key().to_string(),
            token: c.session_token().map(str::to_string),
        });
        *cached = Some((cred.clone(), c.expiry()));
        Ok(cred)
    }
}

/// An object-store error with the URI, the operation and what to do (no credentials in it).
pub fn explain(e: object_store::Error, what: &str, uri: &S3Uri) -> anyhow::Error {
    let mut parts = vec![e.to_string()];
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    let detail = parts.join(": ");
    let hint = hint(&detail);
    anyhow!("cannot {what} {uri}: {detail}{hint}")
}

/// What to do about an S3 error, from its code.
fn hint(detail: &str) -> &'static str {
    let has = |s: &str| detail.contains(s);
    if has("NoSuchBucket") {
        "\n  help: the bucket does not exist: create it or fix the URI"
    } else if has("InvalidAccessKeyId")
        || has("SignatureDoesNotMatch")
        || has("no AWS credentials")
        || has("ExpiredToken")
    {
        "\n  help: the AWS credentials were refused or are missing: check AWS_PROFILE / AWS_ACCESS_KEY_ID or the role of this machine"
    } else if has("AccessDenied") || has("403 Forbidden") {
        "\n  help: the credentials may not do this: grant s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on the bucket (see the README's S3 section)"
    } else if has("PermanentRedirect")
        || has("AuthorizationHeaderMalformed")
        || has("301 Moved")
        || has("IllegalLocationConstraint")
    {
        "\n  help: the bucket is in another region: set `region` in [storage] (or AWS_REGION) to the bucket's region"
    } else if has("error sending request")
        || has("Connection refused")
        || has("dns error")
        || has("connect")
    {
        "\n  help: the S3 endpoint cannot be reached: check [storage] s3_endpoint_url / AWS_ENDPOINT_URL_S3 and the network"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_fix() {
        assert!(
            hint("Client error with status 404 Not Found: <Code>NoSuchBucket</Code>")
                .contains("does not exist")
        );
        assert!(hint("<Code>AccessDenied</Code>").contains("s3:GetObject"));
        assert!(hint("<Code>InvalidAccessKeyId</Code>").contains("credentials"));
        assert!(
            hint("<Code>AuthorizationHeaderMalformed</Code> the region 'us-east-1' is wrong")
                .contains("region")
        );
        assert!(hint("error sending request: Connection refused").contains("cannot be reached"));
        assert_eq!(hint("something else"), "");
    }

    #[test]
    fn keys_become_paths() {
        assert_eq!(object_path("/a/b/").as_ref(), "a/b");
        assert_eq!(object_path("").as_ref(), "");
        assert_eq!(object_path("dir/x y.png").as_ref(), "dir/x y.png");
    }
}
