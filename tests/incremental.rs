//! Scheduled re-indexing: incremental runs by content hash, upserts by id, cleanup, crash
//! safety and the vector-space guard — the real CLI against the Bedrock emulator (Titan v2:
//! one input per call, so calls count rows).

mod common;

use common::*;
use embedpipe_emulator::{Emulator, Latency, Settings};
use std::collections::BTreeMap;

const TITAN: &str = "amazon.titan-embed-text-v2:0";

struct Env {
    _rt: tokio::runtime::Runtime,
    emu: Emulator,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(settings: Settings) -> Self {
        let rt = test_runtime();
        let emu = rt
            .block_on(Emulator::start(([127, 0, 0, 1], 0).into(), settings))
            .unwrap();
        Env {
            _rt: rt,
            emu,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes the data (id → text) as `rows.csv`.
    fn data(&self, rows: &BTreeMap<String, String>) {
        let mut csv = String::from("id,text\n");
        for (id, text) in rows {
            csv.push_str(&format!("{id},{text}\n"));
        }
        std::fs::write(self.dir.path().join("rows.csv"), csv).unwrap();
    }

    fn pipeline(&self, model: &str, sink: &str) -> String {
        write_pipeline(
            self.dir.path(),
            "p.toml",
            &format!(
                r#"
[source]
type = "csv"
path = "rows.csv"
id_column = "id"
batch_size = 16

[[model]]
name = "m"
provider = "bedrock"
{model}

[[embed]]
model = "m"
column = "text"

[sink]
uri = "db"
table = "t"
mode = "incremental"
{sink}
"#
            ),
        )
    }

    fn run(&self, p: &str, extra: &[&str]) -> Output {
        let mut args = vec!["run", p, "--json"];
        args.extend_from_slice(extra);
        output(aws_cli(self.dir.path(), &self.emu.endpoint(), &args))
    }

    /// Calls the emulator answered since the last reset.
    fn calls(&self) -> u64 {
        self.emu.stats().models.get(TITAN).map_or(0, |c| c.requests)
    }

    /// The table's (id, hash) rows, sorted.
    fn table(&self) -> Vec<(String, String)> {
        let db = self.dir.path().join("db");
        let ids = table_strings(&db, "t", "id");
        let hashes = table_strings(&db, "t", "vector_hash");
        let mut rows: Vec<_> = ids.into_iter().zip(hashes).collect();
        rows.sort();
        rows
    }
}

fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

fn rows(n: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| {
            (
                format!("doc-{i:03}"),
                format!("text number {i} about topic {}", i % 7),
            )
        })
        .collect()
}

fn ids(t: &[(String, String)]) -> Vec<String> {
    t.iter().map(|r| r.0.clone()).collect()
}

const MODEL: &str = "id = \"amazon.titan-embed-text-v2:0\"\ndimensions = 256";

#[test]
fn unchanged_rows_make_no_calls_and_changes_cost_exactly_their_rows() {
    let env = Env::new(Settings::default());
    let mut data = rows(40);
    env.data(&data);
    let p = env.pipeline(MODEL, "cleanup = \"full\"");
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(env.calls(), 40);
    assert_eq!(summary(&out)["rows_written"], 40);

    // The same data again: nothing to do.
    env.emu.reset();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = summary(&out);
    assert_eq!(env.calls(), 0, "{s}");
    assert_eq!(
        (
            s["rows_read"].as_u64(),
            s["rows_skipped"].as_u64(),
            s["rows_written"].as_u64()
        ),
        (Some(40), Some(40), Some(0))
    );
    let before = env.table();

    // Change 3, delete 2, add 4: exactly 7 calls, and exactly the new row set.
    for i in [1, 5, 9] {
        data.insert(format!("doc-{i:03}"), format!("changed text {i}"));
    }
    data.remove("doc-002");
    data.remove("doc-030");
    for i in 100..104 {
        data.insert(format!("doc-{i:03}"), format!("new text {i}"));
    }
    env.data(&data);
    env.emu.reset();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = summary(&out);
    assert_eq!(env.calls(), 7, "{s}");
    assert_eq!(s["rows_written"], 7);
    assert_eq!(s["rows_skipped"], 35);
    assert_eq!(s["rows_deleted"], 2);
    let after = env.table();
    assert_eq!(ids(&after), data.keys().cloned().collect::<Vec<_>>());
    // Unchanged rows kept their hash; changed ones got a new one.
    let hash = |t: &[(String, String)], id: &str| t.iter().find(|r| r.0 == id).unwrap().1.clone();
    assert_eq!(hash(&before, "doc-000"), hash(&after, "doc-000"));
    assert_ne!(hash(&before, "doc-001"), hash(&after, "doc-001"));

    // cleanup = "none" keeps rows gone from the source.
    data.remove("doc-003");
    env.data(&data);
    let p = env.pipeline(MODEL, "cleanup = \"none\"");
    env.emu.reset();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.calls(), 0);
    assert!(ids(&env.table()).contains(&"doc-003".to_string()));

    // Every run is in the run log.
    let runs = output(aws_cli(
        env.dir.path(),
        &env.emu.endpoint(),
        &["runs", &p, "--json"],
    ));
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let runs: Vec<serde_json::Value> = serde_json::from_str(&runs.stdout).unwrap();
    let col = |k: &str| {
        runs.iter()
            .map(|r| r[k].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(col("rows_written"), vec![40, 0, 7, 0]);
    assert_eq!(col("calls"), vec![40, 0, 7, 0]);
    assert_eq!(col("rows_deleted"), vec![0, 0, 2, 0]);
    assert!(runs
        .iter()
        .all(|r| r["status"] == "ok" && r["mode"] == "incremental"));
    // The first three runs used one pipeline file, the last another.
    assert_eq!(runs[0]["pipeline_hash"], runs[2]["pipeline_hash"]);
    assert_ne!(runs[2]["pipeline_hash"], runs[3]["pipeline_hash"]);
    let text = output(aws_cli(env.dir.path(), &env.emu.endpoint(), &["runs", &p]));
    assert!(
        text.stdout.contains("STARTED (UTC)") && text.stdout.lines().count() == 5,
        "{}",
        text.stdout
    );
}

#[test]
fn a_killed_run_resumes_with_exactly_the_right_rows() {
    // Slow calls, one at a time, a commit every 10 rows: kills land mid-run.
    let env = Env::new(Settings {
        latency: Latency::Fixed { ms: 25.0 },
        ..Default::default()
    });
    let data = rows(120);
    env.data(&data);
    let p = env.pipeline(
        &format!("{MODEL}\nconcurrency = 2"),
        "cleanup = \"full\"\ncommit_rows = 10",
    );
    // Batches of two rows, so that a chunk is the 10 rows of `commit_rows`.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("batch_size = 16", "batch_size = 2");
    std::fs::write(&p, text).unwrap();
    let mut total_calls = 0;
    // Each kill lands once the emulator has answered this many calls in all (polled, not
    // slept for): the first mid-way through the third chunk, the others after more chunks.
    for kill_at in [25, 55, 80] {
        let mut child = aws_cli(env.dir.path(), &env.emu.endpoint(), &["run", &p, "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(120, &format!("{kill_at} calls"), || env.calls() >= kill_at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    total_calls += env.calls();
    env.emu.reset();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    total_calls += env.calls();
    let t = env.table();
    assert_eq!(
        ids(&t),
        data.keys().cloned().collect::<Vec<_>>(),
        "wrong row set"
    );
    // Every row once; at most one uncommitted chunk (10) plus what was in flight re-bought per
    // kill: 2 calls, and the source batches worked on at once (3 of 2 rows here).
    let s = summary(&out);
    assert!(
        s["rows_skipped"].as_u64().unwrap() > 0,
        "no kill landed after a commit: {s}"
    );
    assert!(
        total_calls <= 120 + 3 * (10 + 2 + 3 * 2),
        "{total_calls} calls for 120 rows"
    );
    // A run on the same data: nothing left to do.
    env.emu.reset();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0);
    assert_eq!(env.calls(), 0);
}

#[test]
fn changing_the_model_needs_reindex() {
    let env = Env::new(Settings::default());
    env.data(&rows(12));
    let p = env.pipeline(MODEL, "");
    assert_eq!(env.run(&p, &[]).code, 0);
    // Another dimension: another vector space.
    let p = env.pipeline(
        "id = \"amazon.titan-embed-text-v2:0\"\ndimensions = 512",
        "",
    );
    env.emu.reset();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("--reindex"), "{}", out.stderr);
    assert!(
        out.stderr.contains("vector column `vector`"),
        "{}",
        out.stderr
    );
    assert_eq!(env.calls(), 0);
    let out = env.run(&p, &["--reindex"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.calls(), 12);
    let (n, schema) = table_info(&env.dir.path().join("db"), "t");
    assert_eq!(n, 12);
    match schema.field_with_name("vector").unwrap().data_type() {
        arrow_schema::DataType::FixedSizeList(_, d) => assert_eq!(*d, 512),
        other => panic!("{other:?}"),
    }
    // Then incremental again, in the new space.
    env.emu.reset();
    assert_eq!(env.run(&p, &[]).code, 0);
    assert_eq!(env.calls(), 0);
}

#[test]
fn duplicate_ids_keep_the_first_row() {
    let env = Env::new(Settings::default());
    std::fs::write(
        env.dir.path().join("rows.csv"),
        "id,text\na,first a\nb,only b\na,second a\n",
    )
    .unwrap();
    let p = env.pipeline(MODEL, "");
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(
        (s["rows_written"].as_u64(), s["rows_failed"].as_u64()),
        (Some(2), Some(1))
    );
    let dead = dead_letters(&env.dir.path().join("db/t_failures.jsonl"));
    assert_eq!(dead[0]["kind"], "duplicate_id");
    assert_eq!(dead[0]["row"], 4);
    assert_eq!(ids(&env.table()), vec!["a", "b"]);
}

#[test]
fn incremental_needs_a_stable_id() {
    let env = Env::new(Settings::default());
    env.data(&rows(3));
    let p = env.pipeline(MODEL, "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("id_column = \"id\"\n", "");
    std::fs::write(&p, text).unwrap();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("id_column"), "{}", out.stderr);
}

#[test]
fn plan_matches_the_calls_of_the_next_run() {
    let env = Env::new(Settings::default());
    let mut data = rows(30);
    // One row over Titan's 50,000-character limit: refused before any call, by plan and run.
    data.insert("doc-long".into(), "x".repeat(50_001));
    env.data(&data);
    let p = env.pipeline(
        "id = \"amazon.titan-embed-text-v2:0\"\ndimensions = 256\ntruncate = \"NONE\"\nrequests_per_minute = 600",
        "cleanup = \"full\"",
    );
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", p.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = output(aws_cli(env.dir.path(), &env.emu.endpoint(), &args));
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        summary(&out)
    };
    let e = plan(&[]);
    assert_eq!(env.calls(), 0, "plan made a model call");
    assert_eq!(
        (
            e["rows_read"].as_u64(),
            e["rows_to_embed"].as_u64(),
            e["rows_rejected"].as_u64()
        ),
        (Some(31), Some(30), Some(1)),
        "{e}"
    );
    let m = &e["models"][0];
    assert_eq!(m["calls"], 30);
    assert_eq!(m["calls_exact"], true);
    assert!(
        m["input_tokens"].as_u64().unwrap() > 0 && m["cost_usd"].as_f64().unwrap() > 0.0,
        "{m}"
    );
    assert!(
        (m["minutes_at_quota"].as_f64().unwrap() - 30.0 / 600.0).abs() < 1e-9,
        "{m}"
    );
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(env.calls(), 30);
    // The run's summary compares the plan's token estimate with what was billed.
    let billed = &summary(&out)["models"][0];
    assert_eq!(billed["estimated_tokens"], m["input_tokens"], "{billed}");
    assert!(billed["input_tokens"].as_u64().unwrap() > 0);

    for i in [4, 8] {
        data.insert(format!("doc-{i:03}"), format!("edited {i}"));
    }
    data.remove("doc-010");
    data.insert("doc-200".into(), "brand new".into());
    env.data(&data);
    let e = plan(&[]);
    assert_eq!(
        (
            e["rows_to_embed"].as_u64(),
            e["rows_to_skip"].as_u64(),
            e["rows_to_delete"].as_u64()
        ),
        (Some(3), Some(27), Some(1)),
        "{e}"
    );
    assert_eq!(e["models"][0]["calls"], 3);
    env.emu.reset();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(env.calls(), 3);
    assert_eq!(summary(&out)["rows_deleted"], 1);
    // `--reindex` plans every row.
    assert_eq!(plan(&["--reindex"])["models"][0]["calls"], 30);
}

#[test]
fn maintenance_compacts_and_builds_indexes_and_search_uses_them() {
    let env = Env::new(Settings::default());
    env.data(&rows(300));
    let p = env.pipeline(
        MODEL,
        "commit_rows = 100\ncompact_after_fragments = 3\nindex_after_rows = 256\n\
         vector_index = \"ivf_hnsw_sq\"\nfts_column = \"text\"",
    );
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let m = &summary(&out)["maintenance"];
    assert_eq!(m["compacted"], true, "{m}");
    let created: Vec<&str> = m["indexes_created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        created,
        vec!["vector: IVF_HNSW_SQ", "text: FTS", "id: BTREE"],
        "{m}"
    );
    let db = env.dir.path().join("db");
    assert_eq!(table_fragments(&db, "t"), 1);
    // The table itself has the indexes, covering every row.
    let indexes = table_indexes(&db, "t");
    let kinds: Vec<(&str, &str)> = indexes
        .iter()
        .map(|(c, t, _, _)| (c.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("id", "BTREE"), ("text", "FTS"), ("vector", "IVF_HNSW_SQ")],
        "{indexes:?}"
    );
    assert!(
        indexes.iter().all(|(_, _, n, un)| (*n, *un) == (300, 0)),
        "{indexes:?}"
    );
    let search = |extra: &[&str]| {
        let mut args = vec![
            "search",
            p.as_str(),
            "text number 5 about topic 5",
            "-k",
            "5",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = output(aws_cli(env.dir.path(), &env.emu.endpoint(), &args));
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        let hits: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        hits.iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(search(&[]).len(), 5);
    assert_eq!(search(&["--filter", "id = 'doc-042'"]), vec!["doc-042"]);
    let hybrid = search(&["--hybrid"]);
    assert!(
        !hybrid.is_empty() && hybrid.contains(&"doc-005".to_string()),
        "{hybrid:?}"
    );
    // A bad filter is a clear error.
    let out = output(aws_cli(
        env.dir.path(),
        &env.emu.endpoint(),
        &["search", &p, "x", "--filter", "no_such_column = 1"],
    ));
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no_such_column"), "{}", out.stderr);
    // Another run with changes folds the new rows into the indexes.
    let mut data = rows(300);
    data.insert("doc-999".into(), "a late addition".into());
    env.data(&data);
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(summary(&out)["maintenance"]["indexes_updated"], true);
    let indexes = table_indexes(&db, "t");
    assert!(
        indexes.iter().all(|(_, _, n, un)| (*n, *un) == (301, 0)),
        "no row left unindexed: {indexes:?}"
    );
    assert_eq!(search(&["--filter", "id = 'doc-999'"]), vec!["doc-999"]);
}

#[test]
fn an_open_quote_never_makes_cleanup_delete_the_rows_it_hid() {
    let env = Env::new(Settings::default());
    env.data(&rows(6));
    let p = env.pipeline(MODEL, "cleanup = \"full\"");
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(env.table().len(), 6);
    // A quote left open on the third row swallows the rest of the file: those rows are not
    // gone from the source, only unreadable, so none may be deleted.
    let csv = std::fs::read_to_string(env.dir.path().join("rows.csv")).unwrap();
    let mut lines: Vec<String> = csv.lines().map(String::from).collect();
    lines[3] = lines[3].replacen(',', ",\"", 1);
    std::fs::write(env.dir.path().join("rows.csv"), lines.join("\n") + "\n").unwrap();
    let out = env.run(&p, &[]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_deleted"], 0, "{s}");
    assert_eq!(s["failures_by_kind"]["malformed_row"], 1, "{s}");
    assert_eq!(env.table().len(), 6);
}
