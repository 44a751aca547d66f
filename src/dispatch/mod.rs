//! Dispatch: schedules model calls per model and keeps per-model statistics.
//!
//! It splits a step's inputs into calls of the model's batch size (grouping inputs of similar
//! length so little compute goes to padding), runs them through the provider, and joins results
//! back in input order.

use crate::config::{Pipeline, Provider};
use crate::models::ModelSpec;
use crate::plan::Inputs;
use crate::providers::local::LocalModel;
use anyhow::{bail, Result};
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counters for one model.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ModelStats {
    pub model: String,
    pub model_id: String,
    pub calls: u64,
    pub inputs: u64,
    pub input_tokens: u64,
    pub failed_calls: u64,
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub busy: Duration,
}

enum Backend {
    Local(LocalModel),
}

/// What a `[[model]]` produces, known from the pipeline file without loading anything.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub spec: &'static ModelSpec,
    pub dimension: usize,
    pub normalize: bool,
    pub batch_size: usize,
    /// Model id, dimension and parameters: the identity of the vector space, part of every
    /// content hash.
    pub fingerprint: String,
}

impl ModelInfo {
    pub fn from_config(pipeline: &Pipeline, index: usize) -> Self {
        let cfg = pipeline.model(index);
        let spec = pipeline.model_spec(index);
        let dimension = cfg
            .dimensions
            .as_ref()
            .map_or(spec.default_dimension(), |d| *d.get_ref());
        let normalize = cfg
            .normalize
            .as_ref()
            .map_or(spec.normalized, |n| *n.get_ref());
        let batch_size = cfg
            .batch_size
            .as_ref()
            .map_or(spec.default_batch_size, |b| *b.get_ref());
        let fingerprint =
            serde_json::json!({ "model": spec.id, "dimension": dimension, "normalize": normalize })
                .to_string();
        Self {
            name: cfg.name.get_ref().clone(),
            spec,
            dimension,
            normalize,
            batch_size,
            fingerprint,
        }
    }

    /// Infos of every `[[model]]`, indexed like the file.
    pub fn all(pipeline: &Pipeline) -> Vec<Self> {
        (0..pipeline.file.models.len())
            .map(|i| Self::from_config(pipeline, i))
            .collect()
    }
}

/// A model ready to take calls.
pub struct ModelHandle {
    pub info: ModelInfo,
    backend: Backend,
    stats: Mutex<ModelStats>,
}

/// Vectors for a step's inputs, row-major, in input order; or one error per failed input.
pub struct StepOutput {
    pub vectors: Vec<f32>,
    /// Inputs (by position) whose call failed, with the reason.
    pub failed: Vec<(usize, String)>,
}

impl ModelHandle {
    /// Loads model `index` of the pipeline.
    pub fn load(pipeline: &Pipeline, index: usize) -> Result<Self> {
        let info = ModelInfo::from_config(pipeline, index);
        let cfg = pipeline.model(index);
        let backend = match info.spec.provider {
            Provider::Local => {
                let path = cfg.path.as_ref().map(|p| pipeline.resolve(p.get_ref()));
                let download = cfg.download.as_ref().is_none_or(|d| *d.get_ref())
                    && std::env::var_os("EMBEDPIPE_OFFLINE").is_none();
                Backend::Local(LocalModel::load(path.as_deref(), download, info.normalize)?)
            }
        };
        Ok(Self {
            stats: Mutex::new(ModelStats {
                model: info.name.clone(),
                model_id: info.spec.id.to_string(),
                ..Default::default()
            }),
            info,
            backend,
        })
    }

    pub fn stats(&self) -> ModelStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Embeds all `inputs` of a step, in calls of `batch_size`; `on_call` hears how many inputs
    /// each finished call covered.
    pub async fn embed(
        &self,
        inputs: &Inputs,
        on_call: &(dyn Fn(usize) + Sync),
    ) -> Result<StepOutput> {
        let Inputs::Text(texts) = inputs else {
            bail!(
                "model `{}` ({}) takes text only",
                self.info.name,
                self.info.spec.id
            );
        };
        let n = texts.len();
        let dim = self.info.dimension;
        let mut vectors = vec![0f32; n * dim];
        let mut failed = Vec::new();
        // Group similar lengths into the same call: padding is wasted compute.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| texts[i].len());
        for call in order.chunks(self.info.batch_size) {
            let call_texts: Vec<String> = call.iter().map(|&i| texts[i].clone()).collect();
            let started = Instant::now();
            let result = match &self.backend {
                Backend::Local(m) => m.embed(call_texts).await,
            };
            on_call(call.len());
            let mut stats = self.stats.lock().expect("stats lock");
            stats.calls += 1;
            stats.inputs += call.len() as u64;
            stats.busy += started.elapsed();
            match result {
                Ok(out) => {
                    stats.input_tokens += out.tokens;
                    for (k, &i) in call.iter().enumerate() {
                        vectors[i * dim..(i + 1) * dim]
                            .copy_from_slice(&out.vectors[k * dim..(k + 1) * dim]);
                    }
                }
                Err(e) => {
                    stats.failed_calls += 1;
                    let msg = format!("{e:#}");
                    failed.extend(call.iter().map(|&i| (i, msg.clone())));
                }
            }
        }
        failed.sort_by_key(|f| f.0);
        Ok(StepOutput { vectors, failed })
    }
}

/// All models of a pipeline that some step uses, loaded once, indexed like `[[model]]`.
pub struct Models {
    handles: Vec<Option<ModelHandle>>,
}

impl Models {
    /// Loads the models that steps use (unused `[[model]]` tables are not loaded).
    pub fn load(pipeline: &Pipeline) -> Result<Self> {
        let handles = (0..pipeline.file.models.len())
            .map(|i| {
                pipeline
                    .steps
                    .iter()
                    .any(|s| s.model_index == i)
                    .then(|| ModelHandle::load(pipeline, i))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(Self { handles })
    }

    /// The handle of model `index` (which a step uses).
    pub fn get(&self, index: usize) -> &ModelHandle {
        self.handles[index]
            .as_ref()
            .expect("only models used by steps are looked up")
    }

    /// Loaded models, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &ModelHandle> {
        self.handles.iter().flatten()
    }
}
