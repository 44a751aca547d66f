//! Benchmarks (a bench binary; run with `cargo bench --bench pipeline`, release profile):
//!
//! 1. local model: sentences/s at batch 32 (all-MiniLM-L6-v2 on the sample articles);
//! 2. Parquet → LanceDB: rows/s of the source → inputs → rows → sink path with the model call
//!    replaced by ready-made vectors, and the peak RSS while doing it.
//!
//! `EMBEDPIPE_BENCH_ROWS` sets the rows of the generated Parquet file (default 500000).

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use embedpipe::config::Pipeline;
use embedpipe::plan;
use embedpipe::providers::local::LocalModel;
use embedpipe::sink::lancedb::{self as lance_sink, Writer};
use embedpipe::sources;
use std::sync::Arc;
use std::time::Instant;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn bench_model() {
    if embedpipe::models::local_minilm::locate(None).is_err() {
        embedpipe::models::local_minilm::fetch().expect("fetch model");
    }
    let model = LocalModel::load(None, false, true).unwrap();
    let csv = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sample_data/articles.csv"
    ))
    .unwrap();
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let bodies: Vec<String> = rdr.records().map(|r| r.unwrap()[2].to_string()).collect();
    let texts: Vec<&str> = bodies
        .iter()
        .map(String::as_str)
        .cycle()
        .take(512)
        .collect();
    let _ = model.embed_blocking(&texts[..32]).unwrap(); // warm-up
    let t = Instant::now();
    let mut tokens = 0;
    for chunk in texts.chunks(32) {
        tokens += model.embed_blocking(chunk).unwrap().tokens;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "local model (all-MiniLM-L6-v2, batch 32, {} sentences, {:.0} tokens/sentence): {:.1} sentences/s",
        texts.len(),
        tokens as f64 / texts.len() as f64,
        texts.len() as f64 / secs
    );
}

fn write_parquet(path: &std::path::Path, rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None).unwrap();
    let chunk = 50_000;
    for start in (0..rows).step_by(chunk) {
        let end = (start + chunk).min(rows);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (start..end).map(|i| format!("row-{i}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    (start..end).map(|i| format!("Article number {i} about topic {}", i % 17)),
                )),
                Arc::new(StringArray::from_iter_values(
                    (start..end).map(|i| format!("topic-{}", i % 17)),
                )),
                Arc::new(Int64Array::from_iter_values((start..end).map(|i| i as i64))),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
    }
    w.close().unwrap();
}

async fn bench_sink(rows: usize) {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&tmp.path().join("data.parquet"), rows);
    let text = r#"
[source]
type = "parquet"
path = "data.parquet"
batch_size = 8192
[[model]]
name = "minilm"
provider = "local"
id = "sentence-transformers/all-MiniLM-L6-v2"
[[embed]]
model = "minilm"
text = "{title} ({topic})"
[sink]
uri = "db"
table = "bench"
mode = "overwrite"
"#;
    let pipeline = Pipeline::parse(&tmp.path().join("p.toml"), text).unwrap();
    let checked = embedpipe::validate::check(&pipeline).await.unwrap();
    let dim = checked.models[0].dimension;
    let fingerprint = checked.models[0].fingerprint.clone();
    let step = pipeline.steps[0].clone();
    let conn = lance_sink::connect(&checked.target).await.unwrap();
    let t = Instant::now();
    let writer = Writer::start(
        conn,
        &checked.target,
        pipeline.write_mode(),
        checked.layout.schema.clone(),
        false,
    )
    .await
    .unwrap();
    let iter = sources::open(
        &pipeline,
        &checked.source,
        &checked.read_columns,
        checked.id_column.clone(),
    )
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = tokio::task::spawn_blocking(move || {
        for b in iter {
            if tx.blocking_send(b.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut written = 0;
    // Stand-in for model output: a fixed unit vector per row.
    let unit: Vec<f32> = (0..dim).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    while let Some(sb) = rx.recv().await {
        let prepared = plan::prepare(&step.input, &fingerprint, &sb.batch).unwrap();
        let keep: Vec<u32> = prepared.rows.iter().map(|&r| r as u32).collect();
        let mut vectors = Vec::with_capacity(keep.len() * dim);
        for _ in 0..keep.len() {
            vectors.extend_from_slice(&unit);
        }
        let out = checked
            .layout
            .assemble(
                &sb.batch,
                &sb.ids,
                &keep,
                vec![vectors],
                vec![prepared.hashes],
                0,
            )
            .unwrap();
        written += out.num_rows();
        writer.send(out).await.unwrap();
    }
    reader.await.unwrap();
    writer.finish().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "parquet -> lancedb ({rows} rows, {dim}-d vectors, embedding excluded): {:.0} rows/s, {:.2}s, peak RSS {:.0} MB",
        written as f64 / secs,
        secs,
        peak_rss_mb()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let rows: usize = std::env::var("EMBEDPIPE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let only = std::env::var("EMBEDPIPE_BENCH").unwrap_or_default();
    if only.is_empty() || only == "sink" {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(bench_sink(rows));
    }
    if only.is_empty() || only == "model" {
        bench_model();
    }
}
