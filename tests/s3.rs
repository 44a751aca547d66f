//! Data and tables in S3: the real CLI reading its sources from, and writing its table and every
//! side file (failures, run log, job ledger) to, a real S3 server (s3s-fs) on loopback, signed
//! with credentials from the environment (the AWS chain), Bedrock being the emulator.
//!
//! s3s-fs keeps each bucket as a folder, so the tests put source objects by writing files and
//! read the table written through S3 by opening that folder with LanceDB directly.

mod common;

use common::*;
use embedpipe_emulator::s3::{LocalS3, S3Faults};
use embedpipe_emulator::Settings;
use std::path::{Path, PathBuf};

const DATA: &str = "data";
const LAKE: &str = "lake";
const TITAN: &str = "id = \"amazon.titan-embed-text-v2:0\"\ndimensions = 256";

/// A Bedrock emulator, an S3 server with the buckets `data` and `lake`, and a folder for
/// pipelines.
struct S3Env {
    env: EmuEnv,
    s3: LocalS3,
}

impl S3Env {
    fn new(settings: Settings) -> Self {
        Self::with_faults(settings, S3Faults::default())
    }

    fn with_faults(settings: Settings, faults: S3Faults) -> Self {
        let env = EmuEnv::new(settings);
        let s3 = env
            .rt
            .block_on(LocalS3::start_with_faults(
                ([127, 0, 0, 1], 0).into(),
                &env.path().join("s3"),
                &[DATA, LAKE],
                &[(TEST_KEY, TEST_SECRET)],
                faults,
            ))
            .unwrap();
        Self { env, s3 }
    }

    /// Puts a local file at `s3://data/<key>`.
    fn put(&self, key: &str, from: &Path) {
        let to = self.s3.root.join(DATA).join(key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }

    /// The folder behind `s3://lake/<key>`.
    fn lake(&self, key: &str) -> PathBuf {
        self.s3.root.join(LAKE).join(key)
    }

    /// Writes `name`: `[storage]` at this S3 server, the Titan model, `source`, `embed`, and a
    /// `[sink]` table `t` in `sink_uri` with `sink` keys.
    fn pipeline(
        &self,
        name: &str,
        source: &str,
        embed: &str,
        sink_uri: &str,
        sink: &str,
    ) -> String {
        self.env.write(
            name,
            &format!(
                r#"
[storage]
s3_endpoint_url = "{}"

[source]
{source}

[[model]]
name = "m"
provider = "bedrock"
{TITAN}

[[embed]]
model = "m"
{embed}

[sink]
uri = "{sink_uri}"
table = "t"
{sink}
"#,
                self.s3.endpoint()
            ),
        )
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.env.run(args);
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !text.contains(TEST_SECRET),
                "the secret key was printed: {text}"
            );
        }
        out
    }

    fn ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(
            out.code == 0 || out.code == 3,
            "{args:?}: exit {}\n{}\n{}",
            out.code,
            out.stdout,
            out.stderr
        );
        json_summary(&out)
    }
}

fn sorted_ids(db: &Path) -> Vec<String> {
    let mut ids = table_strings(db, "t", "id");
    ids.sort();
    ids
}

#[test]
fn parquet_and_csv_from_s3_make_the_same_table_as_local_files() {
    let s = S3Env::new(Settings::default());
    s.put("in/2024/10/articles.parquet", &sample("articles.parquet"));
    s.put("in/2024/notes.txt", &sample("articles.csv"));
    s.put("csv/articles.csv", &sample("articles.csv"));
    for (source_s3, source_local) in [
        (
            "type = \"parquet\"\npath = \"s3://data/in/**/*.parquet\"".to_string(),
            articles(),
        ),
        (
            "type = \"csv\"\npath = \"s3://data/csv/articles.csv\"\nid_column = \"id\"".to_string(),
            format!(
                "type = \"csv\"\npath = {:?}\nid_column = \"id\"",
                sample("articles.csv").to_string_lossy()
            ),
        ),
    ] {
        let remote = s.pipeline(
            "remote.toml",
            &source_s3,
            "column = \"title\"",
            "s3://lake/db",
            "mode = \"overwrite\"",
        );
        let local = s.pipeline(
            "local.toml",
            &source_local,
            "column = \"title\"",
            "local-db",
            "mode = \"overwrite\"",
        );
        let r = s.ok(&["run", &remote, "--json"]);
        let l = s.ok(&["run", &local, "--json"]);
        assert_eq!(r["rows_read"], 240, "{r}");
        assert_eq!(r["rows_written"], l["rows_written"], "{r}\n{l}");
        // The same rows and vectors, written through S3.
        assert_eq!(
            table_vectors(&s.lake("db"), "t", "vector"),
            table_vectors(&s.env.path().join("local-db"), "t", "vector")
        );
    }
}

#[test]
fn image_folders_are_listed_and_fetched_from_s3() {
    let s = S3Env::new(Settings::default());
    let images = sample("images");
    for entry in walk(&images) {
        let rel = entry
            .strip_prefix(&images)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        s.put(&format!("pictures/{rel}"), &entry);
    }
    let source = |path: &str| {
        format!("type = \"images\"\npath = {path:?}\ninclude = [\"**/*.jpg\", \"**/*.png\", \"**/*.webp\", \"**/*.gif\"]")
    };
    let embed = "image = \"bytes\"";
    let model = "id = \"amazon.titan-embed-image-v1\"\ndimensions = 256";
    let remote = s.pipeline(
        "remote.toml",
        &source("s3://data/pictures/"),
        embed,
        "s3://lake/db",
        "mode = \"overwrite\"",
    );
    let local = s.pipeline(
        "local.toml",
        &source(&images.to_string_lossy()),
        embed,
        "local-db",
        "mode = \"overwrite\"",
    );
    std::fs::write(
        &remote,
        std::fs::read_to_string(&remote)
            .unwrap()
            .replace(TITAN, model),
    )
    .unwrap();
    std::fs::write(
        &local,
        std::fs::read_to_string(&local)
            .unwrap()
            .replace(TITAN, model),
    )
    .unwrap();
    let r = s.ok(&["run", &remote, "--json"]);
    let l = s.ok(&["run", &local, "--json"]);
    assert!(r["rows_written"].as_u64().unwrap() >= 5, "{r}");
    assert_eq!(r["rows_written"], l["rows_written"], "{r}\n{l}");
    assert_eq!(r["rows_failed"], l["rows_failed"], "{r}\n{l}");
    assert_eq!(
        table_vectors(&s.lake("db"), "t", "vector"),
        table_vectors(&s.env.path().join("local-db"), "t", "vector"),
        "the same images, ids and vectors"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A CSV of `n` rows (`id`, `title`), the titles changed by `edit`.
fn rows_csv(n: usize, edit: impl Fn(usize) -> String) -> String {
    let mut csv = String::from("id,title\n");
    for i in 0..n {
        csv.push_str(&format!("r{i:03},{}\n", edit(i)));
    }
    csv
}

#[test]
fn every_sink_mode_works_on_s3() {
    let s = S3Env::new(Settings::default());
    let csv = s.env.path().join("rows.csv");
    std::fs::write(&csv, rows_csv(30, |i| format!("title {i}"))).unwrap();
    s.put("rows.csv", &csv);
    let source = "type = \"csv\"\npath = \"s3://data/rows.csv\"\nid_column = \"id\"";
    let with_mode = |mode: &str, extra: &str| {
        s.pipeline(
            "p.toml",
            source,
            "column = \"title\"",
            "s3://lake/db",
            &format!("mode = \"{mode}\"\n{extra}"),
        )
    };
    // create, then create again: refused, nothing written.
    let p = with_mode("create", "");
    assert_eq!(s.ok(&["run", &p, "--json"])["rows_written"], 30);
    let again = s.run(&["run", &p, "--json"]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    // overwrite, then append of new rows only.
    let p = with_mode("overwrite", "");
    assert_eq!(s.ok(&["run", &p, "--json"])["rows_written"], 30);
    std::fs::write(&csv, rows_csv(35, |i| format!("title {i}"))).unwrap();
    s.put("rows.csv", &csv);
    let p = with_mode("append", "");
    // Ids already in the table are dead-lettered before any call (updates are incremental's).
    let a = s.ok(&["run", &p, "--json"]);
    assert_eq!(
        (a["rows_written"].as_u64(), a["rows_failed"].as_u64()),
        (Some(5), Some(30)),
        "{a}"
    );
    assert_eq!(a["failures_by_kind"]["duplicate_id"], 30, "{a}");
    // incremental: 3 changed, 5 deleted, in chunks of 4 rows.
    std::fs::write(
        &csv,
        rows_csv(30, |i| {
            if i < 3 {
                format!("new {i}")
            } else {
                format!("title {i}")
            }
        }),
    )
    .unwrap();
    s.put("rows.csv", &csv);
    let p = with_mode("incremental", "cleanup = \"full\"\ncommit_rows = 4");
    let plan = s.run(&["plan", &p, "--json"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(plan["rows_to_delete"], 5, "{plan}");
    let i = s.ok(&["run", &p, "--json"]);
    assert_eq!(
        (
            i["rows_written"].as_u64(),
            i["rows_skipped"].as_u64(),
            i["rows_deleted"].as_u64()
        ),
        (Some(3), Some(27), Some(5)),
        "{i}"
    );
    assert_eq!(
        sorted_ids(&s.lake("db")),
        (0..30).map(|i| format!("r{i:03}")).collect::<Vec<_>>()
    );
    // search, runs: read back through S3.
    let hits = s.run(&["search", &p, "new 1", "-k", "3", "--json"]);
    assert_eq!(hits.code, 0, "{}", hits.stderr);
    let hits: Vec<serde_json::Value> = serde_json::from_str(&hits.stdout).unwrap();
    assert_eq!(hits.len(), 3);
    let runs = s.run(&["runs", &p, "--json"]);
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let runs: Vec<serde_json::Value> = serde_json::from_str(&runs.stdout).unwrap();
    let modes: Vec<&str> = runs.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(
        modes,
        ["create", "overwrite", "append", "incremental"],
        "{runs:?}"
    );
    // The run log and the table live in the bucket; nothing was written locally.
    assert!(s.lake("db/t_runs.lance").is_dir());
    assert!(!s.env.path().join("db").exists());
}

#[test]
fn failures_go_to_the_bucket_and_a_run_that_commits_nothing_keeps_them() {
    let s = S3Env::new(Settings::default());
    let csv = s.env.path().join("rows.csv");
    std::fs::write(&csv, "id,title\na,first\nb,\nc,third\n").unwrap();
    s.put("rows.csv", &csv);
    let p = s.pipeline(
        "p.toml",
        "type = \"csv\"\npath = \"s3://data/rows.csv\"\nid_column = \"id\"",
        "column = \"title\"",
        "s3://lake/db",
        "mode = \"overwrite\"",
    );
    let out = s.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let summary = json_summary(&out);
    assert_eq!(
        summary["failures_file"], "s3://lake/db/t_failures.jsonl",
        "{summary}"
    );
    let letters = dead_letters(&s.lake("db/t_failures.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["id"], "b");
    assert_eq!(letters[0]["kind"], "empty_input");
    // A run that commits nothing (refused: the table exists) leaves the committed run's
    // failures where they were.
    let refused = s.pipeline(
        "create.toml",
        "type = \"csv\"\npath = \"s3://data/rows.csv\"\nid_column = \"id\"",
        "column = \"title\"",
        "s3://lake/db",
        "mode = \"create\"",
    );
    assert_eq!(s.run(&["run", &refused, "--json"]).code, 2);
    assert_eq!(dead_letters(&s.lake("db/t_failures.jsonl")), letters);
    // A clean run replaces them: no failures, no file.
    std::fs::write(&csv, "id,title\na,first\nb,second\n").unwrap();
    s.put("rows.csv", &csv);
    assert_eq!(s.run(&["run", &p, "--json"]).code, 0);
    assert!(!s.lake("db/t_failures.jsonl").exists());
}

#[test]
fn a_sigkilled_incremental_run_on_s3_ends_with_exactly_the_source_rows() {
    let s = S3Env::new(Settings {
        latency: embedpipe_emulator::Latency::Fixed { ms: 20.0 },
        ..Default::default()
    });
    let csv = s.env.path().join("rows.csv");
    std::fs::write(&csv, rows_csv(80, |i| format!("title {i}"))).unwrap();
    s.put("rows.csv", &csv);
    let p = s.pipeline(
        "p.toml",
        "type = \"csv\"\npath = \"s3://data/rows.csv\"\nid_column = \"id\"\nbatch_size = 2",
        "column = \"title\"",
        "s3://lake/db",
        "mode = \"incremental\"\ncleanup = \"full\"\ncommit_rows = 10",
    );
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace(TITAN, &format!("{TITAN}\nconcurrency = 2")),
    )
    .unwrap();
    let mut child = s
        .env
        .cli(&["run", &p, "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once some chunks are committed to the bucket (polled).
    wait_for(120, "30 calls", || {
        s.env.ok_calls("amazon.titan-embed-text-v2:0") >= 30
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let committed = table_info(&s.lake("db"), "t").0;
    assert!(
        committed > 0 && committed < 80,
        "{committed} rows committed before the kill"
    );
    let out = s.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let summary = json_summary(&out);
    assert_eq!(
        summary["rows_skipped"].as_u64(),
        Some(committed as u64),
        "{summary}"
    );
    assert_eq!(
        sorted_ids(&s.lake("db")),
        (0..80).map(|i| format!("r{i:03}")).collect::<Vec<_>>()
    );
    // Nothing left to do.
    let again = s.ok(&["run", &p, "--json"]);
    assert_eq!(again["rows_written"], 0, "{again}");
}

/// Version files of a table folder (one manifest per version).
fn versions(table: &Path) -> usize {
    std::fs::read_dir(table.join("_versions"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "manifest")
            })
            .count()
        })
        .unwrap_or(0)
}

fn data_files(table: &Path) -> usize {
    std::fs::read_dir(table.join("data"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn retention_removes_old_versions_in_s3_and_locally_and_keeps_the_window() {
    let s = S3Env::new(Settings::default());
    let csv = s.env.path().join("rows.csv");
    std::fs::write(&csv, rows_csv(20, |i| format!("title {i}"))).unwrap();
    s.put("rows.csv", &csv);
    let source = "type = \"csv\"\npath = \"s3://data/rows.csv\"\nid_column = \"id\"";
    for (uri, table) in [
        ("s3://lake/db", s.lake("db/t.lance")),
        ("local-db", s.env.path().join("local-db/t.lance")),
    ] {
        // The default window (7 days) keeps every version of these runs.
        let p = s.pipeline(
            "p.toml",
            source,
            "column = \"title\"",
            uri,
            "mode = \"overwrite\"",
        );
        for _ in 0..3 {
            let r = s.ok(&["run", &p, "--json"]);
            assert_eq!(r["maintenance"]["pruned"]["versions_removed"], 0, "{r}");
        }
        assert!(versions(&table) >= 3, "{}", versions(&table));
        let files_before = data_files(&table);
        // Keep the newest two: the older versions and their data files go.
        let p = s.pipeline(
            "p.toml",
            source,
            "column = \"title\"",
            uri,
            "mode = \"overwrite\"\nkeep_versions = 2",
        );
        let r = s.ok(&["run", &p, "--json"]);
        let removed = r["maintenance"]["pruned"]["versions_removed"]
            .as_u64()
            .unwrap();
        assert!(removed >= 2, "{r}");
        assert!(
            r["maintenance"]["pruned"]["bytes_removed"]
                .as_u64()
                .unwrap()
                > 0,
            "{r}"
        );
        assert_eq!(versions(&table), 2, "{uri}");
        assert!(
            data_files(&table) < files_before,
            "{uri}: data files were not deleted"
        );
        assert_eq!(table_info(table.parent().unwrap(), "t").0, 20);
        // The run log says so.
        let runs = s.run(&["runs", &p, "--json"]);
        let runs: Vec<serde_json::Value> = serde_json::from_str(&runs.stdout).unwrap();
        assert_eq!(
            runs.last().unwrap()["versions_removed"].as_u64(),
            Some(removed),
            "{runs:?}"
        );
    }
}

#[test]
fn unreachable_buckets_endpoints_and_bad_credentials_fail_before_any_call() {
    let s = S3Env::new(Settings::default());
    s.put("rows.csv", &sample("articles.csv"));
    let good_source = "type = \"csv\"\npath = \"s3://data/rows.csv\"\nid_column = \"id\"";
    let check = |p: &str, env: &[(&str, &str)], want: &str| {
        for cmd in ["validate", "run"] {
            let out = s.env.run_with(&[cmd, p], env);
            assert_eq!(out.code, 2, "{cmd}: {}\n{}", out.stdout, out.stderr);
            assert!(
                out.stderr.contains(want),
                "{cmd}: wanted `{want}` in: {}",
                out.stderr
            );
            for secret in [TEST_SECRET, "wrong-secret-value"] {
                assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
            }
        }
        assert_eq!(
            s.env.ok_calls("amazon.titan-embed-text-v2:0"),
            0,
            "a model was called"
        );
    };
    let overwrite = |source: &str, uri: &str| {
        s.pipeline(
            "p.toml",
            source,
            "column = \"title\"",
            uri,
            "mode = \"overwrite\"",
        )
    };
    // No such bucket: for the sink, and for the source.
    let p = overwrite(good_source, "s3://no-such-bucket/db");
    check(&p, &[], "s3://no-such-bucket/db");
    let p = overwrite(
        "type = \"csv\"\npath = \"s3://missing-bucket/x/*.csv\"",
        "s3://lake/db",
    );
    check(&p, &[], "s3://missing-bucket/");
    // An empty listing.
    let p = overwrite(
        "type = \"csv\"\npath = \"s3://data/nothing/*.csv\"",
        "s3://lake/db",
    );
    check(&p, &[], "matches no objects");
    // A missing object.
    let p = overwrite(
        "type = \"csv\"\npath = \"s3://data/absent.csv\"",
        "s3://lake/db",
    );
    check(&p, &[], "s3://data/absent.csv");
    // Wrong credentials (a secret the server does not know): named, never printed.
    let p = overwrite(good_source, "s3://lake/db");
    check(
        &p,
        &[("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")],
        "credentials",
    );
    // An endpoint nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = overwrite(good_source, "s3://lake/db");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace(&s.s3.endpoint(), &format!("http://{closed}")),
    )
    .unwrap();
    check(&p, &[], "cannot be reached");
    // Plain HTTP off loopback is refused by the file check, and gs:// is not supported.
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace(&format!("http://{closed}"), "http://minio.example.com:9000"),
    )
    .unwrap();
    check(&p, &[], "plain HTTP");
    let p = s.pipeline(
        "p.toml",
        good_source,
        "column = \"title\"",
        "gs://bucket/db",
        "mode = \"overwrite\"",
    );
    check(&p, &[], "`gs://` is not supported");
    // Nothing was written in the buckets.
    assert!(!s.lake("db").exists());
}

#[test]
fn slow_down_answers_and_dropped_connections_are_retried() {
    // Every 5th request answered 503 SlowDown, every 7th connection dropped: listings, footer
    // and row-group reads, table commits, run log and failures all meet them.
    let s = S3Env::with_faults(
        Settings::default(),
        S3Faults {
            slow_down_every: 5,
            reset_every: 7,
        },
    );
    s.put("in/articles.parquet", &sample("articles.parquet"));
    let p = s.pipeline(
        "p.toml",
        "type = \"parquet\"\npath = \"s3://data/in/*.parquet\"\nid_column = \"id\"",
        "column = \"title\"",
        "s3://lake/db",
        "mode = \"incremental\"\ncommit_rows = 50",
    );
    let r = s.ok(&["run", &p, "--json", "-vv"]);
    assert_eq!(
        (r["rows_written"].as_u64(), r["rows_failed"].as_u64()),
        (Some(240), Some(0)),
        "{r}"
    );
    assert_eq!(table_info(&s.lake("db"), "t").0, 240);
    let again = s.ok(&["run", &p, "--json"]);
    assert_eq!(again["rows_skipped"], 240, "{again}");
}

#[test]
fn the_shipped_s3_pipeline_runs_offline_with_the_emulator() {
    // As pipelines/s3.toml's header says (the local S3 server keeps its folder in the temp
    // directory, so the table may be there from an earlier run: incremental skips it).
    let seed = format!("embedpipe-sample={}", repo().join("sample_data").display());
    let p = repo().join("pipelines/s3.toml");
    let p = p.to_str().unwrap();
    let emu = ["--emulator", "--emulator-bucket", seed.as_str()];
    let with = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(emu);
        embedpipe(&all, &repo())
    };
    let out = with(&["run", p, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let s = json_summary(&out);
    assert_eq!(s["uri"], "s3://embedpipe-demo/db", "{s}");
    assert_eq!(
        s["rows_written"].as_u64().unwrap() + s["rows_skipped"].as_u64().unwrap(),
        240,
        "{s}"
    );
    let hits = with(&["search", p, "black holes", "-k", "2", "--json"]);
    assert_eq!(hits.code, 0, "{}", hits.stderr);
    let hits: Vec<serde_json::Value> = serde_json::from_str(&hits.stdout).unwrap();
    assert_eq!(hits.len(), 2);
    let runs = with(&["runs", p, "--json"]);
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let runs: Vec<serde_json::Value> = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs.last().unwrap()["status"], "ok", "{runs:?}");
}

#[test]
fn a_failures_file_of_many_megabytes_is_uploaded_in_parts_and_appears_whole() {
    // 60,000 rows without a title (dead-lettered before any call, ~13 MB of dead letters: more
    // than one 8 MiB part) and three good ones.
    let s = S3Env::new(Settings::default());
    let csv = s.env.path().join("rows.csv");
    let mut text = String::from("id,title\ng1,one\ng2,two\ng3,three\n");
    for i in 0..60_000 {
        text.push_str(&format!("e{i:05},\n"));
    }
    std::fs::write(&csv, text).unwrap();
    s.put("rows.csv", &csv);
    let p = s.pipeline(
        "p.toml",
        "type = \"csv\"\npath = \"s3://data/rows.csv\"\nid_column = \"id\"\nbatch_size = 8192",
        "column = \"title\"",
        "s3://lake/db",
        "mode = \"overwrite\"",
    );
    let out = s.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let summary = json_summary(&out);
    assert_eq!(
        (
            summary["rows_written"].as_u64(),
            summary["rows_failed"].as_u64()
        ),
        (Some(3), Some(60_000)),
        "{summary}"
    );
    let path = s.lake("db/t_failures.jsonl");
    assert!(std::fs::metadata(&path).unwrap().len() > 9 << 20);
    let letters = dead_letters(&path);
    assert_eq!(letters.len(), 60_000);
    assert_eq!(letters[0]["id"], "e00000");
    assert_eq!(letters[59_999]["id"], "e59999");
}
