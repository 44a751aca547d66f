//! Expanding `path` / `paths` (files, globs, folders; local or in S3) into the list of input
//! files.

use super::folder::Filters;
use super::need;
use crate::clients::store::{ObjectInfo, Stores};
use crate::config::SourceKind;
use crate::resolve::{SourcePath, SourceSettings};
use crate::util::{Location, S3Uri};
use anyhow::Result;
use globset::{GlobBuilder, GlobMatcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One input file (or, for images and documents, the folder).
#[derive(Debug, Clone)]
pub struct InputFile {
    /// The file; for images and documents the folder (a local folder or an S3 prefix).
    pub location: Location,
    /// The object's size when its listing told it (S3), so reading it needs no HEAD.
    pub size: Option<u64>,
    /// How the file is named in messages and dead letters.
    pub display: Arc<str>,
    /// Prefix of derived row ids: the path relative to the glob's fixed part (or the file name).
    pub id_prefix: String,
}

/// A source that reads a folder (images, documents) rather than files: what its messages call
/// it, and which of its files it reads.
#[derive(Clone, Copy)]
struct FolderKind {
    kind: SourceKind,
    /// `image`, `document`.
    noun: &'static str,
    /// A folder name for the S3 help.
    example: &'static str,
}

impl FolderKind {
    fn of(kind: SourceKind) -> Option<Self> {
        let (noun, example) = match kind {
            SourceKind::Images => ("image", "photos"),
            SourceKind::Documents => ("document", "docs"),
            SourceKind::Parquet | SourceKind::Csv => return None,
        };
        Some(Self {
            kind,
            noun,
            example,
        })
    }

    fn filters(self, settings: &SourceSettings) -> Result<Filters> {
        match self.kind {
            SourceKind::Documents => super::documents::filters(&settings.documents),
            _ => super::images::filters(&settings.images),
        }
    }

    fn recursive(self, settings: &SourceSettings) -> bool {
        match self.kind {
            SourceKind::Documents => settings.documents.recursive,
            _ => settings.images.recursive,
        }
    }
}

fn glob_root(pattern: &str) -> PathBuf {
    let mut root = PathBuf::new();
    for comp in Path::new(pattern).components() {
        let s = comp.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[', '{']) {
            return root;
        }
        root.push(comp);
    }
    root.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn rel_slash(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Expands the source's `path`/`paths` into files; every pattern must match something.
/// `stores` is `None` only when no path is in S3.
pub async fn expand_inputs(
    settings: &SourceSettings,
    stores: Option<&Stores>,
) -> Result<Vec<InputFile>> {
    let mut out: Vec<InputFile> = Vec::new();
    for p in &settings.paths {
        match &p.resolved {
            Location::Local(resolved) => expand_local(settings, p, resolved, &mut out)?,
            Location::S3(uri) => expand_s3(settings, p, uri, need(stores)?, &mut out).await?,
        }
    }
    out.dedup_by(|a, b| a.location == b.location);
    Ok(out)
}

fn expand_local(
    settings: &SourceSettings,
    p: &SourcePath,
    resolved: &Path,
    out: &mut Vec<InputFile>,
) -> Result<()> {
    let origin = &settings.origin;
    let raw = p.written.as_str();
    let resolved_str = resolved.to_string_lossy().to_string();
    if let Some(folder) = FolderKind::of(settings.kind) {
        if !resolved.is_dir() {
            return Err(origin
                .error(
                    p.span.clone(),
                    format!(
                        "{} folder {} does not exist or is not a folder",
                        folder.noun,
                        resolved.display()
                    ),
                )
                .with_help("paths are relative to the pipeline file's folder")
                .into());
        }
        out.push(InputFile {
            display: Arc::from(resolved_str.as_str()),
            location: Location::Local(resolved.to_path_buf()),
            size: None,
            id_prefix: String::new(),
        });
        return Ok(());
    }
    let is_glob = raw.contains(['*', '?', '[']);
    if !is_glob {
        if !resolved.is_file() {
            return Err(origin
                .error(p.span.clone(), format!("file {} does not exist", resolved.display()))
                .with_help("paths are relative to the pipeline file's folder; globs like \"data/*.parquet\" work too")
                .into());
        }
        let id_prefix = resolved
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        out.push(InputFile {
            display: Arc::from(resolved_str.as_str()),
            location: Location::Local(resolved.to_path_buf()),
            size: None,
            id_prefix,
        });
        return Ok(());
    }
    let root = glob_root(&resolved_str);
    let entries = glob::glob(&resolved_str)
        .map_err(|e| origin.error(p.span.clone(), format!("invalid glob: {e}")))?;
    let mut matched: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|p| p.is_file())
        .collect();
    matched.sort();
    if matched.is_empty() {
        return Err(origin
            .error(
                p.span.clone(),
                format!("glob {resolved_str} matches no files"),
            )
            .with_help("paths are relative to the pipeline file's folder")
            .into());
    }
    for m in matched {
        let id_prefix = rel_slash(&m, &root);
        out.push(InputFile {
            display: Arc::from(m.to_string_lossy().as_ref()),
            location: Location::Local(m),
            size: None,
            id_prefix,
        });
    }
    Ok(())
}

/// Characters that make a path a glob (as for local paths).
const GLOB_CHARS: [char; 3] = ['*', '?', '['];

/// The part of a key glob that is listed once: up to the `/` before its first wildcard
/// (`data/2024/` for `data/2024/*.parquet`; empty, the whole bucket, for `*.csv`).
fn fixed_prefix(pattern: &str) -> &str {
    let first = pattern
        .find(|c: char| GLOB_CHARS.contains(&c) || c == '{')
        .unwrap_or(pattern.len());
    pattern[..first].rfind('/').map_or("", |i| &pattern[..=i])
}

/// A key glob, matched against whole keys: `*` and `?` stay within one folder level, `**`
/// crosses levels (as for local paths).
fn key_glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()?
        .compile_matcher())
}

/// The objects of `listing` whose key `glob` matches (the listing is in key order).
fn matching(listing: Vec<ObjectInfo>, glob: &GlobMatcher) -> Vec<ObjectInfo> {
    listing
        .into_iter()
        .filter(|o| !o.uri.key.ends_with('/') && glob.is_match(&o.uri.key))
        .collect()
}

async fn expand_s3(
    settings: &SourceSettings,
    p: &SourcePath,
    uri: &S3Uri,
    stores: &Stores,
    out: &mut Vec<InputFile>,
) -> Result<()> {
    let at = |message: String| settings.origin.error(p.span.clone(), message);
    // Store errors already name the URI and what to do; this adds where the path is written.
    let failed = |e: anyhow::Error| at(format!("{e:#}"));
    if let Some(kind) = FolderKind::of(settings.kind) {
        let folder = uri.folder();
        let filters = kind.filters(settings).map_err(failed)?;
        if !super::folder::s3_folder_has_files(stores, &folder, &filters, kind.recursive(settings))
            .await
            .map_err(failed)?
        {
            return Err(at(format!(
                "no {}s under {folder}: check the prefix and include globs",
                kind.noun
            ))
            .with_help(format!("an S3 {} folder is a prefix (s3://bucket/{}/); `include` and `exclude` match keys relative to it", kind.noun, kind.example))
            .into());
        }
        out.push(InputFile {
            display: Arc::from(folder.to_string().as_str()),
            location: Location::S3(folder),
            size: None,
            id_prefix: String::new(),
        });
        return Ok(());
    }
    if !uri.key.contains(GLOB_CHARS) {
        let Some(size) = stores.head(uri).await.map_err(failed)? else {
            return Err(at(format!("object {uri} does not exist"))
                .with_help("an S3 path names one object (s3://bucket/key); globs like \"s3://bucket/data/*.parquet\" work too")
                .into());
        };
        let name = uri.key.rsplit('/').next().unwrap_or_default();
        out.push(InputFile {
            display: Arc::from(uri.to_string().as_str()),
            location: Location::S3(uri.clone()),
            size: Some(size),
            id_prefix: name.to_string(),
        });
        return Ok(());
    }
    let glob = key_glob(&uri.key).map_err(|e| at(format!("invalid glob: {e}")))?;
    let fixed = fixed_prefix(&uri.key);
    let folder = S3Uri {
        bucket: uri.bucket.clone(),
        key: fixed.to_string(),
    };
    let matched = matching(stores.list(&folder).await.map_err(failed)?, &glob);
    if matched.is_empty() {
        return Err(at(format!("glob {uri} matches no objects"))
            .with_help("the glob is matched against whole keys: `*` and `?` stay within one folder level, `**` crosses levels")
            .into());
    }
    for o in matched {
        let id_prefix = o
            .uri
            .key
            .strip_prefix(fixed)
            .unwrap_or(&o.uri.key)
            .to_string();
        out.push(InputFile {
            display: Arc::from(o.uri.to_string().as_str()),
            location: Location::S3(o.uri),
            size: Some(o.size),
            id_prefix,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_root_stops_at_first_wildcard() {
        assert_eq!(glob_root("data/2024/*.parquet"), PathBuf::from("data/2024"));
        assert_eq!(glob_root("data/**/x.csv"), PathBuf::from("data"));
        assert_eq!(
            rel_slash(Path::new("data/a/b.csv"), Path::new("data")),
            "a/b.csv"
        );
    }

    #[test]
    fn key_globs_list_their_fixed_prefix_once() {
        assert_eq!(fixed_prefix("data/2024/*.parquet"), "data/2024/");
        assert_eq!(fixed_prefix("data/**/x.csv"), "data/");
        assert_eq!(fixed_prefix("data/2024*/x.csv"), "data/");
        assert_eq!(fixed_prefix("data/part-[0-9].csv"), "data/");
        assert_eq!(fixed_prefix("*.csv"), "");
    }

    #[test]
    fn key_globs_match_as_local_globs_do() {
        let objects = |keys: &[&str]| -> Vec<ObjectInfo> {
            keys.iter()
                .map(|k| ObjectInfo {
                    uri: S3Uri {
                        bucket: "b".into(),
                        key: k.to_string(),
                    },
                    size: 1,
                })
                .collect()
        };
        let keys = |glob: &str, listing: &[&str]| -> Vec<String> {
            matching(objects(listing), &key_glob(glob).unwrap())
                .into_iter()
                .map(|o| o.uri.key)
                .collect()
        };
        let listing = [
            "data/a.csv",
            "data/a.parquet",
            "data/b1.parquet",
            "data/x/a.parquet",
            "data/x/y/c.csv",
            "data/x/",
        ];
        // `*` and `?` stay within one folder level.
        assert_eq!(
            keys("data/*.parquet", &listing),
            ["data/a.parquet", "data/b1.parquet"]
        );
        assert_eq!(keys("data/b?.parquet", &listing), ["data/b1.parquet"]);
        assert_eq!(keys("data/[ab].csv", &listing), ["data/a.csv"]);
        // `**` crosses levels, zero or more; folder markers are no objects.
        assert_eq!(
            keys("data/**/*.csv", &listing),
            ["data/a.csv", "data/x/y/c.csv"]
        );
        assert_eq!(keys("data/**", &listing).len(), 5);
        assert!(keys("other/*.csv", &listing).is_empty());
    }
}
