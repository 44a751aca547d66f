//! The object-storage checks that need no network: `[storage]` (a well-formed endpoint, plain
//! HTTP only on loopback), `s3://` URIs in `[source]` and `[sink]` (a bucket; other schemes are
//! refused), and `keep_versions`. Whether the buckets exist is for later (validate, before any
//! call).

use super::check_models::check_endpoint_url;
use super::{ConfigError, KeepVersions, Pipeline};
use crate::util::{is_url, parse_duration, S3Uri};
use std::ops::Range;

/// What to write instead of an unsupported object store.
const URL_HELP: &str = "use a local path or s3://bucket/prefix (S3 or an S3-compatible server; see [storage] s3_endpoint_url)";

impl Pipeline {
    pub(super) fn check_storage(&self) -> Result<(), ConfigError> {
        if let Some(storage) = self.storage() {
            if let Some(u) = &storage.s3_endpoint_url {
                check_s3_endpoint(u.get_ref())
                    .map_err(|why| self.error(u.span(), format!("`s3_endpoint_url` {why}")).with_help("give the scheme, host and port only, e.g. \"https://minio.internal:9000\" or \"http://127.0.0.1:9000\""))?;
            }
        }
        for p in self.source_paths() {
            self.check_url(p.get_ref(), p.span(), "source path")?;
        }
        let sink = self.sink();
        self.check_url(sink.uri.get_ref(), sink.uri.span(), "sink uri")?;
        if let Some(f) = &sink.failures {
            self.check_url(f.get_ref(), f.span(), "failures file")?;
        }
        if let Some(k) = &sink.keep_versions {
            keep_versions(k.get_ref()).map_err(|why| {
                self.error(k.span(), why).with_help(
                    "e.g. keep_versions = \"7d\" (versions younger than a week), 3 (the newest three) or \"all\"",
                )
            })?;
        }
        Ok(())
    }

    fn check_url(&self, text: &str, span: Range<usize>, what: &str) -> Result<(), ConfigError> {
        if !is_url(text) {
            return Ok(());
        }
        if !text.starts_with("s3://") {
            let scheme = text.split("://").next().unwrap_or_default();
            return Err(self
                .error(
                    span,
                    format!("{what} `{text}`: `{scheme}://` is not supported"),
                )
                .with_help(URL_HELP));
        }
        match S3Uri::parse(text) {
            Ok(u) if u.bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.') => Ok(()),
            Ok(u) => Err(self.error(span, format!("{what} `{text}`: `{}` is not a valid bucket name (lowercase letters, digits, `-` and `.`)", u.bucket))),
            Err(e) => Err(self.error(span, format!("{what}: {e}")).with_help(URL_HELP)),
        }
    }
}

/// An S3 endpoint: a plain URL; `http://` only to a loopback host (credentials and data would
/// otherwise cross the network unencrypted).
pub fn check_s3_endpoint(url: &str) -> Result<(), String> {
    check_endpoint_url(url)?;
    let uri: hyper::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    if uri.scheme_str() == Some("http") && !is_loopback(uri.host().unwrap_or_default()) {
        return Err(format!(
            "`{url}` is plain HTTP to a host that is not loopback; use https:// (plain HTTP is allowed only for 127.0.0.1, ::1 and localhost)"
        ));
    }
    Ok(())
}

/// `localhost`, `127.x.x.x` or `::1`.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What `keep_versions` means, or why it is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepRule {
    All,
    Newest(u64),
    Younger(std::time::Duration),
}

pub fn keep_versions(k: &KeepVersions) -> Result<KeepRule, String> {
    match k {
        KeepVersions::Count(n) if *n >= 1 => Ok(KeepRule::Newest(*n as u64)),
        KeepVersions::Count(n) => Err(format!(
            "keep_versions = {n}: keep at least 1 version (the current one)"
        )),
        KeepVersions::Text(t) if t == "all" => Ok(KeepRule::All),
        KeepVersions::Text(t) => parse_duration(t)
            .map(KeepRule::Younger)
            .map_err(|why| format!("keep_versions {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_s3_endpoint("http://127.0.0.1:9000").is_ok());
        assert!(check_s3_endpoint("http://localhost:9000").is_ok());
        assert!(check_s3_endpoint("http://[::1]:9000").is_ok());
        assert!(check_s3_endpoint("https://minio.internal:9000").is_ok());
        assert!(check_s3_endpoint("http://minio.internal:9000")
            .unwrap_err()
            .contains("plain HTTP"));
        assert!(check_s3_endpoint("ftp://x").is_err());
    }

    #[test]
    fn keep_rules() {
        assert_eq!(
            keep_versions(&KeepVersions::Count(3)),
            Ok(KeepRule::Newest(3))
        );
        assert!(keep_versions(&KeepVersions::Count(0)).is_err());
        assert_eq!(
            keep_versions(&KeepVersions::Text("all".into())),
            Ok(KeepRule::All)
        );
        assert_eq!(
            keep_versions(&KeepVersions::Text("1h".into())),
            Ok(KeepRule::Younger(std::time::Duration::from_secs(3600)))
        );
        assert!(keep_versions(&KeepVersions::Text("soon".into())).is_err());
    }
}
