//! Sharded runs (run with `cargo bench --bench sharded`, release profile):
//!
//! 1. scaling: the aggregate inputs/s of 4 shard processes of the real CLI, run at once, divided
//!    by 4 × the rate of one shard alone; each shard with the same calls in flight C against
//!    the Bedrock emulator at latency L (Titan v2, one input per call; default C = 8, L = 50 ms,
//!    `EMBEDPIPE_BENCH_CONCURRENCY`, `EMBEDPIPE_BENCH_LATENCY_MS`), 1,600 rows per shard
//!    (`EMBEDPIPE_BENCH_ROWS_PER_SHARD`). Process start and set-up count in both.
//! 2. commit: the time `embedpipe commit` takes to make 1,000 staged fragments (1,000 shards of
//!    one fragment each, `EMBEDPIPE_BENCH_FRAGMENTS`) one table version — reading the reports
//!    and the Lance commit — and the whole command with the table's maintenance after it.
//!
//! `EMBEDPIPE_BENCH=scaling|commit` runs one of them.

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use embedpipe::commands::run::shard::{pipeline_hash, RunManifest, ShardReport, Staged, MANIFEST};
use embedpipe::sink::runstage::RunStage;
use embedpipe::sink::staged::StagedWriter;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A Parquet file of `rows` short titles (ids `r<n>`), in row groups of 400.
fn write_titles(path: &Path, rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
    ]));
    let file = std::fs::File::create(path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(400))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    for start in (0..rows).step_by(400) {
        let end = (start + 400).min(rows);
        let ids: Vec<String> = (start..end).map(|i| format!("r{i}")).collect();
        let titles: Vec<String> = (start..end)
            .map(|i| format!("Headline number {i} about sharded embedding runs"))
            .collect();
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(titles)),
            ],
        )
        .unwrap();
        w.write(&b).unwrap();
    }
    w.close().unwrap();
}

fn cli(dir: &Path, endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedpipe"));
    cmd.args(args)
        .current_dir(dir)
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", endpoint)
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLEBENCH")
        .env("AWS_SECRET_ACCESS_KEY", "bench-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
        .env_remove("AWS_PROFILE")
        .env_remove("EMBEDPIPE_DB")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Runs the given shards of run `run` at once; wall seconds from the first start to the last
/// exit.
fn run_shards(dir: &Path, endpoint: &str, run: &str, shards: &[u32], of: u32) -> f64 {
    let t = Instant::now();
    let children: Vec<_> = shards
        .iter()
        .map(|i| {
            let shard = format!("{i}/{of}");
            cli(
                dir,
                endpoint,
                &["run", "p.toml", "-q", "--shard", &shard, "--run", run],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    t.elapsed().as_secs_f64()
}

fn bench_scaling() {
    let concurrency: usize = env_or("EMBEDPIPE_BENCH_CONCURRENCY", 8);
    let latency: f64 = env_or("EMBEDPIPE_BENCH_LATENCY_MS", 50.0);
    let per_shard: usize = env_or("EMBEDPIPE_BENCH_ROWS_PER_SHARD", 1600);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = rt
        .block_on(embedpipe_emulator::Emulator::start(
            ([127, 0, 0, 1], 0).into(),
            embedpipe_emulator::Settings {
                latency: embedpipe_emulator::Latency::Fixed { ms: latency },
                ..Default::default()
            },
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 4 shards of `per_shard` rows each (row groups of 400 split evenly).
    write_titles(&dir.path().join("titles.parquet"), 4 * per_shard);
    std::fs::write(
        dir.path().join("p.toml"),
        format!(
            r#"
[source]
type = "parquet"
path = "titles.parquet"
id_column = "id"

[[model]]
name = "m"
provider = "bedrock"
id = "amazon.titan-embed-text-v2:0"
dimensions = 256
concurrency = {concurrency}

[[embed]]
model = "m"
column = "title"

[sink]
uri = "db"
table = "t"
mode = "overwrite"
"#
        ),
    )
    .unwrap();
    let endpoint = emu.endpoint();
    // Warm the page cache and the binary once.
    run_shards(dir.path(), &endpoint, "warm", &[0], 4);
    let one = run_shards(dir.path(), &endpoint, "one", &[0], 4);
    let four = run_shards(dir.path(), &endpoint, "four", &[0, 1, 2, 3], 4);
    let one_rate = per_shard as f64 / one;
    let four_rate = (4 * per_shard) as f64 / four;
    let bound = concurrency as f64 / (latency / 1000.0);
    println!(
        "scaling (Titan v2 at L = {latency} ms, C = {concurrency} per shard, {per_shard} rows per shard): one shard {one_rate:.0} inputs/s ({:.2} of C/L), 4 shards at once {four_rate:.0} inputs/s; ratio to 4 x one shard {:.3}",
        one_rate / bound,
        four_rate / (4.0 * one_rate)
    );
}

fn bench_commit() {
    let fragments: u32 = env_or("EMBEDPIPE_BENCH_FRAGMENTS", 1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        r#"
[source]
type = "parquet"
path = "none.parquet"
id_column = "id"

[[model]]
name = "m"
provider = "bedrock"
id = "amazon.titan-embed-text-v2:0"
dimensions = 256

[[embed]]
model = "m"
column = "title"

[sink]
uri = "db"
table = "t"
mode = "create"
"#,
    )
    .unwrap();
    let pipeline = embedpipe::resolve::load(&path).unwrap();
    let settings = embedpipe::resolve::Settings::resolve(&pipeline, &Default::default()).unwrap();
    let target = settings.sink.target.clone();
    // The table's layout as a run makes it: id, title, the vector and its model and hash.
    let layout = embedpipe::sink::OutputLayout::new(
        &pipeline.steps,
        &Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("title", DataType::Utf8, true),
        ]),
        vec!["title".into()],
        &settings.models,
    )
    .unwrap();
    let schema = layout.schema.clone();
    let t = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let stage = RunStage::new(&target, "bench", None);
    rt.block_on(async {
        stage
            .put_new(
                MANIFEST,
                &RunManifest {
                    run_id: "bench".into(),
                    shards: fragments,
                    pipeline_hash: pipeline_hash(&pipeline),
                    pipeline: path.display().to_string(),
                    table: "t".into(),
                    mode: "create".into(),
                    schema: schema.as_ref().clone(),
                    created_at_micros: 0,
                    base_version: None,
                },
            )
            .await
            .unwrap();
        for shard in 0..fragments {
            let ids: Vec<String> = (0..10).map(|i| format!("s{shard}-{i}")).collect();
            let ids = StringArray::from(ids);
            let batch = layout
                .assemble(
                    &RecordBatch::try_new(
                        Arc::new(Schema::new(vec![
                            Field::new("id", DataType::Utf8, false),
                            Field::new("title", DataType::Utf8, true),
                        ])),
                        vec![Arc::new(ids.clone()), Arc::new(ids.clone())],
                    )
                    .unwrap(),
                    &ids,
                    &(0..10).collect::<Vec<u32>>(),
                    vec![vec![0.5f32; 10 * 256]],
                    vec![vec!["h".to_string(); 10]],
                    None,
                    0,
                )
                .unwrap();
            let mut w = StagedWriter::start(
                &target,
                embedpipe::config::WriteMode::Create,
                schema.clone(),
            );
            w.send(batch).await.unwrap();
            let staged = w.finish(&schema).await.unwrap();
            let report = ShardReport {
                run_id: "bench".into(),
                shard,
                shards: fragments,
                status: "ok".into(),
                error: None,
                started_at_micros: now,
                ended_at_micros: now,
                rows_read: 10,
                rows_written: 10,
                rows_skipped: 0,
                rows_failed: 0,
                table_rows: 10,
                calls: 10,
                input_tokens: 0,
                images: 0,
                media_seconds: 0.0,
                cost_usd: 0.0,
                failures_by_kind: Default::default(),
                staged: Some(Staged::Fragments(staged)),
                batch_jobs: Vec::new(),
            };
            stage
                .put(&RunStage::report_name(shard), &report)
                .await
                .unwrap();
        }
    });
    let staging = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let outcome = rt
        .block_on(embedpipe::commands::commit::commit(
            &pipeline,
            "bench",
            &Default::default(),
            false,
        ))
        .unwrap();
    let whole = t.elapsed().as_secs_f64();
    assert_eq!(outcome.table_rows, 10 * fragments as u64);
    println!(
        "commit of {fragments} staged fragments ({} rows): {:.2}s to read the reports and commit one version, {whole:.2}s with maintenance (staging them took {staging:.1}s)",
        outcome.table_rows, outcome.commit_secs
    );
}

fn main() {
    let which = std::env::var("EMBEDPIPE_BENCH").unwrap_or_default();
    if which.is_empty() || which == "scaling" {
        bench_scaling();
    }
    if which.is_empty() || which == "commit" {
        bench_commit();
    }
}
