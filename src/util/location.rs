//! Ground floor: where a file lives — a local path or an S3 object — and the durations written
//! in pipeline files (`"7d"`, `"12h"`).

use super::S3Uri;
use std::path::PathBuf;
use std::time::Duration;

/// A file or folder on the local disk or in S3: the table's side files live where it does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    Local(PathBuf),
    S3(S3Uri),
}

impl Location {
    /// `s3://…` becomes an S3 location; anything else is a local path, taken as it is.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.starts_with("s3://") {
            Ok(Self::S3(S3Uri::parse(text)?))
        } else {
            Ok(Self::Local(PathBuf::from(text)))
        }
    }

    /// `name` inside this folder.
    pub fn join(&self, name: &str) -> Self {
        match self {
            Self::Local(p) => Self::Local(p.join(name)),
            Self::S3(u) => Self::S3(u.join(name)),
        }
    }

    pub fn as_local(&self) -> Option<&std::path::Path> {
        match self {
            Self::Local(p) => Some(p),
            Self::S3(_) => None,
        }
    }

    pub fn as_s3(&self) -> Option<&S3Uri> {
        match self {
            Self::S3(u) => Some(u),
            Self::Local(_) => None,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3(u) => write!(f, "{u}"),
        }
    }
}

/// Whether `text` names an object store (`scheme://`) rather than a local path.
pub fn is_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
    })
}

/// A duration as pipeline files write it: a whole number and a unit, `s`, `m`, `h`, `d` or `w`
/// (`"90s"`, `"30m"`, `"12h"`, `"7d"`, `"2w"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. \"7d\", \"12h\" or \"30m\""))?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number (e.g. \"7d\")"))?;
    let secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "`{other}` is not a unit of `{text}`: use s, m, h, d or w (e.g. \"7d\")"
            ))
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Whole seconds in the largest unit that divides them (`604800` → `7d`), as `keep_versions`
/// writes durations.
pub fn describe_secs(secs: u64) -> String {
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("0h"), Ok(Duration::ZERO));
        assert!(parse_duration("7").unwrap_err().contains("no unit"));
        assert!(parse_duration("7 days").unwrap_err().contains("not a unit"));
        assert!(parse_duration("d").is_err());
        assert_eq!(describe_secs(7 * 86_400), "1w");
        assert_eq!(describe_secs(3 * 86_400), "3d");
        assert_eq!(describe_secs(90), "90s");
    }

    #[test]
    fn locations() {
        let s3 = Location::parse("s3://b/db").unwrap();
        assert_eq!(
            s3.join("t_failures.jsonl").to_string(),
            "s3://b/db/t_failures.jsonl"
        );
        let local = Location::parse("/tmp/db").unwrap();
        assert_eq!(
            local.join("x").as_local().unwrap(),
            std::path::Path::new("/tmp/db/x")
        );
        assert!(is_url("s3://b/k") && is_url("gs://b") && is_url("s3+ddb://b"));
        assert!(!is_url("data/a.csv") && !is_url("C:/x"));
    }
}
