//! OpenAI-compatible servers (`provider = "openai"`) from the command line, against the
//! emulator's `POST /v1/embeddings` on loopback: float and base64 answers, calls filled up to
//! `batch_size`, `Retry-After` honoured, 503 bursts, a poisoned input isolated, answers of the
//! wrong size or binary answers refused before anything is written, the server's rate-limit
//! headers slowing the sender, and the key kept out of every output.

mod common;

use common::EmuEnv as Env;
use common::*;
use embedpipe_emulator::{Faults, Quota, Settings};

const MODEL: &str = "text-embedding-3-small";

/// A pipeline over the articles' titles with one OpenAI-compatible model (`model`: the rest of
/// its table) served by `env`'s emulator.
fn openai_pipeline(env: &Env, model: &str, sink_extra: &str) -> String {
    format!(
        r#"
[source]
{}

[[model]]
name = "m"
provider = "openai"
base_url = "{}/v1"
{model}

[[embed]]
model = "m"
column = "title"

[sink]
uri = "db"
table = "t"
mode = "overwrite"
{sink_extra}
"#,
        articles(),
        env.emu.endpoint()
    )
}

fn run_openai(env: &Env, model: &str) -> Output {
    let p = env.write("p.toml", &openai_pipeline(env, model, ""));
    env.run(&["run", &p, "--json"])
}

/// The articles' titles by id.
fn titles(env: &Env) -> Vec<(String, String)> {
    let _ = env;
    let mut rows: Vec<(String, String)> = table_rows_of_parquet(&sample("articles.parquet"));
    rows.sort();
    rows
}

/// (id, title) of every row of a Parquet file.
fn table_rows_of_parquet(path: &std::path::Path) -> Vec<(String, String)> {
    use arrow::array::{Array, StringArray};
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let col = |name: &str| {
            let c = b.column_by_name(name).unwrap();
            let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap();
            let s = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..s.len())
                .map(|i| s.value(i).to_string())
                .collect::<Vec<_>>()
        };
        out.extend(col("id").into_iter().zip(col("title")));
    }
    out
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-6, "{what}: off by {worst}");
}

#[test]
fn float_and_base64_answers_give_the_servers_vectors_in_input_order() {
    // The emulator answers `data` in reverse order (each entry keeps its `index`).
    let env = Env::new(Settings {
        openai_shuffle: true,
        ..Default::default()
    });
    let expected: Vec<(String, Vec<f32>)> = titles(&env)
        .into_iter()
        .map(|(id, title)| {
            (
                id,
                embedpipe_emulator::vectors::text(MODEL, &title, 256, true),
            )
        })
        .collect();
    for format in ["float", "base64"] {
        env.emu.reset();
        let out = run_openai(
            &env,
            &format!("model = \"{MODEL}\"\ndimensions = 256\nencoding_format = \"{format}\""),
        );
        assert_eq!(out.code, 0, "{format}: {}{}", out.stdout, out.stderr);
        let got = table_vectors(&env.db(), "t", "vector");
        assert_eq!(got.len(), 240, "{format}");
        for ((id, v), (eid, ev)) in got.iter().zip(&expected) {
            assert_eq!(id, eid);
            assert_close(v, ev, &format!("{format} row {id}"));
        }
        let stats = env.emu.stats().openai;
        assert_eq!(
            stats.encoding_formats.get(format),
            Some(&stats.ok),
            "{stats:?}"
        );
        assert_eq!(
            stats.dimensions_sent.get("256"),
            Some(&stats.ok),
            "{stats:?}"
        );
        // The usage the server reported is what the summary bills.
        let s = json_summary(&out);
        let m = &s["models"][0];
        assert_eq!(m["input_tokens"], stats.tokens, "{m}");
        assert_eq!(m["tokens_estimated"], false, "{m}");
        assert_eq!(m["model_id"], MODEL, "{m}");
    }
    // `search` embeds the query through the same server.
    let p = env.write(
        "p.toml",
        &openai_pipeline(&env, &format!("model = \"{MODEL}\"\ndimensions = 256"), ""),
    );
    let (id, title) = titles(&env).swap_remove(7);
    let out = env.run(&["search", &p, &title, "--json", "-k", "1"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&format!("\"{id}\"")), "{}", out.stdout);
}

#[test]
fn calls_are_filled_up_to_batch_size() {
    let env = Env::new(Settings::default());
    let out = run_openai(
        &env,
        &format!("model = \"{MODEL}\"\ndimensions = 64\nbatch_size = 16"),
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let stats = env.emu.stats().openai;
    // 240 titles in one source batch: fifteen full calls.
    assert_eq!(stats.inputs_per_request.get(&16), Some(&15), "{stats:?}");
    assert_eq!(stats.requests, 15, "{stats:?}");
    assert_eq!(json_summary(&out)["models"][0]["calls"], 15);
}

#[test]
fn retry_after_is_honoured() {
    let env = Env::new(Settings {
        faults: Faults {
            throttle: 0.3,
            ..Default::default()
        },
        openai_retry_after_secs: Some(1.0),
        ..Default::default()
    });
    let out = run_openai(
        &env,
        &format!("model = \"{MODEL}\"\ndimensions = 64\nbatch_size = 8"),
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(table_vectors(&env.db(), "t", "vector").len(), 240);
    let stats = env.emu.stats().openai;
    assert!(stats.retry_after_sent > 0, "{stats:?}");
    assert!(!stats.retry_gaps_ms.is_empty(), "{stats:?}");
    // Backoff alone would retry within a few hundred milliseconds.
    let shortest = *stats.retry_gaps_ms.iter().min().unwrap();
    assert!(
        shortest >= 1000,
        "a retry came {shortest} ms after its refusal"
    );
    let s = json_summary(&out);
    assert!(s["models"][0]["throttled"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn bursts_of_busy_and_failing_answers_lose_no_row() {
    let env = Env::new(Settings {
        faults: Faults {
            server_error: 0.3,
            not_ready: 0.1,
            model_timeout: 0.05,
            reset: 0.05,
            malformed: 0.05,
            ..Default::default()
        },
        ..Default::default()
    });
    let out = run_openai(
        &env,
        &format!("model = \"{MODEL}\"\ndimensions = 64\nbatch_size = 4\nmax_attempts = 30"),
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let s = json_summary(&out);
    assert_eq!(s["rows_written"], 240, "{s}");
    assert_eq!(s["rows_failed"], 0, "{s}");
    let stats = env.emu.stats().openai;
    assert!(
        stats.errors.contains_key("server_busy") && stats.errors.contains_key("server_error"),
        "{stats:?}"
    );
    assert_eq!(table_vectors(&env.db(), "t", "vector").len(), 240);
}

#[test]
fn a_poisoned_input_is_isolated_and_dead_lettered() {
    // A title no other title holds.
    let all = titles(&Env::new(Settings::default()));
    let (id, title) = all
        .iter()
        .find(|(_, t)| all.iter().filter(|(_, o)| o.contains(t.as_str())).count() == 1)
        .cloned()
        .unwrap();
    let env = Env::new(Settings {
        poison: Some(title.clone()),
        ..Default::default()
    });
    let out = run_openai(
        &env,
        &format!("model = \"{MODEL}\"\ndimensions = 64\nbatch_size = 32"),
    );
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let s = json_summary(&out);
    assert_eq!(s["rows_written"], 239, "{s}");
    assert_eq!(s["rows_failed"], 1, "{s}");
    let dead = dead_letters(&env.db().join("t_failures.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], id.as_str(), "{dead:?}");
    assert_eq!(dead[0]["kind"], "validation", "{dead:?}");
    assert!(
        dead[0]["message"].as_str().unwrap().contains("400"),
        "{dead:?}"
    );
    // Halving isolated it: the other inputs of its call were sent again without it.
    assert!(env.emu.stats().openai.errors["invalid_request"] >= 2);
}

#[test]
fn vectors_of_another_size_stop_the_run_before_anything_is_written() {
    let env = Env::new(Settings::default());
    // nomic-embed-text gives 768 values; the file says 1024 and does not send `dimensions`.
    let out = run_openai(
        &env,
        "model = \"nomic-embed-text\"\ndimensions = 1024\nsend_dimensions = false",
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("768-dimensional") && out.stderr.contains("expects 1024"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("set `dimensions`"), "{}", out.stderr);
    assert!(!env.db().join("t.lance").exists(), "nothing is committed");
    // Sending `dimensions` to a server that refuses it for this model: one error that says what
    // to set, not every row dead-lettered.
    let out = run_openai(&env, "model = \"nomic-embed-text\"\ndimensions = 512");
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("matryoshka") && out.stderr.contains("send_dimensions = false"),
        "{}",
        out.stderr
    );
    assert!(!env.db().join("t.lance").exists(), "nothing is committed");
}

#[test]
fn binary_answers_to_a_base64_request_are_refused() {
    let env = Env::new(Settings::default());
    let out = run_openai(
        &env,
        "model = \"bedrock/amazon.titan-embed-text-v2:0\"\ndimensions = 1024\nencoding_format = \"base64\"",
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("binary vectors") && out.stderr.contains("encoding_format = \"float\""),
        "{}",
        out.stderr
    );
    assert!(!env.db().join("t.lance").exists(), "nothing is committed");
    // The same route with floats works.
    let out = run_openai(
        &env,
        "model = \"bedrock/amazon.titan-embed-text-v2:0\"\ndimensions = 1024\nencoding_format = \"float\"",
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[test]
fn the_servers_rate_limit_headers_slow_the_sender_before_it_is_refused() {
    // 20 requests per 2-second window, announced in x-ratelimit-* headers; the pipeline sets
    // no limits of its own.
    let env = Env::new(Settings {
        quota: Quota {
            requests_per_minute: Some(20),
            tokens_per_minute: None,
        },
        quota_window_ms: Some(2000),
        ..Default::default()
    });
    let out = run_openai(
        &env,
        &format!("model = \"{MODEL}\"\ndimensions = 64\nbatch_size = 4\nconcurrency = 8"),
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(table_vectors(&env.db(), "t", "vector").len(), 240);
    let stats = env.emu.stats().openai;
    let refused = stats
        .errors
        .get("rate_limit_exceeded")
        .copied()
        .unwrap_or(0);
    // 60 calls through 20 a window: without pacing ~200 calls are refused (measured); paced,
    // none or a few where a window turns.
    assert_eq!(stats.ok, 60, "{stats:?}");
    assert!(refused <= 6, "{refused} calls were refused: {stats:?}");
    let s = json_summary(&out);
    let budget = &s["models"][0]["server_budget"];
    assert!(budget["pauses"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(budget["limit_requests"], 20, "{s}");
}

#[test]
fn the_key_comes_from_the_environment_and_never_shows() {
    const KEY: &str = "sk-embedpipe-test-0123456789abcdefSECRET";
    const HEADER_VALUE: &str = "gateway-secret-value-42";
    let env = Env::new(Settings {
        openai_api_key: Some(KEY.into()),
        openai_echo_header: Some("x-gateway-key".into()),
        poison: Some("Andromeda".into()),
        ..Default::default()
    });
    let model = format!(
        "model = \"{MODEL}\"\ndimensions = 64\napi_key_env = \"EMBEDPIPE_TEST_OPENAI_KEY\"\nheaders_env = {{ \"x-gateway-key\" = \"EMBEDPIPE_TEST_GATEWAY\" }}"
    );
    let p = env.write("p.toml", &openai_pipeline(&env, &model, ""));
    let keys = [
        ("EMBEDPIPE_TEST_OPENAI_KEY", KEY),
        ("EMBEDPIPE_TEST_GATEWAY", HEADER_VALUE),
        ("RUST_LOG", "debug"),
    ];
    let out = env.run_with(&["run", &p, "--json", "-v"], &keys);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let stats = env.emu.stats().openai;
    assert!(
        stats.ok > 0 && !stats.errors.contains_key("invalid_api_key"),
        "{stats:?}"
    );
    assert!(
        stats.echoed_header_values.iter().all(|v| v == HEADER_VALUE)
            && !stats.echoed_header_values.is_empty(),
        "{stats:?}"
    );
    // Nowhere: stdout, stderr, dead letters, the table's files (metadata, run log).
    let mut seen = vec![out.stdout.clone(), out.stderr.clone()];
    assert!(!dead_letters(&env.db().join("t_failures.jsonl")).is_empty());
    for entry in walk(&env.db()) {
        seen.push(String::from_utf8_lossy(&std::fs::read(entry).unwrap()).into_owned());
    }
    for text in &seen {
        assert!(!text.contains(KEY) && !text.contains(HEADER_VALUE));
    }
    let out = env.run_with(&["plan", &p, "--json"], &keys);
    assert!(!out.stdout.contains(KEY) && !out.stderr.contains(KEY));

    // A wrong key: one clear error that names the variable, without the key.
    env.emu.reset();
    let wrong = "sk-wrong-key-abcdefghijklmnopqrstuvwxyz";
    let out = env.run_with(
        &["run", &p],
        &[
            ("EMBEDPIPE_TEST_OPENAI_KEY", wrong),
            ("EMBEDPIPE_TEST_GATEWAY", HEADER_VALUE),
        ],
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert!(out.stderr.contains("api_key_env"), "{}", out.stderr);
    assert!(!out.stderr.contains(wrong) && !out.stdout.contains(wrong));

    // No key at all: stopped before any request, naming the variable.
    env.emu.reset();
    let out = env.run_with(&["run", &p], &[("EMBEDPIPE_TEST_GATEWAY", HEADER_VALUE)]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("EMBEDPIPE_TEST_OPENAI_KEY"),
        "{}",
        out.stderr
    );
    assert_eq!(env.emu.stats().openai.requests, 0);
}

#[test]
fn the_example_pipeline_runs_against_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_embedpipe"));
    cmd.args([
        "run",
        repo()
            .join("pipelines/openai_compatible.toml")
            .to_str()
            .unwrap(),
        "--emulator",
        "--json",
    ])
    .current_dir(dir.path())
    .env("EMBEDPIPE_DB", dir.path().join("db"))
    .env_remove("OPENAI_API_KEY")
    .env_remove("OPENAI_BASE_URL");
    let out = output(cmd);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let s = json_summary(&out);
    assert_eq!(s["rows_written"], 240, "{s}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
