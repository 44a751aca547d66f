//! The ONNX Runtime engine: one session per model, built once; inputs tokenized, sorted by
//! length and padded only to the longest of their batch; pooled (mean / CLS) and normalised as
//! the model was trained. `embed` is CPU-bound: call it from a blocking thread.

use super::catalogue::Pooling;
use super::files::{Graph, ModelFiles};
use super::runtime;
use anyhow::{anyhow, bail, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::Path;
use std::sync::Mutex;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

/// How a model runs, resolved from the catalogue, the model folder and the pipeline file.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub pooling: Pooling,
    pub normalize: bool,
    /// Tokens the model reads (longer inputs are cut, as sentence-transformers does).
    pub max_tokens: usize,
    /// Put before every input (e5's `passage: ` when indexing, `query: ` when searching).
    pub prefix: String,
    /// Inputs per forward pass when `embed` is given more.
    pub batch_size: usize,
    /// ONNX Runtime's intra-op threads.
    pub threads: usize,
    /// The dimension the pipeline file expects; the model's output is checked against it.
    pub dimension: usize,
    /// Fetch ONNX Runtime when it is missing.
    pub download_runtime: bool,
}

/// Result of embedding: vectors row-major (`n * dimension`) and tokens read.
pub struct Embedded {
    pub vectors: Vec<f32>,
    pub tokens: u64,
}

/// Characters of an input tokenized first; a longer prefix is tried only while it holds too
/// few tokens.
const FIRST_PREFIX_CHARS: usize = 4096;
/// Tokens past the model's limit a prefix must hold before it is known to give the same first
/// tokens as the whole text (WordPiece makes at most 100 tokens of one word).
const PREFIX_TOKEN_MARGIN: usize = 128;

/// Loads `tokenizer.json` without truncation or padding (for counting).
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let mut t = Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: invalid tokenizer.json: {e}", path.display()))?;
    t.with_padding(None);
    t.with_truncation(None)
        .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
    Ok(t)
}

/// The id `tokenizer.json` pads with (XLM-R's is 1), else 0. Padded positions are masked, so
/// it matters only to graphs that read ids without the mask.
fn pad_id(dir: &Path) -> i64 {
    Tokenizer::from_file(dir.join("tokenizer.json"))
        .ok()
        .and_then(|t| t.get_padding().map(|p| i64::from(p.pad_id)))
        .unwrap_or(0)
}

/// Counts tokens exactly as the model reads them (prefix and `[CLS]`/`[SEP]` included), for
/// chunk sizes.
pub struct TokenizerCounter {
    tokenizer: Tokenizer,
    prefix: String,
    name: String,
    max_tokens: usize,
}

impl TokenizerCounter {
    /// Counts `prefix` + text with `tokenizer`, for a model that reads `max_tokens`.
    pub fn new(tokenizer: Tokenizer, prefix: &str, model: &str, max_tokens: usize) -> Self {
        Self {
            tokenizer,
            prefix: prefix.to_string(),
            name: format!("the tokenizer of {model}"),
            max_tokens,
        }
    }
}

impl crate::util::tokens::TokenCounter for TokenizerCounter {
    fn count(&self, text: &str) -> usize {
        let encoded = if self.prefix.is_empty() {
            self.tokenizer.encode(text, true)
        } else {
            self.tokenizer
                .encode(format!("{}{text}", self.prefix), true)
        };
        // A text the tokenizer refuses counts as too long, so it is never sent whole.
        encoded.map_or(usize::MAX, |e| e.len())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn max_tokens(&self) -> Option<usize> {
        Some(self.max_tokens)
    }
}

/// A loaded model.
pub struct OnnxModel {
    session: Mutex<Session>,
    /// Truncating tokenizer (padding is done here, per batch).
    tokenizer: Tokenizer,
    /// The same without truncation, for counting and cutting huge inputs.
    counter: Tokenizer,
    settings: EngineSettings,
    token_type_ids: bool,
    output: String,
    pad_id: i64,
    model_name: String,
}

impl OnnxModel {
    pub fn load(files: &ModelFiles, settings: EngineSettings, model_name: &str) -> Result<Self> {
        let counter = load_tokenizer(&files.dir)?;
        let pad_id = pad_id(&files.dir);
        let mut tokenizer = counter.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: settings.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
        let env = runtime::environment(settings.download_runtime)?;
        let session = match &files.graph {
            Graph::Onnx(path) => build_session(env, settings.threads, |b| b.commit_from_file(path))
                .with_context(|| format!("{}: cannot load the ONNX model", path.display()))?,
            Graph::Bert(dir) => {
                let bytes = super::export::bert_onnx(dir)?;
                build_session(env, settings.threads, |b| b.commit_from_memory(&bytes))
                    .with_context(|| {
                        format!("{}: cannot load the converted model", dir.display())
                    })?
            }
        };
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input_ids", "attention_mask"] {
            if !names.contains(&needed) {
                bail!("the ONNX model has no `{needed}` input (it has {names:?}); embedpipe runs sentence-transformers exports");
            }
        }
        let token_type_ids = names.contains(&"token_type_ids");
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let output = [
            "sentence_embedding",
            "last_hidden_state",
            "token_embeddings",
        ]
        .into_iter()
        .find(|n| outputs.contains(n))
        .or(outputs.first().copied())
        .context("the ONNX model has no output")?
        .to_string();
        let model = Self {
            session: Mutex::new(session),
            tokenizer,
            counter,
            settings,
            token_type_ids,
            output,
            pad_id,
            model_name: model_name.to_string(),
        };
        // One short input: a wrong dimension is an error now, before any row is read.
        model.embed(&["embedpipe"])?;
        Ok(model)
    }

    pub fn dimension(&self) -> usize {
        self.settings.dimension
    }

    /// A counter of the tokens this model reads.
    pub fn token_counter(&self) -> TokenizerCounter {
        TokenizerCounter::new(
            self.counter.clone(),
            &self.settings.prefix,
            &self.model_name,
            self.settings.max_tokens,
        )
    }

    /// The shortest tried prefix of `text` that gives the same tokens as the whole text up to
    /// the model's limit: memory per input stays bounded whatever the field's size.
    pub fn readable_prefix<'a>(&self, text: &'a str) -> Result<&'a str> {
        let mut chars = FIRST_PREFIX_CHARS;
        loop {
            let Some((cut, _)) = text.char_indices().nth(chars) else {
                return Ok(text);
            };
            let prefix = &text[..cut];
            let tokens = self
                .counter
                .encode(prefix, false)
                .map_err(|e| anyhow!("tokenizer: {e}"))?
                .len();
            if tokens > self.settings.max_tokens + PREFIX_TOKEN_MARGIN {
                return Ok(prefix);
            }
            chars = chars.saturating_mul(4);
        }
    }

    /// Embeds `texts`: shortest first, in batches of `batch_size`, each padded to its longest.
    pub fn embed(&self, texts: &[&str]) -> Result<Embedded> {
        let dim = self.settings.dimension;
        let inputs = texts
            .iter()
            .map(|t| {
                Ok(format!(
                    "{}{}",
                    self.settings.prefix,
                    self.readable_prefix(t)?
                ))
            })
            .collect::<Result<Vec<String>>>()?;
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let mut vectors = vec![0f32; texts.len() * dim];
        let mut tokens = 0u64;
        for batch in order.chunks(self.settings.batch_size.max(1)) {
            let rows: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            let pooled = self.forward(&rows)?;
            if pooled.len() != batch.len() * dim {
                // Checked when the model loads, before any row is read.
                let got = pooled.len() / batch.len().max(1);
                bail!(
                    "model {} gives {got}-dimensional vectors, the pipeline file says {dim}; set \
                     `dimensions = {got}`",
                    self.model_name
                );
            }
            for (k, &i) in batch.iter().enumerate() {
                vectors[i * dim..(i + 1) * dim].copy_from_slice(&pooled[k * dim..(k + 1) * dim]);
            }
            tokens += rows.iter().map(|e| e.len() as u64).sum::<u64>();
        }
        Ok(Embedded { vectors, tokens })
    }

    /// One forward pass over `rows` padded to the longest; returns pooled vectors row-major.
    fn forward(&self, rows: &[&Encoding]) -> Result<Vec<f32>> {
        let b = rows.len();
        let l = rows.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad_id; b * l];
        let mut mask = vec![0i64; b * l];
        let mut types = vec![0i64; b * l];
        for (r, e) in rows.iter().enumerate() {
            let n = e.len();
            for (dst, &src) in ids[r * l..r * l + n].iter_mut().zip(e.get_ids()) {
                *dst = i64::from(src);
            }
            for (dst, &src) in mask[r * l..r * l + n]
                .iter_mut()
                .zip(e.get_attention_mask())
            {
                *dst = i64::from(src);
            }
            for (dst, &src) in types[r * l..r * l + n].iter_mut().zip(e.get_type_ids()) {
                *dst = i64::from(src);
            }
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let (shape, data) = run(
            &mut session,
            &self.output,
            self.token_type_ids,
            b,
            l,
            &ids,
            &mask,
            &types,
        )
        .map_err(|e| anyhow!("ONNX Runtime: {e}"))?;
        let mut out = match shape.as_slice() {
            // Pooled by the graph (a `sentence_embedding` output).
            [rb, h] if *rb as usize == b => data[..b * *h as usize].to_vec(),
            [rb, rl, h] if *rb as usize == b && *rl as usize == l => {
                pool(&data, &mask, b, l, *h as usize, self.settings.pooling)
            }
            other => bail!("unexpected output shape {other:?} of `{}`", self.output),
        };
        if self.settings.normalize {
            let h = out.len() / b.max(1);
            for v in out.chunks_mut(h.max(1)) {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(out)
    }
}

/// Runs the session and copies the output out (ort's values borrow the session).
#[allow(clippy::too_many_arguments)]
fn run(
    session: &mut Session,
    output: &str,
    token_type_ids: bool,
    b: usize,
    l: usize,
    ids: &[i64],
    mask: &[i64],
    types: &[i64],
) -> ort::Result<(Vec<i64>, Vec<f32>)> {
    let mut inputs = ort::inputs![
        "input_ids" => TensorRef::from_array_view(([b, l], ids))?,
        "attention_mask" => TensorRef::from_array_view(([b, l], mask))?,
    ];
    if token_type_ids {
        inputs.push((
            "token_type_ids".into(),
            TensorRef::from_array_view(([b, l], types))?.into(),
        ));
    }
    let outputs = session.run(inputs)?;
    let (shape, data) = outputs[output].try_extract_tensor::<f32>()?;
    Ok((shape.iter().copied().collect(), data.to_vec()))
}

/// Pools `[b, l, h]` token vectors into `[b, h]`.
fn pool(hidden: &[f32], mask: &[i64], b: usize, l: usize, h: usize, pooling: Pooling) -> Vec<f32> {
    let mut out = vec![0f32; b * h];
    for r in 0..b {
        let dst = &mut out[r * h..(r + 1) * h];
        match pooling {
            Pooling::Cls => dst.copy_from_slice(&hidden[r * l * h..r * l * h + h]),
            Pooling::Mean => {
                let mut count = 0f32;
                for t in 0..l {
                    if mask[r * l + t] == 0 {
                        continue;
                    }
                    count += 1.0;
                    let src = &hidden[(r * l + t) * h..(r * l + t + 1) * h];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                }
                let count = count.max(1e-9);
                dst.iter_mut().for_each(|d| *d /= count);
            }
        }
    }
    out
}

/// Builds a session with `threads` intra-op threads. ort's builder errors carry the builder (not
/// `Send`), so they are turned into strings here.
fn build_session(
    env: &ort::environment::Environment,
    threads: usize,
    commit: impl FnOnce(&mut ort::session::builder::SessionBuilder) -> ort::Result<Session>,
) -> Result<Session> {
    let mut builder = Session::builder(env)
        .and_then(|b| {
            b.with_optimization_level(GraphOptimizationLevel::All)
                .map_err(Into::into)
        })
        .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(Into::into))
        .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
        .map_err(|e: ort::Error| anyhow!("{e}"))?;
    commit(&mut builder).map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_padding_and_cls_takes_the_first_token() {
        // b=2, l=3, h=2; row 1 has one padded position holding garbage.
        let hidden = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 30.0, 40.0, 999.0, 999.0,
        ];
        let mask = [1, 1, 1, 1, 1, 0];
        let mean = pool(&hidden, &mask, 2, 3, 2, Pooling::Mean);
        assert_eq!(mean, vec![3.0, 4.0, 20.0, 30.0]);
        let cls = pool(&hidden, &mask, 2, 3, 2, Pooling::Cls);
        assert_eq!(cls, vec![1.0, 2.0, 10.0, 20.0]);
    }
}
