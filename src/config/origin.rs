//! The pipeline file a setting came from, so that a component that finds a problem later (a
//! glob that matches nothing, a column that is missing) can point at the line that set it.

use super::ConfigError;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The path and text of a pipeline file (cheap to clone).
#[derive(Debug, Clone)]
pub struct Origin {
    path: PathBuf,
    text: Arc<str>,
}

impl Origin {
    pub fn new(path: &Path, text: Arc<str>) -> Self {
        Self {
            path: path.to_path_buf(),
            text,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error pointing at `span` of the file.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path, &self.text, Some(span), message)
    }
}
