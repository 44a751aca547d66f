//! S3 through the real `aws-sdk-s3` client, with the same credential chain (and region) as
//! Bedrock: media staging for async jobs and reading their results.
//!
//! With an endpoint override (a local S3-compatible server) requests are path-style.

use super::bedrock::{sdk_config, Connection};
use crate::util::S3Uri;
use anyhow::{anyhow, Context, Result};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use std::path::Path;

/// What HeadObject says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// Changes whenever the object's content does.
    pub etag: String,
}

/// A connected S3 client.
#[derive(Clone)]
pub struct S3 {
    client: aws_sdk_s3::Client,
}

impl S3 {
    /// `endpoint` overrides the S3 endpoint (a local server); requests are then path-style.
    pub async fn connect(conn: &Connection, endpoint: Option<&str>) -> Result<Self> {
        // Bedrock's endpoint override is not S3's.
        let conn = Connection {
            endpoint_url: None,
            ..conn.clone()
        };
        let cfg = sdk_config(&conn, endpoint).await?;
        let s3 = aws_sdk_s3::config::Builder::from(&cfg)
            .force_path_style(endpoint.is_some())
            .build();
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(s3),
        })
    }

    /// HeadObject: `None` when there is no such object.
    pub async fn head(&self, uri: &S3Uri) -> Result<Option<ObjectInfo>> {
        match self
            .client
            .head_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(ObjectInfo {
                size: o.content_length.unwrap_or(0).max(0) as u64,
                etag: o.e_tag.unwrap_or_default(),
            })),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(explain(e, "read", uri)),
        }
    }

    /// Uploads a local file (streamed from disk).
    pub async fn put_file(&self, uri: &S3Uri, path: &Path) -> Result<()> {
        let body = ByteStream::from_path(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        self.client
            .put_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .body(body)
            .send()
            .await
            .map_err(|e| explain(e, "write", uri))?;
        Ok(())
    }

    pub async fn put_bytes(&self, uri: &S3Uri, bytes: Vec<u8>) -> Result<()> {
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

    /// Reads a whole object (job results, small media for the emulator).
    pub async fn get(&self, uri: &S3Uri) -> Result<Vec<u8>> {
        let bytes = self
            .get_object(uri)
            .await?
            .collect()
            .await
            .with_context(|| format!("reading {uri} was cut off"))?;
        Ok(bytes.into_bytes().to_vec())
    }

    /// GetObject: the object's body, as it arrives.
    async fn get_object(&self, uri: &S3Uri) -> Result<ByteStream> {
        let out = self
            .client
            .get_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .send()
            .await
            .map_err(|e| explain(e, "read", uri))?;
        Ok(out.body)
    }

    /// Opens a JSONL object to read as it arrives, in pieces of whole lines
    /// ([`Lines::next_piece`]): a results file of any size in bounded memory.
    pub async fn get_lines(&self, uri: &S3Uri, piece: usize) -> Result<Lines> {
        Ok(Lines {
            body: self.get_object(uri).await?,
            buf: Vec::new(),
            piece,
            uri: uri.to_string(),
        })
    }

    /// Keys under a folder, in key order (all pages).
    pub async fn list(&self, folder: &S3Uri) -> Result<Vec<String>> {
        let folder = folder.folder();
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&folder.bucket)
            .prefix(&folder.key)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| explain(e, "list", &folder))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// Creates a bucket unless it exists (local servers, tests).
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err().code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(explain(
                e,
                "create",
                &S3Uri::parse(&format!("s3://{bucket}"))?,
            )),
        }
    }
}

/// An S3 error with the URI, the operation and a hint (no credentials in it).
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

/// An object being read in pieces of whole lines.
pub struct Lines {
    body: ByteStream,
    buf: Vec<u8>,
    piece: usize,
    uri: String,
}

impl Lines {
    /// The next lines, about `piece` bytes of them (the last piece is what is left); `None` at
    /// the end.
    pub async fn next_piece(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if self.buf.len() >= self.piece {
                if let Some(end) = self.buf.iter().rposition(|b| *b == b'\n') {
                    let rest = self.buf.split_off(end + 1);
                    return Ok(Some(std::mem::replace(&mut self.buf, rest)));
                }
            }
            match self.body.next().await {
                Some(chunk) => {
                    let chunk =
                        chunk.with_context(|| format!("reading {} was cut off", self.uri))?;
                    self.buf.extend_from_slice(&chunk);
                }
                None if self.buf.is_empty() => return Ok(None),
                None => return Ok(Some(std::mem::take(&mut self.buf))),
            }
        }
    }
}
