//! Expanding `path` / `paths` (files, globs, folders) into the list of input files.

use crate::config::SourceKind;
use crate::resolve::SourceSettings;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One input file (or, for images, the folder).
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    /// How the file is named in messages and dead letters.
    pub display: Arc<str>,
    /// Prefix of derived row ids: the path relative to the glob's fixed part (or the file name).
    pub id_prefix: String,
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
pub fn expand_inputs(settings: &SourceSettings) -> Result<Vec<InputFile>> {
    let kind = settings.kind;
    let origin = &settings.origin;
    let mut out: Vec<InputFile> = Vec::new();
    for p in &settings.paths {
        let raw = p.written.as_str();
        let resolved = p.resolved.clone();
        let resolved_str = resolved.to_string_lossy().to_string();
        if kind == SourceKind::Images {
            if !resolved.is_dir() {
                return Err(origin
                    .error(
                        p.span.clone(),
                        format!(
                            "image folder {} does not exist or is not a folder",
                            resolved.display()
                        ),
                    )
                    .with_help("paths are relative to the pipeline file's folder")
                    .into());
            }
            out.push(InputFile {
                display: Arc::from(resolved_str.as_str()),
                path: resolved,
                id_prefix: String::new(),
            });
            continue;
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
                path: resolved,
                id_prefix,
            });
            continue;
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
                path: m,
                id_prefix,
            });
        }
    }
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
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
}
