//! The local engine handle: a catalogue model or a custom ONNX export, on ONNX Runtime, its
//! inference on the blocking pool (never on the async runtime).

use super::catalogue::{self, Pooling, Variant};
use super::files::{self, ModelFiles, Wanted};
use super::onnx::{self, EngineSettings, OnnxModel};
use crate::resolve::ModelSettings;
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use std::sync::Arc;

pub use super::onnx::Embedded;

/// The files `info` names, fetched when missing and allowed.
pub fn model_files(info: &ModelSettings) -> Result<ModelFiles> {
    let variant = Variant::parse(&info.local.variant).unwrap_or(Variant::Fp32);
    files::locate_or_fetch(
        &Wanted {
            spec: info.spec,
            variant,
            path: info.local.path.as_deref(),
        },
        info.local.download,
    )
}

/// True when `info` embeds search queries (the query side of a retrieval model's prefixes).
fn is_query(info: &ModelSettings) -> bool {
    info.params.input_type.as_deref() == Some("query")
}

/// The prefix this model's inputs carry: the file's, else the catalogue's.
fn prefix(info: &ModelSettings) -> String {
    let entry = catalogue::entry(info.spec);
    if is_query(info) {
        info.local
            .query_prefix
            .clone()
            .or_else(|| entry.map(|e| e.query_prefix.to_string()))
    } else {
        info.local
            .document_prefix
            .clone()
            .or_else(|| entry.map(|e| e.document_prefix.to_string()))
    }
    .unwrap_or_default()
}

/// Pooling: the file's, else the catalogue's, else the folder's `1_Pooling/config.json`.
fn pooling(info: &ModelSettings, dir: &Path) -> Result<Pooling> {
    if let Some(p) = info.local.pooling.as_deref().and_then(Pooling::parse) {
        return Ok(p);
    }
    if let Some(e) = catalogue::entry(info.spec) {
        return Ok(e.pooling);
    }
    let path = dir.join("1_Pooling/config.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        anyhow!(
            "model `{}`: {} is missing, so its pooling is unknown; set `pooling = \"mean\"` or \
             `\"cls\"` in the [[model]] table",
            info.name,
            path.display()
        )
    })?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let on = |k: &str| config[k].as_bool() == Some(true);
    match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
        (true, false) => Ok(Pooling::Mean),
        (false, true) => Ok(Pooling::Cls),
        _ => Err(anyhow!(
            "{}: embedpipe pools by mean or CLS only; set `pooling` in the [[model]] table",
            path.display()
        )),
    }
}

/// The tokens the model reads: sentence-transformers' `max_seq_length` for a custom model, else
/// the registry's.
fn max_tokens(info: &ModelSettings, dir: &Path) -> usize {
    if catalogue::entry(info.spec).is_some() {
        return info.spec.max_input_tokens;
    }
    std::fs::read_to_string(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|c| c["max_seq_length"].as_u64())
        .map_or(info.spec.max_input_tokens, |m| m as usize)
}

/// Finds the model's files as [`LocalModel::load`] does (fetching them when allowed) and loads
/// its tokenizer only: chunk sizes without the weights or ONNX Runtime.
pub fn load_token_counter(
    info: &ModelSettings,
) -> Result<Arc<dyn crate::util::tokens::TokenCounter>> {
    let found = model_files(info)?;
    let tokenizer = onnx::load_tokenizer(&found.dir)?;
    Ok(Arc::new(onnx::TokenizerCounter::new(
        tokenizer,
        &prefix(info),
        info.spec.id,
        max_tokens(info, &found.dir),
    )))
}

/// ONNX Runtime's threads unless the file says: one per core.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A loaded local model.
pub struct LocalModel {
    model: Arc<OnnxModel>,
}

impl LocalModel {
    /// Finds (and, when allowed, downloads) the files and ONNX Runtime, and builds the session.
    pub fn load(info: &ModelSettings) -> Result<Self> {
        let found = model_files(info)?;
        tracing::debug!(dir = %found.dir.display(), origin = %found.origin, "loading local model");
        let settings = EngineSettings {
            pooling: pooling(info, &found.dir)?,
            normalize: info.normalize,
            max_tokens: max_tokens(info, &found.dir),
            prefix: prefix(info),
            batch_size: info.batch_size,
            threads: info.local.threads.unwrap_or_else(default_threads),
            dimension: info.dimension,
            download_runtime: info.local.download,
        };
        let model = OnnxModel::load(&found, settings, &info.name)
            .with_context(|| format!("model `{}` ({})", info.name, info.spec.id))?;
        Ok(Self {
            model: Arc::new(model),
        })
    }

    /// A catalogue model with its own defaults (for tests, benchmarks and tools): fp32 or int8,
    /// document side, batches of 32, `threads` (default: the machine's cores).
    pub fn catalogue(id: &str, variant: Variant, threads: Option<usize>) -> Result<Self> {
        let entry = embedpipe_wire::resolve(id)
            .and_then(|r| catalogue::entry(r.spec))
            .with_context(|| format!("`{id}` is not a catalogue model"))?;
        let found = files::locate_or_fetch(
            &Wanted {
                spec: entry.spec,
                variant,
                path: None,
            },
            true,
        )?;
        let settings = EngineSettings {
            pooling: entry.pooling,
            normalize: entry.spec.normalized,
            max_tokens: entry.spec.max_input_tokens,
            prefix: entry.document_prefix.to_string(),
            batch_size: entry.spec.default_batch_size,
            threads: threads.unwrap_or_else(default_threads),
            dimension: entry.spec.dimensions[0],
            download_runtime: true,
        };
        Ok(Self {
            model: Arc::new(OnnxModel::load(&found, settings, entry.spec.id)?),
        })
    }

    pub fn dimension(&self) -> usize {
        self.model.dimension()
    }

    /// Counts tokens as this model reads them.
    pub fn token_counter(&self) -> Arc<dyn crate::util::tokens::TokenCounter> {
        Arc::new(self.model.token_counter())
    }

    /// Embeds one call's texts on the blocking pool.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            model.embed(&refs)
        })
        .await
        .context("local model worker stopped")?
    }

    /// Embeds on the current thread (for benchmarks and blocking callers).
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Embedded> {
        self.model.embed(texts)
    }

    /// The part of `text` the model reads (bounded, whatever the field's size).
    pub fn readable_prefix<'a>(&self, text: &'a str) -> Result<&'a str> {
        self.model.readable_prefix(text)
    }
}
