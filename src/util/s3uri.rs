//! Ground floor: `s3://bucket/key` URIs, parsed once and joined without string surgery.

use anyhow::{anyhow, bail, Result};

/// `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Uri {
    pub bucket: String,
    /// Without a leading `/`; may be empty (the bucket's root) or end with `/` (a folder).
    pub key: String,
}

impl S3Uri {
    pub fn parse(s: &str) -> Result<Self> {
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
    pub fn join(&self, name: &str) -> Self {
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

    /// This URI as a folder (ending with `/`).
    pub fn folder(&self) -> Self {
        if self.key.is_empty() || self.key.ends_with('/') {
            self.clone()
        } else {
            self.join("")
        }
    }
}

impl std::fmt::Display for S3Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = S3Uri::parse("s3://b/out").unwrap();
        assert_eq!(u.join("x.json").to_string(), "s3://b/out/x.json");
        assert_eq!(u.folder().to_string(), "s3://b/out/");
        let root = S3Uri::parse("s3://b").unwrap();
        assert_eq!(root.join("k").to_string(), "s3://b/k");
        assert!(S3Uri::parse("http://b/k").is_err());
        assert!(S3Uri::parse("s3:///k").is_err());
    }
}
