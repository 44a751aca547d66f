//! The local catalogue through the built binary, with real ONNX Runtime and a Hugging Face Hub
//! stand-in on loopback: a model fetched from the Hub into the HF cache and then run offline
//! with the catalogue's pooling and query prefix, the error when it cannot be fetched, custom
//! exports in `path`, and a cache snapshot that holds only a safetensors checkpoint.
//!
//! The served and written graphs are all-MiniLM-L6-v2 converted to ONNX (BGE's own weights are
//! not needed to check the plumbing: pooling and prefixes show in the vectors of any BERT).
//! Every child gets its own HF cache and data dir, the test's ONNX Runtime and a Hub endpoint;
//! the test process's own environment is never changed (tests run on parallel threads).

mod common;

use common::hub_server::{Faults, HubServer, ServedFile, ServedRepo};
use common::{json_summary, table_vectors, write_pipeline, Output};
use embedpipe::engines::catalogue::{CatalogueModel, Pooling, Variant, CATALOGUE};
use embedpipe::engines::files::{self, Graph, ModelFiles, Wanted};
use embedpipe::engines::onnx::{EngineSettings, OnnxModel};
use embedpipe::engines::{export, runtime};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

const BGE_REPO: &str = "BAAI/bge-small-en-v1.5";
/// BGE's instruction before a search query, written out: a changed catalogue string shows.
const BGE_QUERY_PREFIX: &str = "Represent this sentence for searching relevant passages: ";
const DIM: usize = 384;
const OFFLINE: (&str, &str) = ("EMBEDPIPE_OFFLINE", "1");

/// The indexed rows (id, text): short (well under every token limit), no commas (plain CSV).
const ROWS: &[(&str, &str)] = &[
    (
        "r00",
        "The telescope observed a distant galaxy rich in young stars.",
    ),
    ("r01", "Add garlic and butter to the pan before the cream."),
    ("r02", "The goalkeeper saved a penalty in the final minute."),
    ("r03", "A mutex stops two threads from writing at once."),
    (
        "r04",
        "Central banks raised interest rates to fight inflation.",
    ),
    ("r05", "The volcano erupted and covered the valley in ash."),
    (
        "r06",
        "She planted tomatoes and basil in the spring garden.",
    ),
    (
        "r07",
        "The orchestra tuned their instruments before the concert.",
    ),
    (
        "r08",
        "Glaciers carve deep valleys over thousands of years.",
    ),
    (
        "r09",
        "The train to the coast leaves every hour on weekdays.",
    ),
];

#[test]
fn a_catalogue_model_is_fetched_from_the_hub_into_the_hf_cache_then_used_offline() {
    // Red if: the download misses HF_HUB_CACHE's `models--org--name/snapshots/<rev>` layout, the
    // offline run does not find that snapshot, or BGE's CLS pooling is not applied (mean-pooled
    // vectors would be stored).
    let fx = fixture();
    let bge = bge();
    let hub = HubServer::start(
        vec![ServedRepo::new(
            BGE_REPO,
            bge.hub.revision,
            vec![
                ServedFile::git("tokenizer.json", fx.tokenizer.as_slice()),
                ServedFile::lfs("onnx/model.onnx", Arc::clone(&fx.onnx)),
            ],
        )],
        Faults::default(),
    );
    let sb = Sandbox::new();

    let fetch = sb.run(
        &hub.endpoint(),
        &[],
        &["models", "fetch", "bge-small-en-v1.5"],
    );

    assert_eq!(fetch.code, 0, "{}{}", fetch.stdout, fetch.stderr);
    let snapshot = sb.snapshot(BGE_REPO, bge.hub.revision);
    assert!(
        fetch.stdout.contains(&snapshot.display().to_string()),
        "{}",
        fetch.stdout
    );
    // Compared with `==`: a failure would print megabytes.
    let tokenizer = std::fs::read(snapshot.join("tokenizer.json")).unwrap();
    assert!(
        tokenizer == fx.tokenizer,
        "the served tokenizer, byte for byte"
    );
    let graph = std::fs::read(snapshot.join("onnx/model.onnx")).unwrap();
    assert!(graph[..] == fx.onnx[..], "the served graph, byte for byte");
    assert_eq!(hub.cdn_gets().len(), 1, "{:?}", hub.requests());

    // Offline, with the Hub gone: only the cache can serve the model.
    sb.write_rows();
    let run = sb.run_pipeline("t", "id = \"bge-small-en-v1.5\"", &[OFFLINE]);

    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(json_summary(&run)["rows_written"], 10);
    let stored = table_vectors(&sb.db(), "t", "vector");
    assert_eq!(stored.len(), 10);
    let graph = Graph::Onnx(snapshot.join("onnx/model.onnx"));
    let max_tokens = bge.spec.max_input_tokens;
    let cls = by_id(&in_process(
        graph.clone(),
        &snapshot,
        Pooling::Cls,
        max_tokens,
    ));
    let mean = by_id(&in_process(graph, &snapshot, Pooling::Mean, max_tokens));
    let mut differs_from_mean = false;
    for (id, v) in &stored {
        assert_eq!(v.len(), DIM);
        let c = cosine(v, &cls[id.as_str()]);
        assert!(c >= 0.99999, "{id}: cosine {c} to the CLS-pooled vector");
        differs_from_mean |= cosine(v, &mean[id.as_str()]) < 0.9999;
    }
    assert!(
        differs_from_mean,
        "the stored vectors are the mean-pooled ones"
    );
}

#[test]
fn search_puts_the_query_prefix_before_the_query() {
    // Red if `search` embeds the query as a document (no BGE instruction): the reported distance
    // is then the one of the bare query.
    let fx = fixture();
    let bge = bge();
    let sb = Sandbox::new();
    // The snapshot as a Hub download leaves it (the download itself is the test above's).
    let snapshot = sb.snapshot(BGE_REPO, bge.hub.revision);
    write_file(&snapshot.join("tokenizer.json"), &fx.tokenizer);
    write_file(&snapshot.join("onnx/model.onnx"), &fx.onnx);
    sb.write_rows();
    let p = sb.pipeline("t", "id = \"bge-small-en-v1.5\"");
    let run = sb.run(&closed_endpoint(), &[OFFLINE], &["run", &p, "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let query = "how do young stars form in galaxies";

    let out = sb.run(
        &closed_endpoint(),
        &[OFFLINE],
        &["search", &p, query, "-k", "3", "--json"],
    );

    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let hits: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 3, "{hits:#?}");
    let stored: HashMap<String, Vec<f32>> =
        table_vectors(&sb.db(), "t", "vector").into_iter().collect();
    let model = in_process(
        Graph::Onnx(snapshot.join("onnx/model.onnx")),
        &snapshot,
        Pooling::Cls,
        bge.spec.max_input_tokens,
    );
    let prefixed = format!("{BGE_QUERY_PREFIX}{query}");
    let q = embed(&model, &[prefixed.as_str(), query]);
    // The table's metric is cosine distance: 1 - cos.
    let distance = |id: &str, q: &[f32]| 1.0 - cosine(stored[id].as_slice(), q);
    for hit in hits {
        let id = hit["id"].as_str().unwrap();
        let reported = hit["distance"].as_f64().unwrap();
        let want = distance(id, q[0].as_slice());
        assert!((reported - want).abs() < 1e-4, "{id}: {reported} != {want}");
    }
    let top = hits[0]["id"].as_str().unwrap();
    let reported = hits[0]["distance"].as_f64().unwrap();
    let bare = distance(top, q[1].as_slice());
    assert!(
        (reported - bare).abs() > 1e-4,
        "{top}: {reported} is the distance to the query without its prefix"
    );
}

#[test]
fn without_the_hub_a_missing_model_fails_before_any_row_with_what_to_do() {
    // Red if a missing model is noticed only when rows are embedded (the table would exist), or
    // the message loses the way out (`models fetch`, HF_ENDPOINT) or why the fetch failed.
    let sb = Sandbox::new();
    sb.write_rows();

    // Downloads allowed: the fetch is tried, and the Hub is not there.
    let out = sb.run_pipeline("t", "id = \"bge-small-en-v1.5\"", &[]);

    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for part in ["HF_ENDPOINT", "models fetch", "unreachable"] {
        assert!(
            out.stderr.contains(part),
            "{part} missing from: {}",
            out.stderr
        );
    }
    assert!(!sb.db().join("t.lance").exists(), "a table was created");
    assert!(!sb.snapshot(BGE_REPO, bge().hub.revision).exists());
}

#[test]
fn a_custom_onnx_export_in_a_path_runs_with_the_pooling_its_folder_declares() {
    // Red if a custom model's `1_Pooling/config.json` is ignored (vectors differ from MiniLM's
    // mean-pooled ones), an unknown pooling is silently defaulted, the model's dimension is not
    // checked against `dimensions` when it loads, or `path` naming the .onnx file is refused.
    let fx = fixture();
    let sb = Sandbox::new();
    sb.write_rows();
    let export = sb.path().join("export");
    write_file(&export.join("model.onnx"), &fx.onnx);
    write_file(&export.join("tokenizer.json"), &fx.tokenizer);
    write_file(
        &export.join("1_Pooling/config.json"),
        br#"{"word_embedding_dimension":384,"pooling_mode_cls_token":false,"pooling_mode_mean_tokens":true}"#,
    );
    let bare = sb.path().join("bare-export");
    write_file(&bare.join("model.onnx"), &fx.onnx);
    write_file(&bare.join("tokenizer.json"), &fx.tokenizer);

    // The reference: the catalogue's MiniLM, from its checkpoint folder.
    let minilm_dir = fx.minilm.to_str().unwrap();
    let minilm_env = [(files::ENV_MINILM_DIR, minilm_dir), OFFLINE];
    let out = sb.run_pipeline("catalogue", "id = \"all-MiniLM-L6-v2\"", &minilm_env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let want = table_vectors(&sb.db(), "catalogue", "vector");
    assert_eq!(want.len(), 10);

    let out = sb.run_pipeline("folder", &custom(&export, DIM), &[OFFLINE]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_same_vectors(&table_vectors(&sb.db(), "folder", "vector"), &want);

    let out = sb.run_pipeline("no_pooling", &custom(&bare, DIM), &[OFFLINE]);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("`pooling"), "{}", out.stderr);

    let out = sb.run_pipeline("wrong_dimensions", &custom(&export, 768), &[OFFLINE]);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("dimensions = 384"), "{}", out.stderr);

    let onnx_file = export.join("model.onnx");
    let out = sb.run_pipeline("onnx_file", &custom(&onnx_file, DIM), &[OFFLINE]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_same_vectors(&table_vectors(&sb.db(), "onnx_file", "vector"), &want);
}

#[test]
fn an_hf_cache_snapshot_with_only_safetensors_is_converted_and_used() {
    // Red if the HF cache is searched for ONNX files only (offline, with an empty data dir, the
    // run then has no model), HF_HUB_CACHE is not where it looks, or `models where` names
    // another place.
    let fx = fixture();
    let minilm = &CATALOGUE[0];
    let sb = Sandbox::new();
    let snapshot = sb.snapshot(minilm.hub.repo, minilm.hub.revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fx.minilm.join(name), snapshot.join(name)).unwrap();
    }
    sb.write_rows();

    let out = sb.run_pipeline("t", "id = \"all-MiniLM-L6-v2\"", &[OFFLINE]);

    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(json_summary(&out)["rows_written"], 10);
    let reference = in_process(
        Graph::Bert(fx.minilm.clone()),
        &fx.minilm,
        Pooling::Mean,
        minilm.spec.max_input_tokens,
    );
    let want: Vec<(String, Vec<f32>)> = by_id(&reference).into_iter().collect();
    assert_same_vectors(&table_vectors(&sb.db(), "t", "vector"), &want);

    let out = sb.run(
        &closed_endpoint(),
        &[OFFLINE],
        &["models", "where", "all-MiniLM-L6-v2"],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let line = format!("{} (Hugging Face cache)", snapshot.display());
    assert!(
        out.stdout.contains(&line),
        "{line} missing from: {}",
        out.stdout
    );
}

#[test]
fn run_puts_the_document_prefix_before_every_input_and_reads_cls_pooling_from_the_folder() {
    // Red if `document_prefix` is not applied by `run` (vectors equal the unprefixed ones), or a
    // folder's `pooling_mode_cls_token` is ignored (mean pooling gives other vectors).
    let fx = fixture();
    let sb = Sandbox::new();
    sb.write_rows();
    let export = sb.path().join("cls-export");
    write_file(&export.join("model.onnx"), &fx.onnx);
    write_file(&export.join("tokenizer.json"), &fx.tokenizer);
    write_file(
        &export.join("1_Pooling/config.json"),
        br#"{"word_embedding_dimension":384,"pooling_mode_cls_token":true,"pooling_mode_mean_tokens":false}"#,
    );
    let model = format!(
        "{}
document_prefix = \"passage: \"",
        custom(&export, DIM)
    );
    let out = sb.run_pipeline("prefixed", &model, &[OFFLINE]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let got = table_vectors(&sb.db(), "prefixed", "vector");

    let reference = in_process(
        Graph::Onnx(export.join("model.onnx")),
        &export,
        Pooling::Cls,
        256,
    );
    let texts: Vec<String> = ROWS.iter().map(|(_, t)| format!("passage: {t}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want: Vec<(String, Vec<f32>)> = ROWS
        .iter()
        .map(|(id, _)| id.to_string())
        .zip(embed(&reference, &refs))
        .collect();
    assert_same_vectors(&got, &want);
    let unprefixed = by_id(&reference);
    let differs = got
        .iter()
        .any(|(id, v)| cosine(v, &unprefixed[id]) < 0.9999);
    assert!(differs, "the stored vectors are the unprefixed ones");
}

// ---- helpers ----

/// What every test starts from, made once: MiniLM on disk and converted, ONNX Runtime found.
struct Fixture {
    /// MiniLM's checkpoint folder (`config.json`, `model.safetensors`, `tokenizer.json`).
    minilm: PathBuf,
    /// MiniLM converted to ONNX: the graph every served or written model is.
    onnx: Arc<[u8]>,
    tokenizer: Vec<u8>,
    /// The library every child loads (`ORT_DYLIB_PATH`), so none fetches its own.
    ort: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        common::ensure_model();
        let found = files::locate(&Wanted {
            spec: CATALOGUE[0].spec,
            variant: Variant::Fp32,
            path: None,
        })
        .expect("MiniLM, fetched by ensure_model");
        let minilm = found.dir;
        for name in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(
                minilm.join(name).is_file(),
                "these tests need MiniLM's safetensors checkpoint; {} ({}) has no {name}",
                minilm.display(),
                found.origin
            );
        }
        // The library this process loads too: the pinned copy in the default data dir, unless
        // ORT_DYLIB_PATH names another.
        let (ort, _) = runtime::locate().expect("ONNX Runtime, fetched by ensure_model");
        Fixture {
            onnx: export::bert_onnx(&minilm)
                .expect("converting MiniLM")
                .into(),
            tokenizer: std::fs::read(minilm.join("tokenizer.json")).unwrap(),
            ort,
            minilm,
        }
    })
}

/// The catalogue's BGE entry (its pinned revision, pooling, limits).
fn bge() -> &'static CatalogueModel {
    CATALOGUE
        .iter()
        .find(|m| m.hub.repo == BGE_REPO)
        .expect("BGE is in the catalogue")
}

/// A child's world: a folder for the pipeline, data and sink, and caches of its own.
struct Sandbox {
    dir: tempfile::TempDir,
    hf_cache: tempfile::TempDir,
    data_dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            hf_cache: tempfile::tempdir().unwrap(),
            data_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn db(&self) -> PathBuf {
        self.path().join("db")
    }

    /// Where a Hub download of `repo` at `revision` lands in this sandbox's HF cache.
    fn snapshot(&self, repo: &str, revision: &str) -> PathBuf {
        self.hf_cache
            .path()
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots")
            .join(revision)
    }

    /// [`ROWS`] as `rows.csv`.
    fn write_rows(&self) {
        let mut csv = String::from("id,text\n");
        for (id, text) in ROWS {
            assert!(!text.contains(','), "plain CSV: {text}");
            csv.push_str(&format!("{id},{text}\n"));
        }
        std::fs::write(self.path().join("rows.csv"), csv).unwrap();
    }

    /// `<table>.toml`: `rows.csv` through one local model (`model`: the rest of its
    /// [[model]] table) into `table` of `db/`.
    fn pipeline(&self, table: &str, model: &str) -> String {
        let text = format!(
            r#"
[source]
type = "csv"
path = "rows.csv"
id_column = "id"

[[model]]
name = "m"
provider = "local"
{model}

[[embed]]
model = "m"
column = "text"

[sink]
uri = "db"
table = "{table}"
mode = "overwrite"
"#
        );
        write_pipeline(self.path(), &format!("{table}.toml"), &text)
    }

    /// Runs the CLI here with this sandbox's caches, the test's ONNX Runtime, the Hub at `hub`,
    /// and `extra` on top. Variables that would point it at the machine's own model files are
    /// removed.
    fn run(&self, hub: &str, extra: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedpipe"));
        cmd.args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("EMBEDPIPE_DB")
            .env_remove(files::ENV_MINILM_DIR)
            .env_remove("EMBEDPIPE_OFFLINE")
            .env_remove("HF_TOKEN")
            .env_remove("HUGGING_FACE_HUB_TOKEN")
            .env(runtime::ENV_DYLIB, &fixture().ort)
            .env("HF_HUB_CACHE", self.hf_cache.path())
            .env(files::ENV_DATA_DIR, self.data_dir.path())
            .env("HF_ENDPOINT", hub)
            // The Hub stand-in is on loopback: never through a proxy.
            .env("NO_PROXY", "127.0.0.1,localhost");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        common::output(cmd)
    }

    /// Writes `<table>.toml` (see [`Sandbox::pipeline`]) and runs it with the Hub a closed
    /// port, `extra` on top.
    fn run_pipeline(&self, table: &str, model: &str, extra: &[(&str, &str)]) -> Output {
        let p = self.pipeline(table, model);
        self.run(&closed_endpoint(), extra, &["run", &p, "--json"])
    }
}

/// The rest of a custom model's [[model]] table: the export in `path`, its `dimensions`.
fn custom(path: &Path, dimensions: usize) -> String {
    let path = path.to_str().unwrap();
    format!("id = \"custom\"\npath = {path:?}\ndimensions = {dimensions}")
}

/// An endpoint nothing listens on (a port that was just free).
fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `graph` with the tokenizer in `dir`, in this process: pooled as told, normalised, no
/// prefix, 384 dimensions. The reference the children's vectors are compared with.
fn in_process(graph: Graph, dir: &Path, pooling: Pooling, max_tokens: usize) -> OnnxModel {
    let found = ModelFiles {
        graph,
        dir: dir.to_path_buf(),
        origin: "test reference".into(),
    };
    let settings = EngineSettings {
        pooling,
        normalize: true,
        max_tokens,
        prefix: String::new(),
        batch_size: 32,
        threads: 1,
        dimension: DIM,
        // ORT_DYLIB_PATH is not set here: the runtime ensure_model put in the default data dir.
        download_runtime: false,
    };
    OnnxModel::load(&found, settings, "reference").expect("loading the reference model")
}

fn embed(model: &OnnxModel, texts: &[&str]) -> Vec<Vec<f32>> {
    let out = model.embed(texts).unwrap();
    out.vectors.chunks(DIM).map(<[f32]>::to_vec).collect()
}

/// The reference vectors of [`ROWS`], by id.
fn by_id(model: &OnnxModel) -> HashMap<String, Vec<f32>> {
    let texts: Vec<&str> = ROWS.iter().map(|(_, t)| *t).collect();
    let ids = ROWS.iter().map(|(id, _)| id.to_string());
    ids.zip(embed(model, &texts)).collect()
}

/// Same ids, and each vector the same direction (up to float noise across thread counts and
/// batch paddings).
fn assert_same_vectors(got: &[(String, Vec<f32>)], want: &[(String, Vec<f32>)]) {
    let mut want = want.to_vec();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let got_ids: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
    let want_ids: Vec<&str> = want.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(got_ids, want_ids);
    for ((id, g), (_, w)) in got.iter().zip(&want) {
        let c = cosine(g, w);
        assert!(c >= 0.99999, "{id}: cosine {c}");
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
