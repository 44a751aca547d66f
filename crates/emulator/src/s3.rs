//! A real S3-compatible server on loopback — `s3s-fs`, serving a folder (buckets are its
//! subfolders) — for `--emulator` runs and the tests of async jobs. Requests must be signed
//! (SigV4, checked) with the emulator's dummy credentials ([`crate::ACCESS_KEY`]) or keys the
//! caller registers.

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = service.clone();
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
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
