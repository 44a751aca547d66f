//! Benchmarks (a bench binary; run with `cargo bench --bench pipeline`, release profile):
//!
//! 1. local model: sentences/s at batch 32 (all-MiniLM-L6-v2 on the sample articles);
//! 2. Parquet → LanceDB: rows/s of a real run (`embedpipe::commands::run::run`: source, dispatch,
//!    ordering, dead letters, sink, run log) with the model's cost taken out (Cohere v3 on an
//!    emulator process replaying its answers, so vectors come ready-made), and the peak RSS of
//!    the run alone (the input is written first, then the high-water mark is reset);
//!
//! 3. Bedrock emulator: InvokeModel requests/s at zero latency with 1024-d responses, through the
//!    real AWS SDK client (signing and all) with 64 calls in flight;
//! 4. transformers: request-build + response-parse time per model family;
//! 5. dispatch at quota speed: achieved requests/s against the emulator with latency L, calls in
//!    flight C and a requests/minute limit R, divided by min(R, C/L), over 10,000 requests, for
//!    Titan v2 (1 input per call) and Cohere v3 (96 per call), through the dispatch layer; the
//!    cases bound by C also run against the emulator replaying its answers (see 6), which takes
//!    the service's CPU off the client's cores;
//! 6. end to end at zero latency: Parquet → Cohere v3 (1024-d) on the emulator → LanceDB, rows/s
//!    the process's peak RSS, and the CPU time per row of embedpipe and of the emulator (which runs
//!    as a process of its own, as the service is remote; run it alone: `EMBEDPIPE_BENCH=e2e`);
//!    then the same with the emulator replaying its answers (`embedpipe emulator --replay`: each
//!    request shape answered once, then repeated), so the two cores are left to embedpipe; that
//!    one twice, the second straight after the first (CPU is shown as user and system time: on a
//!    VM whose freed memory goes back to the host, first touches of memory after a pause cost
//!    system time, and the 4 GB of vectors written into the page cache are mostly such touches).
//!
//! 7. S3: Parquet on a local S3 server (s3s-fs, in this process) → LanceDB on the same server,
//!    rows/s as a ratio of the same run with local files (model cost taken out as in 2), then the
//!    peak RSS of a 1M-row S3 run (`EMBEDPIPE_BENCH_S3_ROWS`, `EMBEDPIPE_BENCH_S3_RSS_ROWS`); and
//!    500 images listed and read by the images source from S3 vs a local folder, files/s.
//!
//! 8. batch inference (`EMBEDPIPE_BENCH=batch`, only when asked for): peak RSS of runs of 20,000
//!    and 100,000 rows (`EMBEDPIPE_BENCH_BATCH_ROWS`) through jobs of 10,000 records at 1024-d.
//!
//! `EMBEDPIPE_BENCH_REQUESTS` changes the 10,000 requests of the dispatch bench,
//! `EMBEDPIPE_BENCH_LATENCY_MS` its emulator latency (default 50) and
//! `EMBEDPIPE_BENCH_MODEL=titan|cohere` runs one model's cases, `EMBEDPIPE_BENCH_CONCURRENCY`
//! sets the cap on calls in flight of the unlimited cases (default 64 for Titan, 8 for Cohere);
//! `EMBEDPIPE_BENCH_ROWS` sets the rows of the generated Parquet file (default 500000; `e2e`
//! default 1000000); `EMBEDPIPE_BENCH=sink|model|emulator|transform|dispatch|s3|e2e` runs one
//! of them (`e2e` and `batch` run only when asked for).

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use embedpipe::config::Pipeline;
use embedpipe::engines::catalogue::Variant;
use embedpipe::engines::local::LocalModel;
use std::sync::Arc;
use std::time::Instant;

/// A memory line of `/proc/self/status` (`VmHWM:`, `VmRSS:`), in MB.
fn status_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The process's peak RSS (high-water mark) since it started or since [`reset_peak_rss`].
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resets the peak RSS to the current RSS (writing 5 to `/proc/self/clear_refs`), so that what
/// follows is measured alone. Returns the RSS at that point (MB), and a note for the report when
/// the reset did not take (the peak then includes everything before).
fn reset_peak_rss() -> (f64, &'static str) {
    let note = match std::fs::write("/proc/self/clear_refs", "5") {
        Ok(()) => "",
        Err(_) => " (high-water mark not reset: includes making the input)",
    };
    (status_mb("VmRSS:"), note)
}

fn bench_model() {
    let model = LocalModel::catalogue("all-MiniLM-L6-v2", Variant::Fp32, None).unwrap();
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

/// A real run of `pipeline` with Bedrock calls sent to the emulator at `endpoint`.
async fn run_against(pipeline: Arc<Pipeline>, endpoint: String) -> embedpipe::report::Summary {
    use embedpipe::commands::run::{run, RunOptions};
    let opts = RunOptions {
        progress: false,
        overrides: emulator_overrides(endpoint),
        ..Default::default()
    };
    run(pipeline, opts).await.unwrap()
}

/// Bedrock at the emulator, S3 signed with the emulator's keys (which the local S3 server takes).
fn emulator_overrides(endpoint: String) -> embedpipe::resolve::Overrides {
    embedpipe::resolve::Overrides {
        endpoint_url: Some(endpoint),
        emulator_credentials: true,
        ..Default::default()
    }
}

/// The embed step of the generated articles.
const ARTICLE_TEXT: &str = "text = \"{title} ({topic})\"";

/// A pipeline reading `source` into table `bench` at `sink_uri`, S3 at `s3_endpoint`, with Cohere
/// v4 at 256 dimensions (96 texts a call: the model's side stays small).
fn storage_pipeline(
    dir: &std::path::Path,
    source: &str,
    embed: &str,
    sink_uri: &str,
    s3_endpoint: &str,
) -> Arc<Pipeline> {
    let text = format!(
        r#"
[storage]
s3_endpoint_url = "{s3_endpoint}"
[source]
{source}
[[model]]
name = "m"
provider = "bedrock"
id = "cohere.embed-v4:0"
dimensions = 256
concurrency = 8
[[embed]]
model = "m"
{embed}
[sink]
uri = "{sink_uri}"
table = "bench"
mode = "overwrite"
vector_index = "none"
"#
    );
    Arc::new(embedpipe::resolve::parse(&dir.join("p.toml"), &text).unwrap())
}

/// A client of the local S3 server (signed with the emulator's keys, which it takes).
async fn local_s3_client(
    s3: &embedpipe_emulator::s3::LocalS3,
) -> embedpipe::clients::store::Stores {
    let settings = embedpipe::resolve::StorageSettings {
        region: None,
        endpoint: Some(s3.endpoint()),
        emulator_credentials: true,
    };
    embedpipe::clients::store::Stores::connect(&settings)
        .await
        .unwrap()
}

/// Puts a local file through the S3 API (so the server records its ETag once, as S3 does,
/// instead of hashing a file dropped into its folder on every read).
async fn upload(stores: &embedpipe::clients::store::Stores, uri: &str, from: &std::path::Path) {
    let uri = embedpipe::util::S3Uri::parse(uri).unwrap();
    stores
        .put(&uri, std::fs::read(from).unwrap())
        .await
        .unwrap();
}

/// Parquet on the local S3 server → LanceDB on the same server, against the same run with local
/// files, side by side (local, S3, local, S3), the model's cost taken out (emulator replaying
/// answers); then the peak RSS of an S3 run of `rss_rows`.
async fn bench_s3(rows: usize, rss_rows: usize) {
    use embedpipe_emulator::s3::LocalS3;
    let (endpoint, mut emulator) = emulator_process(&["--replay"]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s3");
    let s3 = LocalS3::start(([127, 0, 0, 1], 0).into(), &root, &["data", "lake"], &[])
        .await
        .unwrap();
    write_parquet(&tmp.path().join("data.parquet"), rows);
    let stores = local_s3_client(&s3).await;
    upload(
        &stores,
        "s3://data/data.parquet",
        &tmp.path().join("data.parquet"),
    )
    .await;
    let local = storage_pipeline(
        tmp.path(),
        "type = \"parquet\"\npath = \"data.parquet\"",
        ARTICLE_TEXT,
        "db",
        &s3.endpoint(),
    );
    let remote = storage_pipeline(
        tmp.path(),
        "type = \"parquet\"\npath = \"s3://data/data.parquet\"",
        ARTICLE_TEXT,
        "s3://lake/db",
        &s3.endpoint(),
    );
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        for (i, p) in [&local, &remote].into_iter().enumerate() {
            let t = Instant::now();
            let summary = run_against(p.clone(), endpoint.clone()).await;
            assert_eq!(summary.rows_written as usize, rows, "{summary:?}");
            rates[i].push(rows as f64 / t.elapsed().as_secs_f64());
        }
    }
    let best = |v: &Vec<f64>| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "parquet -> lancedb, {rows} rows, 256-d (Cohere v4 on an emulator process replaying answers): local files {:.0} rows/s, local S3 server {:.0} rows/s (runs: local {:?}, S3 {:?}); S3/local = {:.2}",
        best(&rates[0]),
        best(&rates[1]),
        rates[0].iter().map(|r| r.round()).collect::<Vec<_>>(),
        rates[1].iter().map(|r| r.round()).collect::<Vec<_>>(),
        best(&rates[1]) / best(&rates[0]),
    );
    if rss_rows > 0 {
        write_parquet(&tmp.path().join("big.parquet"), rss_rows);
        upload(
            &stores,
            "s3://data/big.parquet",
            &tmp.path().join("big.parquet"),
        )
        .await;
        std::fs::remove_file(tmp.path().join("big.parquet")).unwrap();
        let big = storage_pipeline(
            tmp.path(),
            "type = \"parquet\"\npath = \"s3://data/big.parquet\"",
            ARTICLE_TEXT,
            "s3://lake/big",
            &s3.endpoint(),
        );
        let (rss_before, reset_note) = reset_peak_rss();
        let t = Instant::now();
        let summary = run_against(big, endpoint.clone()).await;
        assert_eq!(summary.rows_written as usize, rss_rows, "{summary:?}");
        println!(
            "parquet on S3 -> lancedb on S3, {rss_rows} rows: {:.0} rows/s, peak RSS {:.0} MB, this process with the S3 server in it (RSS {:.0} MB at the start of the run){reset_note}",
            rss_rows as f64 / t.elapsed().as_secs_f64(),
            peak_rss_mb(),
            rss_before,
        );
    }
    let _ = emulator.kill();
    let _ = emulator.wait();
}

/// Batch inference: the peak RSS of runs of growing size through jobs of 10,000 records (Titan
/// v2, 1024-d: each job's results are 40 MB of vectors, several times that as JSON), the
/// emulator a process of its own reading and writing the jobs' files on the local S3 server in
/// this process (which streams them to disk). Memory must depend on the job size, not the rows.
async fn bench_batch(sizes: &[usize]) {
    use embedpipe_emulator::s3::LocalS3;
    let tmp = tempfile::tempdir().unwrap();
    let s3 = LocalS3::start(
        ([127, 0, 0, 1], 0).into(),
        &tmp.path().join("s3"),
        &["batch"],
        &[],
    )
    .await
    .unwrap();
    /// The emulator goes with the bench, even when a run fails.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (endpoint, emulator) = emulator_process(&["--s3-endpoint", &s3.endpoint()]);
    let _emulator = Stop(emulator);
    for &rows in sizes {
        let source = tmp.path().join(format!("in{rows}.parquet"));
        write_parquet(&source, rows);
        let text = format!(
            r#"
[source]
type = "parquet"
path = {source:?}
[[model]]
name = "m"
provider = "bedrock"
id = "amazon.titan-embed-text-v2:0"
dimensions = 1024
invoke = "batch"
role_arn = "arn:aws:iam::123456789012:role/embedpipe-batch"
batch_s3_uri = "s3://batch/b{rows}"
s3_endpoint_url = "{s3}"
records_per_job = 10000
max_jobs = 100
poll_secs = 0.2
[[embed]]
model = "m"
{ARTICLE_TEXT}
[sink]
uri = "db"
table = "b{rows}"
mode = "overwrite"
vector_index = "none"
"#,
            s3 = s3.endpoint()
        );
        let p = Arc::new(embedpipe::resolve::parse(&tmp.path().join("p.toml"), &text).unwrap());
        let (rss_before, reset_note) = reset_peak_rss();
        let t = Instant::now();
        let summary = run_against(p, endpoint.clone()).await;
        assert_eq!(summary.rows_written as usize, rows, "{summary:?}");
        let b = &summary.batch[0];
        assert_eq!(b.results_used as usize, rows, "{b:?}");
        println!(
            "batch inference, {rows} rows in {} jobs of 10,000 records (Titan v2, 1024-d): peak RSS {:.0} MB (RSS {:.0} MB at the start of the run){reset_note}, {:.1} s",
            b.jobs_submitted,
            peak_rss_mb(),
            rss_before,
            t.elapsed().as_secs_f64()
        );
        std::fs::remove_file(&source).unwrap();
    }
}

/// Lists and reads every image of `path` with the images source: (images, seconds).
async fn read_images(dir: &std::path::Path, s3_endpoint: &str, path: &str) -> (usize, f64) {
    use embedpipe::clients::store::Stores;
    let p = storage_pipeline(
        dir,
        &format!("type = \"images\"\npath = {path:?}"),
        "text = \"{path}\"",
        "db",
        s3_endpoint,
    );
    let settings =
        embedpipe::resolve::Settings::resolve(&p, &emulator_overrides(String::new())).unwrap();
    let stores = if settings.uses_s3() {
        Some(Stores::connect(&settings.storage).await.unwrap())
    } else {
        None
    };
    let t = Instant::now();
    let survey = embedpipe::sources::survey(&settings.source, stores.as_ref())
        .await
        .unwrap();
    let columns = survey.column_names();
    let iter = embedpipe::sources::open(&settings.source, &survey, &columns, None, stores.as_ref())
        .unwrap();
    let n = tokio::task::spawn_blocking(move || {
        iter.map(|b| b.unwrap().batch.num_rows()).sum::<usize>()
    })
    .await
    .unwrap();
    (n, t.elapsed().as_secs_f64())
}

/// 500 images listed and read by the images source, from a local folder and from the local S3
/// server (the source alone: no model), side by side.
async fn bench_images_s3(files: usize) {
    use embedpipe_emulator::s3::LocalS3;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s3");
    let s3 = LocalS3::start(([127, 0, 0, 1], 0).into(), &root, &["pics"], &[])
        .await
        .unwrap();
    let samples: Vec<std::path::PathBuf> = ["landscapes", "scenes"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("sample_data/images")
                    .join(d),
            )
            .unwrap()
        })
        .map(|e| e.unwrap().path())
        .collect();
    let local_dir = tmp.path().join("pics");
    for i in 0..files {
        let from = &samples[i % samples.len()];
        let name = format!(
            "{}/{i:04}.{}",
            i % 10,
            from.extension().unwrap().to_string_lossy()
        );
        for dir in [&local_dir, &root.join("pics")] {
            std::fs::create_dir_all(dir.join(format!("{}", i % 10))).unwrap();
            std::fs::copy(from, dir.join(&name)).unwrap();
        }
    }
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..3 {
        for (i, path) in [
            local_dir.to_string_lossy().to_string(),
            "s3://pics/".to_string(),
        ]
        .into_iter()
        .enumerate()
        {
            let (n, secs) = read_images(tmp.path(), &s3.endpoint(), &path).await;
            assert_eq!(n, files);
            rates[i].push(files as f64 / secs);
        }
    }
    let best = |v: &Vec<f64>| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "images source, {files} files listed and read: local folder {:.0} files/s, local S3 server {:.0} files/s (S3/local = {:.2})",
        best(&rates[0]),
        best(&rates[1]),
        best(&rates[1]) / best(&rates[0]),
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
    // The model's side costs next to nothing: an emulator process of its own (its memory and
    // CPU are not this process's) answering each request shape once, then repeating it.
    let (endpoint, mut emulator) = emulator_process(&["--replay"]);
    // The input, made before the measured part.
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&tmp.path().join("data.parquet"), rows);
    let pipeline = remote_pipeline(
        tmp.path(),
        "type = \"parquet\"\npath = \"data.parquet\"\nbatch_size = 8192",
        "provider = \"bedrock\"\nid = \"cohere.embed-english-v3\"\nconcurrency = 8",
        "text = \"{title} ({topic})\"",
        // Ingest only, as in the end-to-end case.
        "vector_index = \"none\"",
    );
    // Peak RSS of the run alone.
    let (rss_before, reset_note) = reset_peak_rss();
    let t = Instant::now();
    let summary = run_against(pipeline, endpoint).await;
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_rss_mb();
    let _ = emulator.kill();
    let _ = emulator.wait();
    assert_eq!(summary.rows_written as usize, rows, "{summary:?}");
    assert_eq!(summary.rows_failed, 0, "{summary:?}");
    println!(
        "parquet -> lancedb through a run ({rows} rows, 1024-d vectors, Cohere v3 on an emulator process replaying answers): {:.0} rows/s, {:.2}s, peak RSS {:.0} MB (RSS {:.0} MB at the start of the run){reset_note}",
        rows as f64 / secs,
        secs,
        peak,
        rss_before,
    );
}

async fn bench_emulator() {
    use embedpipe::clients::bedrock::{Bedrock, Connection};
    use embedpipe_emulator::{Emulator, Settings};
    use futures::StreamExt;
    let emu = Emulator::start(([127, 0, 0, 1], 0).into(), Settings::default())
        .await
        .unwrap();
    let client = Bedrock::connect(&Connection {
        endpoint_url: Some(emu.endpoint()),
        emulator_credentials: true,
        timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    })
    .await
    .unwrap();
    let body = br#"{"inputText":"the quick brown fox jumps over the lazy dog","dimensions":1024}"#;
    let total = 20_000;
    let run = |n: usize| {
        let client = client.clone();
        async move {
            futures::stream::iter(0..n)
                .map(|_| {
                    let c = client.clone();
                    async move {
                        c.invoke("amazon.titan-embed-text-v2:0", body.to_vec(), || {})
                            .await
                            .unwrap()
                            .len()
                    }
                })
                .buffer_unordered(64)
                .fold(0usize, |a, b| async move { a + b })
                .await
        }
    };
    run(2_000).await; // warm-up: connections
    let t = Instant::now();
    let bytes = run(total).await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "emulator (Titan v2, 1024-d, zero latency, SDK client, 64 in flight): {:.0} requests/s ({:.1} KB/response)",
        total as f64 / secs,
        bytes as f64 / total as f64 / 1024.0
    );
    assert_eq!(
        emu.stats().models["amazon.titan-embed-text-v2:0"].ok,
        (total + 2_000) as u64
    );
}

fn bench_transform() {
    use embedpipe_wire::{self as models, Image, ImageFormat, Input, Params};
    let text =
        "Volcanic eruptions reshape landscapes: lava flows, ash clouds and new islands. ".repeat(4);
    let png = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sample_data/images/landscapes/forest-2.png"
    ))
    .unwrap();
    let img = Image {
        bytes: &png,
        format: ImageFormat::Png,
    };
    let emu_dims = |id: &str, d: usize| (models::lookup(id).unwrap(), d);
    let cases: Vec<(&str, usize, Vec<Input>)> = vec![
        (
            "amazon.titan-embed-text-v2:0",
            1024,
            vec![Input::Text(&text)],
        ),
        ("amazon.titan-embed-image-v1", 1024, vec![Input::Image(img)]),
        (
            "cohere.embed-english-v3",
            1024,
            vec![Input::Text(&text); 96],
        ),
        ("cohere.embed-v4:0", 1536, vec![Input::Text(&text); 96]),
        (
            "amazon.nova-2-multimodal-embeddings-v1:0",
            3072,
            vec![Input::Text(&text)],
        ),
        (
            "twelvelabs.marengo-embed-3-0-v1:0",
            512,
            vec![Input::Text(&text)],
        ),
    ];
    for (id, dim, inputs) in cases {
        let (spec, dim) = emu_dims(id, dim);
        let params = Params::defaults(spec);
        let body =
            serde_json::to_vec(&models::build_request(spec, &params, &inputs).unwrap()).unwrap();
        // A response of the right shape from the emulator's own writer.
        let answer = |body: &[u8]| {
            use embedpipe_emulator::{catalog, wire};
            [format!("us.{id}"), id.to_string()]
                .iter()
                .filter_map(|i| catalog::resolve(i))
                .find_map(|called| wire::invoke(called, body, None).ok())
                .expect("the emulator answers")
                .body
        };
        let resp = answer(&body);
        let iters = 2_000 / inputs.len().max(1) + 20;
        // The median of single calls: this machine's timings jump when a neighbour runs.
        let median = |f: &mut dyn FnMut()| {
            let mut t: Vec<f64> = (0..iters)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        };
        let build = median(&mut || {
            let b = serde_json::to_vec(&models::build_request(spec, &params, &inputs).unwrap())
                .unwrap();
            std::hint::black_box(b);
        });
        let parse = median(&mut || {
            let p = models::parse_response(spec, &params, &resp, inputs.len()).unwrap();
            std::hint::black_box(p);
        });
        // The emulator's side of the call (validation, vectors, JSON): CPU that shares the
        // machine with the client in the dispatch and end-to-end benches.
        let emulate = median(&mut || {
            std::hint::black_box(answer(&body));
        });
        println!(
            "transform {id:<42} {} input(s), {dim}-d: build {:>8.1} us, parse {:>8.1} us, emulator answer {:>8.1} us per call (medians)",
            inputs.len(),
            build * 1e6,
            parse * 1e6,
            emulate * 1e6
        );
    }
}

/// A pipeline file around one remote `[[model]]` (`model`: its table from `provider` on; the
/// source is a tiny CSV, the dispatch bench feeds inputs itself).
fn remote_pipeline(
    dir: &std::path::Path,
    source: &str,
    model: &str,
    embed: &str,
    sink: &str,
) -> Arc<Pipeline> {
    std::fs::write(dir.join("rows.csv"), "id,text\na,alpha\n").unwrap();
    let text = format!(
        r#"
[source]
{source}
[[model]]
name = "m"
{model}
[[embed]]
model = "m"
{embed}
[sink]
uri = "db"
table = "bench"
mode = "overwrite"
{sink}
"#
    );
    Arc::new(embedpipe::resolve::parse(&dir.join("p.toml"), &text).unwrap())
}

async fn bench_dispatch_case(
    model_id: &str,
    openai: bool,
    concurrency: usize,
    latency_ms: f64,
    rpm: Option<u32>,
    replay: bool,
) {
    use embedpipe::dispatch::ModelHandle;
    use embedpipe::prepare::Inputs;
    use embedpipe::resolve::Overrides;
    use embedpipe_emulator::{Emulator, Latency, Settings};
    use futures::StreamExt;
    let requests: usize = std::env::var("EMBEDPIPE_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // The emulator gets a runtime of its own, as a remote service would, so its timers do not
    // queue behind the client's tasks; two threads, so that writing one 1 MB answer does not hold
    // up the arrival (and so the due time) of the next request.
    let (emu, emu_rt) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let settings = Settings {
            latency: Latency::Fixed { ms: latency_ms },
            replay,
            ..Default::default()
        };
        let emu = rt
            .block_on(Emulator::start(([127, 0, 0, 1], 0).into(), settings))
            .unwrap();
        (emu, rt)
    })
    .join()
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let limit = rpm.map_or(String::new(), |r| format!("requests_per_minute = {r}\n"));
    // The same dispatch through either protocol: Bedrock's InvokeModel or OpenAI's
    // /v1/embeddings (`--emulator` sends both to the emulator).
    let model = if openai {
        format!("provider = \"openai\"\nmodel = \"{model_id}\"\ndimensions = 256\nbase_url = \"http://127.0.0.1:1/v1\"")
    } else {
        format!("provider = \"bedrock\"\nid = \"{model_id}\"")
    };
    let pipeline = remote_pipeline(
        tmp.path(),
        "type = \"csv\"\npath = \"rows.csv\"",
        &format!("{model}\nconcurrency = {concurrency}\n{limit}"),
        "column = \"text\"",
        "",
    );
    let overrides = Overrides {
        endpoint_url: Some(emu.endpoint()),
        emulator_credentials: true,
        ..Default::default()
    };
    let p = pipeline.clone();
    let handle = tokio::task::spawn_blocking(move || {
        ModelHandle::load(
            embedpipe::resolve::ModelSettings::resolve(&p, 0, &overrides),
            None,
        )
    })
    .await
    .unwrap()
    .unwrap();
    let per_call = handle.info.batch_size;
    let rows_per_batch = 1024usize;
    let feed = |n_inputs: usize| {
        let handle = &handle;
        async move {
            let batches = n_inputs.div_ceil(rows_per_batch);
            // As `run` does: several source batches in flight, results in order.
            futures::stream::iter(0..batches)
                .map(|b| async move {
                    let start = b * rows_per_batch;
                    let end = (start + rows_per_batch).min(n_inputs);
                    let texts: Vec<String> = (start..end)
                        .map(|i| format!("row {i} about topic {}", i % 17))
                        .collect();
                    let out = handle.embed(&Inputs::Text(texts), &|_| {}).await.unwrap();
                    assert!(out.failed.is_empty());
                    out.vectors.len()
                })
                .buffered(((2 * concurrency * per_call).div_ceil(rows_per_batch) + 1).clamp(2, 16))
                .fold(0usize, |a, b| async move { a + b })
                .await
        }
    };
    // Warm-up: open the connections.
    feed(concurrency * per_call).await;
    emu.reset();
    let t = Instant::now();
    feed(requests * per_call).await;
    let secs = t.elapsed().as_secs_f64();
    let all = emu.stats();
    let (inputs, calls, errors) = if openai {
        let c = &all.openai;
        (c.inputs, c.requests, format!("{:?}", c.errors))
    } else {
        let c = &all.models[handle.info.spec.id];
        (c.inputs, c.requests, format!("{:?}", c.errors))
    };
    let emu_error_ms = all.timed_error_micros as f64 / all.timed_answers.max(1) as f64 / 1e3;
    drop(emu);
    emu_rt.shutdown_background();
    assert_eq!(inputs as usize, requests * per_call);
    assert_eq!(errors, "{}");
    // In full calls' worth of inputs (a call may leave part-filled when its linger ends).
    let achieved = inputs as f64 / per_call as f64 / secs;
    let by_concurrency = concurrency as f64 / (latency_ms / 1000.0);
    let ideal = rpm.map_or(by_concurrency, |r| by_concurrency.min(r as f64 / 60.0));
    let stats = handle.stats();
    // How busy dispatch kept its slots: calls/s against C ÷ the mean call latency the client saw
    // (which includes the machine's own overhead: loopback, wake-ups, the emulator's CPU).
    let mean_call = stats.latency_mean_ms / 1e3;
    let slot_use = calls as f64 / secs / (concurrency as f64 / mean_call);
    println!(
        "dispatch {}{model_id} ({per_call}/call){}, L = {latency_ms} ms, C = {concurrency}, R = {}: {} calls, {:.1} full calls/s ({:.0} inputs/s) vs ideal {:.1}: ratio {:.3}; p50 {:.1} ms, p95 {:.1} ms, mean {:.1} ms; slots busy {:.3}; emulator's answers off by {:+.2} ms on average",
        if openai { "openai:" } else { "" },
        if replay { ", emulator replaying" } else { "" },
        rpm.map_or("none".to_string(), |r| format!("{r}/min")),
        calls,
        achieved,
        achieved * per_call as f64,
        ideal,
        achieved / ideal,
        stats.latency_p50_ms,
        stats.latency_p95_ms,
        mean_call * 1e3,
        slot_use,
        emu_error_ms,
    );
}

async fn bench_dispatch() {
    let only = std::env::var("EMBEDPIPE_BENCH_MODEL").unwrap_or_default();
    let l: f64 = std::env::var("EMBEDPIPE_BENCH_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50.0);
    // Another cap on calls in flight for the unlimited cases (e.g. 1: the unloaded round trip).
    let c: Option<usize> = std::env::var("EMBEDPIPE_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok());
    // The concurrency-bound cases run twice: with the emulator working out every answer (its CPU
    // shares this machine's cores with the client's), then replaying them (a nearly free service,
    // as a remote one is to this machine), which leaves the client's own overhead.
    let cases = [
        (
            "titan",
            "amazon.titan-embed-text-v2:0",
            c.unwrap_or(64),
            64,
            30_000,
        ),
        (
            "cohere",
            "cohere.embed-english-v3",
            c.unwrap_or(8),
            8,
            6_000,
        ),
    ];
    for (name, id, c, c_quota, rpm) in cases {
        if only.is_empty() || only == name {
            bench_dispatch_case(id, false, c, l, None, false).await;
            bench_dispatch_case(id, false, c, l, None, true).await;
            bench_dispatch_case(id, false, c_quota, l, Some(rpm), false).await;
        }
    }
    // An OpenAI-compatible server (32 inputs per call): bound by concurrency, then by a quota.
    if only.is_empty() || only == "openai" {
        let id = "text-embedding-3-small";
        bench_dispatch_case(id, true, c.unwrap_or(8), l, None, false).await;
        bench_dispatch_case(id, true, 8, l, Some(6_000), false).await;
    }
}

/// CPU seconds (user, system) of a process, from `/proc/<pid>/stat`.
fn cpu_secs(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse::<f64>().ok())
        .map(|ticks| ticks / 100.0) // clock ticks (USER_HZ)
        .collect();
    (
        f.first().copied().unwrap_or(0.0),
        f.get(1).copied().unwrap_or(0.0),
    )
}

/// The emulator as a process of its own (as the service is remote): its address and handle.
fn emulator_process(extra: &[&str]) -> (String, std::process::Child) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_embedpipe"))
        .args(["emulator", "--port", "0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the emulator");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (endpoint, child)
}

/// `replay`: the emulator answers each request shape once and repeats that answer (a nearly
/// free service), so the machine's cores are left to embedpipe, as with a remote service. `note`
/// is added to the case's description.
async fn bench_e2e(rows: usize, replay: bool, note: &str) {
    let (endpoint, mut emulator) = emulator_process(if replay { &["--replay"] } else { &[] });
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&tmp.path().join("data.parquet"), rows);
    let pipeline = remote_pipeline(
        tmp.path(),
        "type = \"parquet\"\npath = \"data.parquet\"",
        "provider = \"bedrock\"\nid = \"cohere.embed-english-v3\"\nconcurrency = 8",
        "text = \"{title} ({topic})\"",
        // Ingest only: building the vector index a large table gets after a run is not counted.
        "vector_index = \"none\"",
    );
    // Peak RSS of this run alone: reset once the input is made (making 1M rows of Parquet
    // holds them all in the writer until it closes).
    let (rss_before, reset_note) = reset_peak_rss();
    let (emu_pid, (user_before, sys_before)) = (emulator.id().to_string(), cpu_secs("self"));
    let emu_before = cpu_secs(&emu_pid);
    let t = Instant::now();
    let summary = run_against(pipeline, endpoint).await;
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_rss_mb();
    let (user, sys) = cpu_secs("self");
    let (user, sys) = (user - user_before, sys - sys_before);
    let client_cpu = user + sys;
    let emu_cpu = {
        let (u, s) = cpu_secs(&emu_pid);
        u + s - emu_before.0 - emu_before.1
    };
    let _ = emulator.kill();
    let _ = emulator.wait();
    assert_eq!(summary.rows_written as usize, rows);
    let us = |secs: f64| secs / rows as f64 * 1e6;
    println!(
        "end to end parquet -> Cohere v3 (emulator process{}, zero latency, 96/call, C = 8) -> lancedb ({rows} rows, 1024-d{note}): {:.0} rows/s, {:.1}s, peak RSS {:.0} MB (RSS {:.0} MB at the start of the run){reset_note}; CPU per row: embedpipe {:.1} us (user {:.1}, system {:.1}; {:.0} rows/s per core), emulator {:.1} us",
        if replay { " replaying answers" } else { "" },
        rows as f64 / secs,
        secs,
        peak,
        rss_before,
        us(client_cpu),
        us(user),
        us(sys),
        rows as f64 / client_cpu,
        us(emu_cpu),
    );
}

fn main() {
    if let Ok(filter) = std::env::var("EMBEDPIPE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
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
    if only.is_empty() || only == "emulator" {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(bench_emulator());
    }
    if only.is_empty() || only == "transform" {
        bench_transform();
    }
    if only.is_empty() || only == "model" {
        bench_model();
    }
    if only.is_empty() || only == "dispatch" {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(bench_dispatch());
    }
    if only.is_empty() || only == "s3" {
        let rows = std::env::var("EMBEDPIPE_BENCH_S3_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        let rss_rows = std::env::var("EMBEDPIPE_BENCH_S3_RSS_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(bench_s3(rows, rss_rows));
        rt.block_on(bench_images_s3(500));
    }
    if only == "batch" {
        let sizes: Vec<usize> = std::env::var("EMBEDPIPE_BENCH_BATCH_ROWS")
            .unwrap_or_else(|_| "20000,100000".into())
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("EMBEDPIPE_BENCH_BATCH_ROWS: numbers")
            })
            .collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(bench_batch(&sizes));
    }
    if only == "e2e" {
        let rows = std::env::var("EMBEDPIPE_BENCH_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(bench_e2e(rows, false, ""));
        rt.block_on(bench_e2e(rows, true, ""));
        // Once more straight away: on a VM that hands freed memory back to its host (a balloon
        // with free page reporting, as on this project's machines), the first touch of a page
        // after a pause faults into the host, and the 4 GB this run writes into the page cache
        // are mostly first touches; a run that follows another reuses the pages it freed. The
        // difference shows in the system CPU per row.
        rt.block_on(bench_e2e(rows, true, ", again right after"));
    }
}
