//! Sharded runs: real worker processes of the real CLI, each reading its part of a source in a
//! real S3 server (s3s-fs on loopback) and staging its rows next to the table there; then one
//! `embedpipe commit`. Bedrock is the emulator, whose counters say which calls were paid for.
//!
//! One committer at a time: s3s-fs answers `If-None-Match` without making it atomic, so no test
//! commits concurrently (the workers never commit).

mod common;

use common::*;
use embedpipe_emulator::s3::LocalS3;
use embedpipe_emulator::{Latency, Settings};
use std::path::{Path, PathBuf};
use std::process::Child;

const DATA: &str = "data";
const LAKE: &str = "lake";
const TITAN: &str = "amazon.titan-embed-text-v2:0";

struct Env {
    env: EmuEnv,
    s3: LocalS3,
}

impl Env {
    fn new(settings: Settings) -> Self {
        let env = EmuEnv::new(settings);
        let s3 = env
            .rt
            .block_on(LocalS3::start(
                ([127, 0, 0, 1], 0).into(),
                &env.path().join("s3"),
                &[DATA, LAKE],
                &[(TEST_KEY, TEST_SECRET)],
            ))
            .unwrap();
        Self { env, s3 }
    }

    fn put(&self, key: &str, from: &Path) {
        let to = self.s3.root.join(DATA).join(key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }

    fn put_text(&self, key: &str, text: &str) {
        let to = self.s3.root.join(DATA).join(key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, text).unwrap();
    }

    /// The folder behind `s3://lake/db`, which LanceDB can open directly.
    fn db(&self) -> PathBuf {
        self.s3.root.join(LAKE).join("db")
    }

    /// A pipeline reading `source` from S3 into table `t` of `s3://lake/db`.
    fn pipeline(&self, name: &str, source: &str, sink: &str) -> String {
        self.pipeline_in(name, source, "db", sink)
    }

    /// A pipeline reading `source` from S3 into table `t` of `s3://lake/<db>`.
    fn pipeline_in(&self, name: &str, source: &str, db: &str, sink: &str) -> String {
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
id = "{TITAN}"
dimensions = 256

[[embed]]
model = "m"
column = "title"

[sink]
uri = "s3://lake/{db}"
table = "t"
failures = "s3://lake/{db}-failures.jsonl"
{sink}
"#,
                self.s3.endpoint()
            ),
        )
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self.env.run_with(args, env);
        assert!(!out.stdout.contains(TEST_SECRET) && !out.stderr.contains(TEST_SECRET));
        out
    }

    fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut cmd = self.env.cli(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn calls(&self) -> u64 {
        self.env.ok_calls(TITAN)
    }

    /// Runs every shard of `run` at once (each its own process), expecting each to succeed.
    fn shards(&self, p: &str, run: &str, n: u32) -> Vec<serde_json::Value> {
        let children: Vec<Child> = (0..n)
            .map(|i| {
                let shard = format!("{i}/{n}");
                self.spawn(&["run", p, "--json", "--shard", &shard, "--run", run], &[])
            })
            .collect();
        children.into_iter().map(finish).collect()
    }

    fn commit(&self, p: &str, run: &str) -> Output {
        self.run(&["commit", p, "--run", run, "--json"])
    }
}

/// Waits for a worker; its JSON summary, which must say it succeeded.
fn finish(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

fn sorted_ids(db: &Path) -> Vec<String> {
    let mut ids = table_strings(db, "t", "id");
    ids.sort();
    ids
}

/// The table's committed versions (manifests under `_versions`).
fn versions(db: &Path) -> usize {
    match std::fs::read_dir(db.join("t.lance/_versions")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
            .count(),
        Err(_) => 0,
    }
}

fn parquet_source() -> String {
    "type = \"parquet\"\npath = \"s3://data/in/*.parquet\"\nid_column = \"id\"".into()
}

fn the_article_ids() -> Vec<String> {
    let mut ids: Vec<String> = (1..=240).map(|i| format!("art-{i:04}")).collect();
    ids.sort();
    ids
}

#[test]
fn four_shards_then_one_commit_write_every_source_row_once() {
    // Three titles name Andromeda: refused by the model, dead-lettered by their shards.
    let e = Env::new(Settings {
        poison: Some("Andromeda".into()),
        ..Default::default()
    });
    e.put("in/articles.parquet", &sample("articles.parquet"));
    let p = e.pipeline("p.toml", &parquet_source(), "mode = \"create\"");
    // Workers as the engines start them: two as Kubernetes Indexed Job pods (index, count and
    // the Job's name from the environment), two as AWS Batch array children.
    let k8s = |i: &str| {
        vec![
            ("JOB_COMPLETION_INDEX", i.to_string()),
            ("EMBEDPIPE_SHARDS", "4".to_string()),
            ("EMBEDPIPE_JOB_NAME", "embed-42".to_string()),
        ]
    };
    let batch = |i: &str| {
        vec![
            ("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string()),
            ("EMBEDPIPE_SHARDS", "4".to_string()),
            ("AWS_BATCH_JOB_ID", format!("embed-42:{i}")),
        ]
    };
    let envs = [k8s("0"), k8s("1"), batch("2"), batch("3")];
    let children: Vec<Child> = envs
        .iter()
        .map(|env| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            e.spawn(&["run", &p, "--json"], &env)
        })
        .collect();
    let summaries: Vec<serde_json::Value> = children.into_iter().map(finish).collect();
    let read: u64 = summaries
        .iter()
        .map(|s| s["rows_read"].as_u64().unwrap())
        .sum();
    assert_eq!(read, 240, "{summaries:?}");
    let failed: u64 = summaries
        .iter()
        .map(|s| s["rows_failed"].as_u64().unwrap())
        .sum();
    assert_eq!(failed, 3, "{summaries:?}");
    for (i, s) in summaries.iter().enumerate() {
        assert_eq!(s["shard"]["shard"], format!("{i}/4"));
        assert_eq!(s["shard"]["run"], "embed-42");
        assert_eq!(s["rows_committed"], 0, "a worker commits nothing: {s}");
    }
    // Staged, not visible: no table version until the commit.
    assert_eq!(versions(&e.db()), 0);
    let shown = e.run(&["runs", &p, "--run", "embed-42", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "ready", "{shown}");
    assert_eq!(shown["shard_status"].as_array().unwrap().len(), 4);

    let out = e.commit(&p, "embed-42");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let outcome = json_summary(&out);
    assert_eq!(outcome["rows_written"], 237, "{outcome}");
    assert_eq!(outcome["rows_failed"], 3, "{outcome}");
    assert_eq!(outcome["shards"], 4);
    // Every row once, one table version, each row paid for once.
    let poisoned = ["art-0004", "art-0014", "art-0024"];
    let mut want = the_article_ids();
    want.retain(|id| !poisoned.contains(&id.as_str()));
    assert_eq!(sorted_ids(&e.db()), want);
    assert_eq!(versions(&e.db()), 1);
    assert_eq!(e.calls(), 237);
    // The shards' dead letters, merged into the pipeline's failures file.
    let mut dead: Vec<String> = dead_letters(&e.s3.root.join(LAKE).join("db-failures.jsonl"))
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    dead.sort();
    assert_eq!(dead, poisoned);
    // The same vectors a single process makes.
    let single = e.pipeline_in(
        "single.toml",
        &parquet_source(),
        "single",
        "mode = \"create\"",
    );
    let out = e.run(&["run", &single, "--json"]);
    assert_eq!(out.code, 3, "the same three rows fail: {}", out.stderr);
    assert_eq!(
        table_vectors(&e.db(), "t", "vector"),
        table_vectors(&e.s3.root.join(LAKE).join("single"), "t", "vector")
    );
    // The run log has the run once, with every shard's rows and calls.
    let runs = e.run(&["runs", &p, "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["run_id"], "embed-42");
    assert_eq!(runs[0]["rows_written"], 237);
    assert_eq!(runs[0]["rows_failed"], 3);
    // Committing again changes nothing.
    let again = json_summary(&e.commit(&p, "embed-42"));
    assert_eq!(again["committed_now"], false);
    assert_eq!(versions(&e.db()), 1);
    // A commit that died after Lance committed but before it recorded so: run again, it finds
    // its own transaction instead of adding the rows twice.
    let marker = e.db().join("_embedpipe/runs/embed-42/committed.json");
    std::fs::remove_file(&marker).unwrap();
    let out = e.commit(&p, "embed-42");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(json_summary(&out)["version"], 1);
    assert_eq!(versions(&e.db()), 1);
    assert_eq!(sorted_ids(&e.db()), want);
    let runs = e.run(&["runs", &p, "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "recorded once: {runs}");
    // Nothing staged or reported holds the credentials.
    for f in walk_files(&e.db().join("_embedpipe")) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(TEST_SECRET) && !text.contains(TEST_KEY),
            "{}",
            f.display()
        );
    }
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        match p.is_dir() {
            true => out.extend(walk_files(&p)),
            false => out.push(p),
        }
    }
    out
}

#[test]
fn a_missing_shard_refuses_the_commit_and_a_killed_shard_run_again_pays_only_its_own_work() {
    let e = Env::new(Settings {
        latency: Latency::Fixed { ms: 20.0 },
        ..Default::default()
    });
    e.put("in/articles.parquet", &sample("articles.parquet"));
    let p = e.pipeline("p.toml", &parquet_source(), "mode = \"overwrite\"");
    // The table as it was before the sharded run.
    let first = e.run(&["run", &p, "--json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let before_vectors = table_vectors(&e.db(), "t", "vector");
    let before_versions = versions(&e.db());
    e.env.emu.reset();

    for i in [0, 2, 3] {
        let shard = format!("{i}/4");
        let out = e.run(&["run", &p, "--json", "--shard", &shard, "--run", "r2"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let others = e.calls();
    // Shard 1 is killed midway.
    let mut child = e.spawn(&["run", &p, "--json", "--shard", "1/4", "--run", "r2"], &[]);
    wait_for(60, "shard 1's first calls", || e.calls() >= others + 5);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_calls = e.calls() - others;

    let out = e.commit(&p, "r2");
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("shard 1") && out.stderr.contains("--shard 1/4 --run r2"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("shard 0"), "{}", out.stderr);
    // The table is as it was.
    assert_eq!(versions(&e.db()), before_versions);
    assert_eq!(table_vectors(&e.db(), "t", "vector"), before_vectors);
    let shown = e.run(&["runs", &p, "--run", "r2", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_ne!(shown["shard_status"][1]["status"], "ok", "{shown}");

    // Shard 1 again: it remakes its own calls, and only those.
    let calls_before = e.calls();
    let out = e.run(&["run", &p, "--json", "--shard", "1/4", "--run", "r2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rerun = json_summary(&out);
    let shard_rows = rerun["rows_written"].as_u64().unwrap();
    assert!(shard_rows > 0 && killed_calls <= shard_rows);
    assert_eq!(e.calls() - calls_before, shard_rows);

    let out = e.commit(&p, "r2");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(versions(&e.db()), before_versions + 1);
    assert_eq!(sorted_ids(&e.db()), the_article_ids());
    // The same model, the same titles: the same vectors as the single run.
    assert_eq!(table_vectors(&e.db(), "t", "vector"), before_vectors);
}

#[test]
fn an_incremental_sharded_rerun_embeds_exactly_the_edited_rows() {
    let e = Env::new(Settings::default());
    let csv = std::fs::read_to_string(sample("articles.csv")).unwrap();
    e.put_text("csv/articles.csv", &csv);
    let source = "type = \"csv\"\npath = \"s3://data/csv/articles.csv\"\nid_column = \"id\"";
    let p = e.pipeline(
        "p.toml",
        source,
        "mode = \"incremental\"\ncleanup = \"full\"",
    );
    e.shards(&p, "day-1", 3);
    let out = e.commit(&p, "day-1");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(sorted_ids(&e.db()), the_article_ids());
    assert_eq!(e.calls(), 240);
    let before = table_vectors(&e.db(), "t", "vector");

    // Edit five titles, drop two rows, add one.
    let edited = ["art-0003", "art-0050", "art-0101", "art-0177", "art-0240"];
    let dropped = ["art-0010", "art-0200"];
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    let id_col = header.iter().position(|c| c == "id").unwrap();
    let title_col = header.iter().position(|c| c == "title").unwrap();
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&header).unwrap();
    for record in reader.records() {
        let mut fields: Vec<String> = record.unwrap().iter().map(String::from).collect();
        let id = fields[id_col].clone();
        if dropped.contains(&id.as_str()) {
            continue;
        }
        if edited.contains(&id.as_str()) {
            fields[title_col] = format!("Edited headline for {id}");
        }
        writer.write_record(&fields).unwrap();
    }
    let mut extra: Vec<String> = header.iter().map(|_| String::new()).collect();
    extra[id_col] = "art-9999".into();
    extra[title_col] = "A brand new article".into();
    writer.write_record(&extra).unwrap();
    let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
    e.put_text("csv/articles.csv", &text);

    e.env.emu.reset();
    let summaries = e.shards(&p, "day-2", 3);
    let skipped: u64 = summaries
        .iter()
        .map(|s| s["rows_skipped"].as_u64().unwrap())
        .sum();
    assert_eq!(skipped, 240 - 2 - 5);
    let out = e.commit(&p, "day-2");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let outcome = json_summary(&out);
    assert_eq!(outcome["rows_deleted"], 2, "{outcome}");
    // Exactly the edited and new rows were embedded.
    assert_eq!(e.calls(), 6);
    let after = table_vectors(&e.db(), "t", "vector");
    let mut want = the_article_ids();
    want.retain(|id| !dropped.contains(&id.as_str()));
    want.push("art-9999".into());
    want.sort();
    assert_eq!(sorted_ids(&e.db()), want);
    for (id, v) in &after {
        let old = before.iter().find(|(i, _)| i == id).map(|(_, v)| v);
        match (edited.contains(&id.as_str()), old) {
            (true, Some(old)) => assert_ne!(v, old, "{id} was edited"),
            (false, Some(old)) => assert_eq!(v, old, "{id} was not edited"),
            (_, None) => assert_eq!(id, "art-9999"),
        }
    }
}

#[test]
fn a_worker_with_another_shard_count_or_pipeline_is_refused() {
    let e = Env::new(Settings::default());
    e.put("in/articles.parquet", &sample("articles.parquet"));
    let p = e.pipeline("p.toml", &parquet_source(), "mode = \"overwrite\"");
    let out = e.run(&["run", &p, "--shard", "0/4", "--run", "r", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let calls = e.calls();
    let out = e.run(&["run", &p, "--shard", "1/3", "--run", "r"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("started with 4 shards"),
        "{}",
        out.stderr
    );
    // An edited pipeline file is another pipeline.
    let edited = std::fs::read_to_string(&p).unwrap() + "\n# edited\n";
    let p2 = e.env.write("p2.toml", &edited);
    let out = e.run(&["run", &p2, "--shard", "1/4", "--run", "r"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("another version of the pipeline"),
        "{}",
        out.stderr
    );
    // Refused before any call.
    assert_eq!(e.calls(), calls);
    // A worker without its index or run id says how to give them.
    let out = e.run_env(&["run", &p], &[("EMBEDPIPE_SHARDS", "4")]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("JOB_COMPLETION_INDEX"),
        "{}",
        out.stderr
    );
    let out = e.run(&["commit", &p, "--run", "never-started"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("nothing staged"), "{}", out.stderr);
}

/// Writes `rows` (id, title) as the articles CSV's columns would be: header `id,title`.
fn csv_of(rows: &[(String, String)]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "title"]).unwrap();
    for (id, title) in rows {
        w.write_record([id, title]).unwrap();
    }
    String::from_utf8(w.into_inner().unwrap()).unwrap()
}

#[test]
fn a_sharded_append_adds_only_new_ids_each_once() {
    let e = Env::new(Settings::default());
    let first: Vec<(String, String)> = (0..40)
        .map(|i| (format!("a{i:03}"), format!("first batch title {i}")))
        .collect();
    e.put_text("csv/in.csv", &csv_of(&first));
    let source = "type = \"csv\"\npath = \"s3://data/csv/in.csv\"\nid_column = \"id\"";
    let p = e.pipeline("p.toml", source, "mode = \"append\"");
    let out = e.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    e.env.emu.reset();
    // Ten ids the table has, thirty new ones, and one new id twice.
    let mut second: Vec<(String, String)> = first[..10].to_vec();
    second.extend((40..70).map(|i| (format!("a{i:03}"), format!("second batch title {i}"))));
    second.push(("a050".into(), "a repeated id".into()));
    e.put_text("csv/in.csv", &csv_of(&second));
    let summaries = e.shards(&p, "more", 3);
    let sum = |k: &str| -> u64 { summaries.iter().map(|s| s[k].as_u64().unwrap()).sum() };
    // Ids the table has and the repeated one are dead-lettered as duplicates, as in one process.
    assert_eq!(sum("rows_read"), 41, "{summaries:?}");
    assert_eq!(sum("rows_written"), 30, "{summaries:?}");
    assert_eq!(sum("rows_failed"), 11, "{summaries:?}");
    let out = e.commit(&p, "more");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let ids = sorted_ids(&e.db());
    let mut want: Vec<String> = (0..70).map(|i| format!("a{i:03}")).collect();
    want.sort();
    assert_eq!(ids, want, "every id once");
    assert_eq!(e.calls(), 30);
}

#[test]
fn rows_hidden_by_a_broken_record_are_not_deleted_by_any_shard() {
    let e = Env::new(Settings::default());
    let rows: Vec<(String, String)> = (0..60)
        .map(|i| (format!("d{i:03}"), format!("document title {i}")))
        .collect();
    e.put_text("csv/in.csv", &csv_of(&rows));
    let source = "type = \"csv\"\npath = \"s3://data/csv/in.csv\"\nid_column = \"id\"";
    let p = e.pipeline(
        "p.toml",
        source,
        "mode = \"incremental\"\ncleanup = \"full\"",
    );
    e.shards(&p, "day-1", 3);
    let out = e.commit(&p, "day-1");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(sorted_ids(&e.db()).len(), 60);
    // A quote left open at row 20 swallows every record after it: their ids are unknown, so
    // no shard may delete them as gone from the source.
    let mut text = csv_of(&rows);
    text = text.replacen("d020,document title 20", "d020,\"document title 20", 1);
    e.put_text("csv/in.csv", &text);
    let summaries: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            let shard = format!("{i}/3");
            let out = e.run(&["run", &p, "--json", "--shard", &shard, "--run", "day-2"]);
            assert!(out.code == 0, "{}", out.stderr);
            json_summary(&out)
        })
        .collect();
    let deleted: u64 = summaries
        .iter()
        .map(|s| s["rows_deleted"].as_u64().unwrap())
        .sum();
    assert_eq!(deleted, 0, "{summaries:?}");
    let out = e.commit(&p, "day-2");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(json_summary(&out)["rows_deleted"], 0);
    assert_eq!(sorted_ids(&e.db()).len(), 60);
}
