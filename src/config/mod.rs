//! Layer 2, config (above util and wire's vocabulary): the pipeline file as written — parsing,
//! raw values with their spans, `${ENV}` expansion, literal secrets refused, and every check that
//! needs no model registry and no data. Checks against a model's spec are the resolve layer's
//! (it supplies them as [`SpecChecks`], and its `load` is the full load), defaults are applied
//! once there too; checks that need the source schema or the sink are the `validate` command's.
//!
//! `file` holds the serde structs of the file, `step` the embed steps built from it; `env`,
//! `secrets`, `error` and `origin` serve parsing and messages. The checks are `impl Pipeline`
//! blocks, one file per part of the file (`check_source`, `check_models`, `check_steps`,
//! `check_sink`), run in that order by [`Pipeline::parse_with`], with the [`SpecChecks`] at
//! their places among them.

mod check_chunk;
mod check_models;
mod check_sink;
mod check_source;
mod check_steps;
mod check_storage;
mod chunk;
mod env;
mod error;
mod file;
mod origin;
mod secrets;
mod spec_checks;
mod step;

pub use check_chunk::{Chunking, MAX_CHUNK_TOKENS, MIN_CHUNK_TOKENS};
pub use check_storage::{check_s3_endpoint, is_loopback, keep_versions, KeepRule};
pub use chunk::{ChunkConfig, ChunkStrategy};
pub use env::{expand, is_credential_variable, EnvString};
pub use error::{did_you_mean, ConfigError, ConfigErrorDetail};
pub use file::{
    Cleanup, ColumnType, EmbedConfig, Invoke, KeepVersions, ModelConfig, PipelineFile,
    PriceOverride, Provider, QuotaConfig, QuotaScope, SinkConfig, SinkKind, SourceConfig,
    SourceKind, StorageConfig, VectorIndex, WriteMode,
};
pub use origin::Origin;
pub use secrets::redact_key_ids;
pub use spec_checks::SpecChecks;
pub use step::{MediaModality, Step, StepInput, Template, TemplatePart};

use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// A loaded, statically checked pipeline file.
#[derive(Debug)]
pub struct Pipeline {
    pub path: PathBuf,
    pub text: Arc<str>,
    pub file: PipelineFile,
    /// The embed steps, built from the file, in file order.
    pub steps: Vec<Step>,
    /// The `[chunk]` stage, when rows are split into chunks.
    pub chunk: Option<Chunking>,
}

impl Pipeline {
    /// Whether the (single) step embeds video/audio into segments.
    pub fn has_media_step(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.input, StepInput::Media(..)))
    }
}

/// Reads a pipeline file's text (the whole load, with every check, is the resolve layer's).
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::whole_file(path, format!("cannot read pipeline file: {e}"))
            .with_help("check the path; pipeline files usually live in `pipelines/`")
    })
}

impl Pipeline {
    /// Parses and checks pipeline text; `path` is used for messages and relative paths. Checks
    /// against the model specs are `specs`', run at their places among config's own (the full
    /// parse, with the registry's checks, is the resolve layer's).
    pub fn parse_with(
        path: &Path,
        text: &str,
        specs: &dyn SpecChecks,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::de::DeTable::parse(text).map_err(|e| {
            ConfigError::at(
                path,
                text,
                e.span(),
                format!("invalid TOML: {}", e.message().trim()),
            )
        })?;
        // Every string value, whatever its key, expands `${VAR}` the same way; spans still
        // point at the text as written.
        env::expand_table(table.get_mut(), &|name| std::env::var(name).ok())
            .map_err(|(span, message)| ConfigError::at(path, text, Some(span), message))?;
        secrets::check_no_secrets(path, text, table.get_ref())?;
        let file: PipelineFile = PipelineFile::deserialize(toml::de::Deserializer::from(table))
            .map_err(|e| {
                let (message, help) = error::explain_serde_message(e.message());
                let mut err = ConfigError::at(path, text, e.span(), message);
                err.help = help;
                err
            })?;
        let mut pipeline = Pipeline {
            path: path.to_path_buf(),
            text: Arc::from(text),
            file,
            steps: Vec::new(),
            chunk: None,
        };
        pipeline.steps = pipeline.check(specs)?;
        pipeline.chunk = pipeline.check_chunk(&pipeline.steps)?;
        Ok(pipeline)
    }

    /// An error pointing at `span` of this file.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path, &self.text, Some(span), message)
    }

    /// The file, for errors that components raise later.
    pub fn origin(&self) -> Origin {
        Origin::new(&self.path, self.text.clone())
    }

    /// Folder that relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Resolves a path from the file against [`Self::base_dir`].
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            normalize(&self.base_dir().join(p))
        }
    }

    pub fn source(&self) -> &SourceConfig {
        self.file.source.get_ref()
    }

    pub fn sink(&self) -> &SinkConfig {
        self.file.sink.get_ref()
    }

    /// `[storage]` (empty when the file has none).
    pub fn storage(&self) -> Option<&StorageConfig> {
        self.file.storage.as_ref().map(|s| s.get_ref())
    }

    pub fn model(&self, index: usize) -> &ModelConfig {
        self.file.models[index].get_ref()
    }

    pub fn write_mode(&self) -> WriteMode {
        self.sink()
            .mode
            .as_ref()
            .map_or(WriteMode::default(), |m| *m.get_ref())
    }

    /// The source inputs (files, globs or the image folder) as written.
    pub fn source_paths(&self) -> Vec<&Spanned<EnvString>> {
        let s = self.source();
        s.path.iter().chain(s.paths.iter().flatten()).collect()
    }

    /// Every check, in the order errors are reported: source, quotas and models, steps, sink.
    fn check(&self, specs: &dyn SpecChecks) -> Result<Vec<Step>, ConfigError> {
        self.check_source()?;
        self.check_storage()?;
        self.check_models(specs)?;
        let steps = self.check_steps(specs)?;
        self.check_sink(&steps)?;
        Ok(steps)
    }
}

/// Removes `.` and resolvable `..` components without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
pub(crate) mod tests;
