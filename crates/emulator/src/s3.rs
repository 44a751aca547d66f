//! A real S3-compatible server on loopback — `s3s-fs`, serving a folder (buckets are its
//! subfolders) — for `--emulator` runs and the tests of async jobs. Requests must be signed
//! (SigV4, checked) with the emulator's dummy credentials ([`crate::ACCESS_KEY`]) or keys the
//! caller registers.

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why the server dropped a connection (an injected reset, or the S3 service's own error).
#[derive(Debug)]
struct Dropped(String);

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Dropped {}

/// Transient failures a local S3 server injects, for tests of clients' retries: every
/// `slow_down_every`-th request is answered `503 SlowDown`, every `reset_every`-th has its
/// connection dropped without an answer (0: never). Counted over all requests, so they land
/// on listings, reads and writes alike.
#[derive(Debug, Clone, Copy, Default)]
pub struct S3Faults {
    pub slow_down_every: u64,
    pub reset_every: u64,
}

/// A running local S3 server.
pub struct LocalS3 {
    pub addr: SocketAddr,
    pub root: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl LocalS3 {
    /// Serves `root` on `addr` (port 0 picks a free port) until dropped; creates `buckets`.
    /// Requests must be signed with the emulator's dummy credentials or one of `keys`
    /// (access key id, secret).
    pub async fn start(
        addr: SocketAddr,
        root: &Path,
        buckets: &[&str],
        keys: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_with_faults(addr, root, buckets, keys, S3Faults::default()).await
    }

    /// As [`Self::start`], injecting `faults`.
    pub async fn start_with_faults(
        addr: SocketAddr,
        root: &Path,
        buckets: &[&str],
        keys: &[(&str, &str)],
        faults: S3Faults,
    ) -> Result<Self> {
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).with_context(|| {
                format!("cannot create bucket folder {}", root.join(b).display())
            })?;
        }
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| anyhow::anyhow!("cannot serve {} as S3: {e:?}", root.display()))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        // Signatures are checked for real, against these keys.
        let mut auth = s3s::auth::SimpleAuth::from_single(crate::ACCESS_KEY, crate::SECRET_KEY);
        for (k, s) in keys {
            auth.register(k.to_string(), s.to_string().into());
        }
        builder.set_auth(auth);
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (svc, requests) = (service.clone(), requests.clone());
                let faulty = hyper::service::service_fn(move |req| {
                    let (svc, n) = (svc.clone(), requests.fetch_add(1, Ordering::Relaxed) + 1);
                    async move {
                        let every = |k: u64| k > 0 && n.is_multiple_of(k);
                        if every(faults.reset_every) {
                            return Err(Dropped("injected connection reset".into()));
                        }
                        if every(faults.slow_down_every) {
                            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                            let mut resp = hyper::Response::new(s3s::Body::from(body.to_string()));
                            *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            return Ok(resp);
                        }
                        hyper::service::Service::call(&svc, req)
                            .await
                            .map_err(|e| Dropped(format!("{e:?}")))
                    }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), faulty)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            root: root.to_path_buf(),
            task,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until the task ends (it does not, short of a panic).
    pub async fn wait(mut self) -> Result<()> {
        (&mut self.task).await?;
        Ok(())
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
