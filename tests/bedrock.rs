//! Bedrock pipelines through the real CLI and the real AWS SDK, against the emulator started by
//! each test on loopback (reached through `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, signed with
//! credentials from the environment, as in production).

mod common;

use common::*;
use embedpipe::emulator::{Emulator, Faults, ModelCounters, Settings};
use std::path::Path;
use std::process::Command;

struct Env {
    rt: tokio::runtime::Runtime,
    emu: Emulator,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(settings: Settings) -> Self {
        let rt = test_runtime();
        let emu = rt
            .block_on(Emulator::start(([127, 0, 0, 1], 0).into(), settings))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        Env { rt, emu, dir }
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("db")
    }

    /// Runs the CLI with the emulator as the Bedrock endpoint.
    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = aws_cli(self.dir.path(), &self.emu.endpoint(), args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        output(cmd)
    }

    fn write(&self, name: &str, text: &str) -> String {
        write_pipeline(self.dir.path(), name, text)
    }

    /// Writes `p.toml` from a source, a model and an embed step, and runs it with `--json`.
    fn run_pipeline(&self, source: &str, model: &str, embed: &str) -> Output {
        let p = self.write("p.toml", &bedrock_pipeline(source, model, embed));
        self.run(&["run", &p, "--json"])
    }

    fn counters(&self, model: &str) -> ModelCounters {
        self.emu
            .stats()
            .models
            .get(model)
            .cloned()
            .unwrap_or_default()
    }
}

fn articles() -> String {
    format!(
        "type = \"parquet\"\npath = {:?}\n",
        sample("articles.parquet").to_string_lossy()
    )
}

fn images() -> String {
    format!(
        "type = \"images\"\npath = {:?}\n",
        sample("images").to_string_lossy()
    )
}

fn bedrock_pipeline(source: &str, model: &str, embed: &str) -> String {
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
fn tolerating_service_failures(text: String) -> String {
    text + "max_service_failures = 1000000\n"
}

fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

fn vector_dim(db: &Path) -> i32 {
    let (_, schema) = table_info(db, "t");
    match schema.field_with_name("vector").unwrap().data_type() {
        arrow_schema::DataType::FixedSizeList(_, d) => *d,
        other => panic!("{other}"),
    }
}

#[test]
fn every_text_family_end_to_end() {
    let env = Env::new(Settings::default());
    // (model table, base id for the emulator's counters, dimension, expected calls for 240 rows)
    let cases = [
        ("id = \"amazon.titan-embed-text-v1\"", "amazon.titan-embed-text-v1", 1536, 240),
        (
            "id = \"amazon.titan-embed-text-v2:0\"\ndimensions = 256",
            "amazon.titan-embed-text-v2:0",
            256,
            240,
        ),
        (
            "id = \"cohere.embed-english-v3\"\ntruncate = \"END\"",
            "cohere.embed-english-v3",
            1024,
            3,
        ),
        (
            "id = \"cohere.embed-multilingual-v3\"\ntruncate = \"END\"\nembedding_types = [\"float\"]",
            "cohere.embed-multilingual-v3",
            1024,
            3,
        ),
        (
            "id = \"us.cohere.embed-v4:0\"\ndimensions = 512\ninput_type = \"search_document\"",
            "cohere.embed-v4:0",
            512,
            3,
        ),
        (
            "id = \"amazon.nova-2-multimodal-embeddings-v1:0\"\ndimensions = 1024\npurpose = \"TEXT_RETRIEVAL\"",
            "amazon.nova-2-multimodal-embeddings-v1:0",
            1024,
            240,
        ),
        (
            "id = \"us.twelvelabs.marengo-embed-2-7-v1:0\"",
            "twelvelabs.marengo-embed-2-7-v1:0",
            1024,
            240,
        ),
        (
            "id = \"twelvelabs.marengo-embed-3-0-v1:0\"",
            "twelvelabs.marengo-embed-3-0-v1:0",
            512,
            240,
        ),
    ];
    for (model, base, dim, calls) in cases {
        let p = env.write(
            "p.toml",
            &bedrock_pipeline(
                &articles(),
                &format!("{model}\nconcurrency = 16"),
                "text = \"{title}\\n{body}\"",
            ),
        );
        let out = env.run(&["run", &p, "--json"]);
        assert_eq!(out.code, 0, "{base}: {}{}", out.stdout, out.stderr);
        let s = summary(&out);
        assert_eq!(s["rows_written"], 240, "{base}");
        assert_eq!(s["models"][0]["calls"], calls, "{base}");
        assert_eq!(s["models"][0]["inputs"], 240, "{base}");
        assert!(
            s["models"][0]["input_tokens"].as_u64().unwrap() > 240,
            "{base}"
        );
        assert!(s["models"][0]["cost_usd"].as_f64().unwrap() > 0.0, "{base}");
        let c = env.counters(base);
        assert_eq!(c.ok, calls, "{base}: {c:?}");
        assert_eq!(c.inputs, 240, "{base}");
        assert_eq!(vector_dim(&env.db()), dim, "{base}");
        // Secrets never reach output.
        assert!(!out.stdout.contains("test-secret") && !out.stderr.contains("test-secret"));
    }
    // Titan returns token counts; Nova does not, so its tokens are estimated and say so.
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v2:0\"",
            "column = \"title\"",
        ),
    );
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["models"][0]["tokens_estimated"], false);
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.nova-2-multimodal-embeddings-v1:0\"\ndimensions = 1024",
            "column = \"title\"",
        ),
    );
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["models"][0]["tokens_estimated"], true, "{s}");
    // ~4 characters a token, per title.
    let estimate: u64 = table_strings(&env.db(), "t", "title")
        .iter()
        .map(|t| (t.chars().count() as u64).div_ceil(4).max(1))
        .sum();
    assert_eq!(s["models"][0]["input_tokens"], estimate, "{s}");
}

#[test]
fn image_families_and_preflight_rejections() {
    let env = Env::new(Settings::default());
    // 24 sample images: 12 PNG, 6 JPEG, 3 GIF, 3 WebP.
    let (mut png_jpeg, mut all) = (0, 0);
    for e in walkdir(&sample("images")) {
        all += 1;
        let ext = e.extension().unwrap().to_string_lossy().to_lowercase();
        if ["png", "jpg", "jpeg"].contains(&ext.as_str()) {
            png_jpeg += 1;
        }
    }
    assert_eq!(all, 24);
    let cases = [
        // Titan multimodal takes PNG/JPEG only: GIF and WebP are dead-lettered before sending.
        (
            "id = \"amazon.titan-embed-image-v1\"\ndimensions = 384",
            "amazon.titan-embed-image-v1",
            384,
            png_jpeg,
        ),
        (
            "id = \"cohere.embed-v4:0\"\ndimensions = 256",
            "cohere.embed-v4:0",
            256,
            all,
        ),
        (
            "id = \"amazon.nova-2-multimodal-embeddings-v1:0\"\ndimensions = 384",
            "amazon.nova-2-multimodal-embeddings-v1:0",
            384,
            all,
        ),
        (
            "id = \"cohere.embed-english-v3\"",
            "cohere.embed-english-v3",
            1024,
            png_jpeg,
        ),
        (
            "id = \"twelvelabs.marengo-embed-3-0-v1:0\"",
            "twelvelabs.marengo-embed-3-0-v1:0",
            512,
            png_jpeg,
        ),
    ];
    for (model, base, dim, accepted) in cases {
        let p = env.write(
            "p.toml",
            &bedrock_pipeline(&images(), model, "image = \"bytes\""),
        );
        let before = env.counters(base).inputs;
        let out = env.run(&["run", &p, "--json"]);
        let s = summary(&out);
        assert_eq!(s["rows_written"], accepted, "{base}: {}", out.stderr);
        assert_eq!(s["rows_failed"], all - accepted, "{base}");
        assert_eq!(out.code, if accepted == all { 0 } else { 3 }, "{base}");
        assert_eq!(
            env.counters(base).inputs - before,
            accepted as u64,
            "{base}: rejected images must not be sent"
        );
        assert_eq!(s["models"][0]["images"], accepted, "{base}");
        if accepted < all {
            let dead = dead_letters(&env.db().join("t_failures.jsonl"));
            assert_eq!(dead.len(), (all - accepted) as usize);
            for d in &dead {
                assert_eq!(d["kind"], "unsupported_image_format", "{d}");
                assert!(d["message"].as_str().unwrap().contains("png, jpeg"), "{d}");
            }
        }
        assert_eq!(vector_dim(&env.db()), dim, "{base}");
    }
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A CSV with some rows over Cohere v3's 2,048 characters and one poisoned row.
fn write_csv(dir: &Path) -> String {
    let mut csv = String::from("id,text\n");
    for i in 0..50 {
        let text = match i {
            7 | 21 => "long ".repeat(600),
            33 => "this row is POISON for the model".to_string(),
            _ => format!("row number {i} about topic {}", i % 5),
        };
        csv.push_str(&format!("r{i},{text}\n"));
    }
    let p = dir.join("rows.csv");
    std::fs::write(&p, csv).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn long_inputs_are_rejected_before_sending_and_a_bad_input_is_isolated() {
    let env = Env::new(Settings {
        poison: Some("POISON".into()),
        ..Default::default()
    });
    let csv = write_csv(env.dir.path());
    let source = format!("type = \"csv\"\npath = {csv:?}\nid_column = \"id\"\n");
    // truncate = NONE (Cohere's default): over-long rows are dead-lettered, never sent.
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &source,
            "id = \"cohere.embed-english-v3\"",
            "column = \"text\"",
        ),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_written"], 47);
    assert_eq!(s["rows_failed"], 3);
    let dead = dead_letters(&env.db().join("t_failures.jsonl"));
    let by_id = |id: &str| dead.iter().find(|d| d["id"] == id).unwrap().clone();
    assert_eq!(by_id("r7")["kind"], "input_too_long");
    assert!(by_id("r7")["message"].as_str().unwrap().contains("2048"));
    assert_eq!(by_id("r21")["kind"], "input_too_long");
    // The poisoned row made its whole 48-text call fail validation; halving isolated it.
    assert_eq!(by_id("r33")["kind"], "validation");
    assert!(by_id("r33")["message"]
        .as_str()
        .unwrap()
        .contains("ValidationException"));
    let c = env.counters("cohere.embed-english-v3");
    assert_eq!(c.inputs, 47, "long rows were never sent: {c:?}");
    assert!(c.errors["ValidationException"] >= 6, "{c:?}");

    // With truncate = END they are cut to the limit and embedded.
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &source,
            "id = \"cohere.embed-english-v3\"\ntruncate = \"END\"",
            "column = \"text\"",
        ),
    );
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 49);
    assert_eq!(s["rows_failed"], 1);
}

fn fault_run(faults: Faults, extra: &str) -> (Env, Output) {
    let env = Env::new(Settings {
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

#[test]
fn each_error_class_is_mapped_from_the_sdk() {
    let cases: [(Faults, &str, &str); 5] = [
        (
            Faults {
                server_error: 1.0,
                ..Default::default()
            },
            "server_error",
            "Exception",
        ),
        (
            Faults {
                model_timeout: 1.0,
                ..Default::default()
            },
            "timeout",
            "ModelTimeoutException",
        ),
        (
            Faults {
                not_ready: 1.0,
                ..Default::default()
            },
            "model_not_ready",
            "ModelNotReadyException",
        ),
        (
            Faults {
                malformed: 1.0,
                ..Default::default()
            },
            "server_error",
            "unusable response",
        ),
        (
            Faults {
                reset: 1.0,
                ..Default::default()
            },
            "network",
            "could not be sent",
        ),
    ];
    for (faults, kind, message) in cases {
        // Two attempts per call, so retryable errors are retried once and then dead-lettered.
        let (env, out) = fault_run(faults, "max_attempts = 2\nconcurrency = 32");
        assert_eq!(out.code, 3, "{kind}: {}{}", out.stdout, out.stderr);
        let s = summary(&out);
        assert_eq!(s["rows_failed"], 240, "{kind}");
        assert_eq!(
            s["models"][0]["retries"], 240,
            "{kind}: retryable, retried once"
        );
        let dead = dead_letters(&env.db().join("t_failures.jsonl"));
        assert_eq!(dead.len(), 240);
        assert_eq!(dead[0]["kind"], kind, "{}", dead[0]);
        let m = dead[0]["message"].as_str().unwrap();
        assert!(
            m.contains(message) && m.contains("after 2 attempts"),
            "{kind}: {m}"
        );
    }
}

/// A CSV source of `n` rows `r0..` with text `row {i} about topic {i % 7}`, unless `special`
/// gives row `i` another text.
fn rows_csv(dir: &Path, n: usize, special: impl Fn(usize) -> Option<String>) -> String {
    let mut text = String::from("id,text\n");
    for i in 0..n {
        let t = special(i).unwrap_or_else(|| format!("row {i} about topic {}", i % 7));
        text.push_str(&format!("r{i},{t}\n"));
    }
    let p = dir.join(format!("rows{n}.csv"));
    std::fs::write(&p, text).unwrap();
    format!(
        "type = \"csv\"\npath = {:?}\nid_column = \"id\"\n",
        p.to_string_lossy()
    )
}

#[test]
fn throttling_is_retried_until_the_deadline_and_slows_the_sender() {
    let env = Env::new(Settings {
        faults: Faults {
            throttle: 1.0,
            ..Default::default()
        },
        ..Default::default()
    });
    let source = rows_csv(env.dir.path(), 12, |_| None);
    // Throttles do not use up max_attempts; the deadline ends them.
    let p = env.write(
        "p.toml",
        &tolerating_service_failures(bedrock_pipeline(
            &source,
            "id = \"amazon.titan-embed-text-v2:0\"\nmax_attempts = 1\nretry_deadline_secs = 0.4\nconcurrency = 8",
            "column = \"text\"",
        )),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_failed"], 12);
    let m = &s["models"][0];
    assert!(m["retries"].as_u64().unwrap() >= 12, "{m}");
    assert_eq!(m["throttled"], m["retries"].as_u64().unwrap() + 12, "{m}");
    // Sustained throttling halved the calls in flight down to one.
    assert_eq!(m["concurrency"], 8);
    assert_eq!(m["concurrency_lowest"], 1, "{m}");
    let dead = dead_letters(&env.db().join("t_failures.jsonl"));
    assert_eq!(dead[0]["kind"], "throttled", "{}", dead[0]);
    assert!(dead[0]["message"]
        .as_str()
        .unwrap()
        .contains("ThrottlingException"));
}

#[test]
fn throttles_and_server_errors_lose_no_row_with_default_settings() {
    // 30 % of calls throttled and 10 % failing with 5xx; nothing else set.
    let (env, out) = fault_run(
        Faults {
            throttle: 0.3,
            server_error: 0.1,
            ..Default::default()
        },
        "",
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_written"], 240);
    assert_eq!(s["rows_failed"], 0);
    let m = &s["models"][0];
    assert!(m["throttled"].as_u64().unwrap() > 20, "{m}");
    assert!(m["errors"]["server_error"].as_u64().unwrap() > 5, "{m}");
    let c = env.counters("amazon.titan-embed-text-v2:0");
    assert_eq!((c.ok, c.inputs), (240, 240), "{c:?}");
    assert_eq!(
        c.requests,
        240 + m["retries"].as_u64().unwrap(),
        "every retry reached the service once: {c:?}"
    );
}

#[test]
fn a_poisoned_input_in_a_full_cohere_call_is_isolated() {
    let env = Env::new(Settings {
        poison: Some("POISON".into()),
        ..Default::default()
    });
    let source = rows_csv(env.dir.path(), 96, |i| {
        (i == 61).then(|| "this one is POISON".to_string())
    });
    let out = env.run_pipeline(
        &source,
        "id = \"cohere.embed-english-v3\"",
        "column = \"text\"",
    );
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(
        (s["rows_written"].as_u64(), s["rows_failed"].as_u64()),
        (Some(95), Some(1))
    );
    let dead = dead_letters(&env.db().join("t_failures.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "r61");
    assert_eq!(dead[0]["kind"], "validation");
    assert!(
        dead[0]["message"]
            .as_str()
            .unwrap()
            .contains("ValidationException"),
        "{}",
        dead[0]
    );
    let c = env.counters("cohere.embed-english-v3");
    // One call of 96, then halves down to the single bad text: 8 refused calls (96, 48, 24,
    // 12, 6, 3, 2, 1 texts) and 7 good ones.
    assert_eq!(c.inputs, 95, "{c:?}");
    assert_eq!(c.errors["ValidationException"], 8, "{c:?}");
    assert_eq!(c.ok, 7, "{c:?}");
    let (rows, _) = table_info(&env.db(), "t");
    assert_eq!(rows, 95);
}

#[test]
fn steps_sharing_a_model_fill_the_same_calls() {
    let env = Env::new(Settings::default());
    let source = rows_csv(env.dir.path(), 48, |_| None);
    let p = env.write(
        "p.toml",
        &format!(
            r#"
[source]
{source}
[[model]]
name = "m"
provider = "bedrock"
id = "cohere.embed-english-v3"

[[embed]]
name = "text"
model = "m"
column = "text"
vector = "text_vector"

[[embed]]
name = "id"
model = "m"
text = "id {{id}}"
vector = "id_vector"

[sink]
uri = "db"
table = "t"
mode = "overwrite"
"#
        ),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(summary(&out)["rows_written"], 48);
    let c = env.counters("cohere.embed-english-v3");
    // 48 rows × 2 steps = 96 texts: one full call, not two half-empty ones.
    assert_eq!((c.requests, c.inputs), (1, 96), "{c:?}");
}

#[test]
fn a_quota_group_is_shared_by_its_models() {
    let env = Env::new(Settings::default());
    let source = rows_csv(env.dir.path(), 20, |_| None);
    // Two models, each unlimited on its own, sharing 600 requests/min (10 per second).
    let p = env.write(
        "p.toml",
        &format!(
            r#"
[source]
{source}
[[quota]]
name = "titan"
requests_per_minute = 600

[[model]]
name = "v2"
provider = "bedrock"
id = "amazon.titan-embed-text-v2:0"
quota = "titan"

[[model]]
name = "v1"
provider = "bedrock"
id = "amazon.titan-embed-text-v1"
quota = "titan"

[[embed]]
name = "a"
model = "v2"
column = "text"
vector = "a"

[[embed]]
name = "b"
model = "v1"
column = "text"
vector = "b"

[sink]
uri = "db"
table = "t"
mode = "overwrite"
"#
        ),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_written"], 20);
    assert_eq!(s["models"][0]["quota"], "titan");
    assert_eq!(s["models"][0]["limit_requests_per_minute"], 600);
    let st = env.emu.stats();
    assert_eq!(st.requests, 40);
    // Both models together: at most the group's rate plus the burst of two in any second.
    assert!(st.max_received_per_second <= 12, "{st:?}");

    // An unknown group is a config error, with the declared ones.
    let bad = std::fs::read_to_string(&p).unwrap().replace(
        "quota = \"titan\"\n\n[[model]]\nname = \"v1\"",
        "quota = \"titna\"\n\n[[model]]\nname = \"v1\"",
    );
    let p2 = env.write("bad.toml", &bad);
    let out = env.run(&["validate", &p2]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown quota group `titna`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `titan`"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_requests_per_minute_quota_holds_over_a_whole_minute() {
    use embedpipe::emulator::Quota;
    // The file allows 40 requests a minute, and so does the service: no trailing minute may
    // hold more. 50 rows take about 75 s at that pace: the run crosses a full minute.
    let env = Env::new(Settings {
        quota: Quota {
            requests_per_minute: Some(40),
            tokens_per_minute: None,
        },
        ..Default::default()
    });
    let source = rows_csv(env.dir.path(), 50, |_| None);
    let out = env.run_pipeline(
        &source,
        "id = \"amazon.titan-embed-text-v2:0\"\nrequests_per_minute = 40\nconcurrency = 16",
        "column = \"text\"",
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_written"], 50);
    assert_eq!(s["rows_failed"], 0);
    let c = env.counters("amazon.titan-embed-text-v2:0");
    assert!(c.max_received_per_minute <= 40, "{c:?}");
    assert!(c.errors.is_empty(), "never throttled: {c:?}");
    assert_eq!(c.ok, 50);
    assert_eq!(s["models"][0]["throttled"], 0);
}

#[test]
fn faults_are_retried_until_every_row_is_written() {
    let (env, out) = fault_run(
        Faults {
            throttle: 0.3,
            server_error: 0.1,
            model_timeout: 0.05,
            malformed: 0.05,
            reset: 0.05,
            ..Default::default()
        },
        // Half the attempts fail: 20 attempts make losing a row (0.5^20) practically impossible.
        "concurrency = 32\nmax_attempts = 20",
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_written"], 240);
    assert!(s["models"][0]["retries"].as_u64().unwrap() > 20, "{s}");
    assert!(s["models"][0]["throttled"].as_u64().unwrap() > 10, "{s}");
    assert_eq!(env.counters("amazon.titan-embed-text-v2:0").ok, 240);
}

#[test]
fn access_and_credential_errors_stop_the_run() {
    let env = Env::new(Settings {
        denied_models: vec!["amazon.titan-embed-text-v2:0".into()],
        access_key_id: Some(TEST_KEY.into()),
        ..Default::default()
    });
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v2:0\"",
            "column = \"title\"",
        ),
    );
    let out = env.run(&["run", &p]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("AccessDeniedException"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("bedrock:InvokeModel"), "{}", out.stderr);
    assert!(!env.db().join("t.lance").exists(), "nothing is committed");

    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v1\"",
            "column = \"title\"",
        ),
    );
    let out = env.run_with(&["run", &p], &[("AWS_ACCESS_KEY_ID", "AKIDSOMEONEELSE")]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("UnrecognizedClientException"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("credential chain"), "{}", out.stderr);
    assert!(!out.stderr.contains("test-secret"));
}

#[test]
fn missing_credentials_give_one_clear_error_not_a_wall_of_warnings() {
    let env = Env::new(Settings::default());
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v2:0\"\nconcurrency = 8",
            "column = \"title\"",
        ),
    );
    // No keys anywhere, and an instance-metadata service that answers but hands out no token
    // (the emulator stands in for it), as on a machine outside EC2 behind a proxy: the AWS
    // credential chain warns about it once per call in flight.
    let run = |args: &[&str]| {
        let mut cmd = aws_cli(env.dir.path(), &env.emu.endpoint(), args);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", env.emu.endpoint());
        output(cmd)
    };
    let out = run(&["run", &p]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("credential chain"), "{}", out.stderr);
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
    assert_eq!(env.counters("amazon.titan-embed-text-v2:0").ok, 0);

    // `-v` shows what the chain tried.
    let out = run(&["run", &p, "-v"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("Ec2InstanceMetadata"),
        "{}",
        out.stderr
    );
}

#[test]
fn model_parameters_are_checked_against_the_registry() {
    let env = Env::new(Settings::default());
    let cases = [
        (
            "id = \"amazon.titan-embed-text-v2:0\"\ndimensions = 768",
            "1024, 512, 256",
        ),
        (
            "id = \"cohere.embed-v4:0\"\ntruncate = \"END\"",
            "NONE, LEFT, RIGHT",
        ),
        (
            "id = \"cohere.embed-english-v3\"\ntruncate = \"RIGHT\"",
            "NONE, START, END",
        ),
        (
            "id = \"amazon.titan-embed-text-v2:0\"\ninput_type = \"search_query\"",
            "its parameters: truncate, embedding_types",
        ),
        (
            "id = \"twelvelabs.marengo-embed-2-7-v1:0\"",
            "us.twelvelabs.marengo-embed-2-7-v1:0",
        ),
        (
            "id = \"amazon.nova-2-multimodal-embeddings-v1:0\"\npurpose = \"INDEX\"",
            "GENERIC_INDEX",
        ),
        (
            "id = \"cohere.embed-v4:0\"\nembedding_types = [\"int8\"]",
            "cannot be stored yet",
        ),
        (
            "id = \"cohere.embed-v4:0\"\nembedding_types = [\"int4\"]",
            "float, int8, uint8, binary, ubinary",
        ),
        (
            "id = \"amazon.titan-embed-text-v2:0\"\npath = \"x\"",
            "applies only to local models",
        ),
    ];
    for (model, help) in cases {
        let p = env.write(
            "p.toml",
            &bedrock_pipeline(&articles(), model, "column = \"title\""),
        );
        let out = env.run(&["validate", &p]);
        assert_eq!(out.code, 2, "{model}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(help), "{model}: {}", out.stderr);
        assert!(out.stderr.contains("p.toml:"), "{}", out.stderr);
    }
    assert_eq!(env.emu.stats().requests, 0, "validate makes no call");
}

#[test]
fn emulator_requires_sigv4_and_the_cli_can_serve_it() {
    let env = Env::new(Settings::default());
    // An unsigned request is refused like Bedrock does.
    let status = env.rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(env.emu.addr).await.unwrap();
        let body = r#"{"inputText":"hi"}"#;
        let req = format!(
            "POST /model/amazon.titan-embed-text-v1/invoke HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        resp
    });
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert!(
        status.contains("MissingAuthenticationTokenException"),
        "{status}"
    );
    assert_eq!(env.emu.stats().unauthenticated, 1);

    // `embedpipe run --emulator` needs no AWS setup at all.
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v2:0\"",
            "column = \"title\"",
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_embedpipe"))
        .args(["run", &p, "--emulator", "--json"])
        .current_dir(env.dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hits = Command::new(env!("CARGO_BIN_EXE_embedpipe"))
        .args([
            "search",
            &p,
            "volcano eruption lava",
            "-k",
            "3",
            "--emulator",
            "--json",
        ])
        .current_dir(env.dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(
        hits.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&hits.stderr)
    );
    let hits: serde_json::Value = serde_json::from_slice(&hits.stdout).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 3);
}

#[test]
fn the_emulator_command_applies_its_flags() {
    use std::io::{BufRead, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_embedpipe"))
        .args(["emulator", "--port", "0", "--replay", "--rpm", "7"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /_emulator/config HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let cfg: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"));
    assert_eq!(cfg["replay"], true, "{cfg}");
    assert_eq!(cfg["quota"]["requests_per_minute"], 7, "{cfg}");
}

#[test]
fn emulator_quotas_throttle_and_are_counted() {
    use embedpipe::emulator::Quota;
    let env = Env::new(Settings {
        quota: Quota {
            requests_per_minute: Some(50),
            tokens_per_minute: None,
        },
        ..Default::default()
    });
    let p = env.write(
        "p.toml",
        &tolerating_service_failures(bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v2:0\"\nmax_attempts = 1\nretry_deadline_secs = 0.001\nconcurrency = 4",
            "column = \"title\"",
        )),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_written"], 50);
    assert_eq!(s["rows_failed"], 190);
    let throttled = s["models"][0]["throttled"].as_u64().unwrap();
    assert!(throttled >= 190, "{s}");
    let c = env.counters("amazon.titan-embed-text-v2:0");
    assert_eq!((c.ok, c.max_requests_per_minute), (50, 50), "{c:?}");
    assert_eq!(c.errors["ThrottlingException"], throttled);

    // A token quota: each title is a few tokens, so ~100 tokens admit a handful of calls.
    env.emu.reset();
    env.emu.set(Settings {
        quota: Quota {
            requests_per_minute: None,
            tokens_per_minute: Some(100),
        },
        ..Default::default()
    });
    let out = env.run(&["run", &p, "--json"]);
    let s = summary(&out);
    let written = s["rows_written"].as_u64().unwrap();
    assert!((5..60).contains(&written), "{written}");
    let tokens = s["models"][0]["input_tokens"].as_u64().unwrap();
    assert!(tokens <= 100, "{tokens}");
}

#[test]
fn timeouts_regions_and_price_overrides() {
    let env = Env::new(Settings {
        latency: embedpipe::emulator::Latency::Fixed { ms: 1500.0 },
        ..Default::default()
    });
    let csv = env.dir.path().join("few.csv");
    std::fs::write(&csv, "id,text\na,alpha\nb,beta\n").unwrap();
    let source = format!("type = \"csv\"\npath = {:?}\n", csv.to_string_lossy());
    let p = env.write(
        "p.toml",
        &tolerating_service_failures(bedrock_pipeline(
            &source,
            "id = \"amazon.titan-embed-text-v2:0\"\ntimeout_secs = 0.3\nmax_attempts = 1",
            "column = \"text\"",
        )),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let dead = dead_letters(&env.db().join("t_failures.jsonl"));
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["kind"], "timeout", "{}", dead[0]);

    env.emu.set(Settings::default());
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &source,
            "id = \"amazon.titan-embed-text-v2:0\"\nregion = \"eu-west-1\"\n[model.prices]\nper_1k_tokens = 1000.0",
            "column = \"text\"",
        ),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let s = summary(&out);
    // Price override: $1 per token.
    assert_eq!(
        s["models"][0]["cost_usd"].as_f64().unwrap(),
        s["models"][0]["input_tokens"].as_f64().unwrap()
    );
    let c = env.counters("amazon.titan-embed-text-v2:0");
    assert_eq!(c.regions.get("eu-west-1"), Some(&2), "{c:?}");
}

#[test]
fn text_and_image_embedded_together() {
    let env = Env::new(Settings::default());
    let source = format!("{}include = [\"**/*.png\", \"**/*.jpg\"]\n", images());
    for (model, base, dim) in [
        (
            "id = \"cohere.embed-v4:0\"\ndimensions = 256",
            "cohere.embed-v4:0",
            256,
        ),
        (
            "id = \"amazon.titan-embed-image-v1\"\ndimensions = 256",
            "amazon.titan-embed-image-v1",
            256,
        ),
        (
            "id = \"twelvelabs.marengo-embed-3-0-v1:0\"",
            "twelvelabs.marengo-embed-3-0-v1:0",
            512,
        ),
    ] {
        let p = env.write(
            "p.toml",
            &bedrock_pipeline(
                &source,
                model,
                "text = \"a photo of {path}\"\nimage = \"bytes\"",
            ),
        );
        let out = env.run(&["run", &p, "--json"]);
        assert_eq!(out.code, 0, "{base}: {}{}", out.stdout, out.stderr);
        let s = summary(&out);
        assert_eq!(s["rows_written"], 12, "{base}");
        assert_eq!(s["models"][0]["images"], 12, "{base}");
        assert_eq!(vector_dim(&env.db()), dim, "{base}");
        assert_eq!(env.counters(base).inputs, 12, "{base}");
        // The text is part of every vector: another text, same images, other vectors.
        let with_photo = table_vectors(&env.db(), "t", "vector");
        let p = env.write(
            "p.toml",
            &bedrock_pipeline(
                &source,
                model,
                "text = \"a drawing of {path}\"\nimage = \"bytes\"",
            ),
        );
        assert_eq!(env.run(&["run", &p]).code, 0, "{base}");
        let with_drawing = table_vectors(&env.db(), "t", "vector");
        assert_eq!(with_photo.len(), 12);
        for ((id, a), (_, b)) in with_photo.iter().zip(&with_drawing) {
            assert_ne!(a, b, "{base}: {id} ignores its text");
        }
    }
    // A model that cannot is refused at validate, with the ones that can.
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &source,
            "id = \"amazon.nova-2-multimodal-embeddings-v1:0\"",
            "text = \"{path}\"\nimage = \"bytes\"",
        ),
    );
    let out = env.run(&["validate", &p]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("cannot embed a text and an image together"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("cohere.embed-v4:0"), "{}", out.stderr);
}

#[test]
fn requests_per_minute_paces_the_calls() {
    let env = Env::new(Settings::default());
    let csv = env.dir.path().join("rows.csv");
    let mut text = String::from("id,text\n");
    for i in 0..30 {
        text.push_str(&format!("r{i},row {i}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let source = format!("type = \"csv\"\npath = {:?}\n", csv.to_string_lossy());
    // 600 per minute = 10 per second, with 8 calls in flight and a zero-latency service.
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &source,
            "id = \"amazon.titan-embed-text-v2:0\"\nconcurrency = 8\nrequests_per_minute = 600",
            "column = \"text\"",
        ),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let c = env.counters("amazon.titan-embed-text-v2:0");
    assert_eq!(c.ok, 30);
    // Any one-second window holds at most the rate plus the burst of two (unpaced, the 30
    // zero-latency calls of 8 in flight would all land in one).
    assert!(c.max_requests_per_second <= 12, "{c:?}");
}

#[test]
fn many_source_batches_in_flight_are_all_written_in_order() {
    let env = Env::new(Settings::default());
    let source = rows_csv(env.dir.path(), 3000, |_| None) + "batch_size = 64\n";
    // Two models, several batches of the source in flight at once, calls filled across them.
    let p = env.write(
        "p.toml",
        &format!(
            r#"
[source]
{source}
[[model]]
name = "cohere"
provider = "bedrock"
id = "cohere.embed-english-v3"
# Wait up to a second for a full call: calls are filled across the 64-row source batches.
linger_ms = 1000

[[model]]
name = "titan"
provider = "bedrock"
id = "amazon.titan-embed-text-v2:0"
dimensions = 256
concurrency = 32

[[embed]]
name = "a"
model = "cohere"
column = "text"
vector = "a"

[[embed]]
name = "b"
model = "titan"
text = "{{id}}: {{text}}"
vector = "b"

[sink]
uri = "db"
table = "t"
mode = "overwrite"
"#
        ),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(summary(&out)["rows_written"], 3000);
    let cohere = env.counters("cohere.embed-english-v3");
    assert_eq!(cohere.inputs, 3000);
    // Calls were filled across source batches of 64 rows: 31 of 96 and the tail (one more
    // at most, should a linger end between two batches), not one call per batch (47).
    assert!(cohere.requests <= 33, "{cohere:?}");
    assert_eq!(env.counters("amazon.titan-embed-text-v2:0").inputs, 3000);
    let ids = table_strings(&env.db(), "t", "id");
    let expected: Vec<String> = (0..3000).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, expected, "rows are written in source order");
}

#[test]
fn corrupt_and_giant_images_are_refused_before_sending() {
    let env = Env::new(Settings::default());
    let imgs = env.dir.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let png = std::fs::read(sample("images/landscapes/sky-1.png")).unwrap();
    let jpeg = std::fs::read(sample("images/landscapes/desert-1.jpg")).unwrap();
    std::fs::write(imgs.join("good.png"), &png).unwrap();
    std::fs::write(imgs.join("good.jpg"), &jpeg).unwrap();
    // Headers intact, image data cut short.
    std::fs::write(imgs.join("cut.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(imgs.join("cut.jpg"), &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let mut garbage = png[..33].to_vec();
    garbage.extend_from_slice(&[0xAB; 512]);
    std::fs::write(imgs.join("garbage.png"), &garbage).unwrap();
    // A header declaring 60000×60000 pixels.
    let mut giant = png.clone();
    giant[16..20].copy_from_slice(&60000u32.to_be_bytes());
    giant[20..24].copy_from_slice(&60000u32.to_be_bytes());
    std::fs::write(imgs.join("giant.png"), &giant).unwrap();
    let source = format!("type = \"images\"\npath = {:?}\n", imgs.to_string_lossy());
    for (model, base) in [
        (
            "id = \"amazon.nova-2-multimodal-embeddings-v1:0\"\ndimensions = 384",
            "amazon.nova-2-multimodal-embeddings-v1:0",
        ),
        (
            "id = \"cohere.embed-v4:0\"\ndimensions = 256",
            "cohere.embed-v4:0",
        ),
    ] {
        let before = env.counters(base).inputs;
        let out = env.run_pipeline(&source, model, "image = \"bytes\"");
        let s = summary(&out);
        assert_eq!(out.code, 3, "{base}: {}", out.stderr);
        assert_eq!(s["rows_written"], 2, "{base}");
        assert_eq!(s["rows_failed"], 4, "{base}");
        assert_eq!(s["models"][0]["rejected_inputs"], 4, "{base}");
        assert_eq!(
            env.counters(base).inputs - before,
            2,
            "{base}: refused images must not be sent"
        );
        let dead = dead_letters(&env.db().join("t_failures.jsonl"));
        let kind = |id: &str| {
            dead.iter()
                .find(|d| d["id"] == id)
                .unwrap_or_else(|| panic!("{base}: {id} not dead-lettered: {dead:?}"))["kind"]
                .clone()
        };
        for id in ["cut.png", "cut.jpg", "garbage.png"] {
            assert_eq!(kind(id), "unreadable_image", "{base}: {id}");
        }
        assert_eq!(kind("giant.png"), "image_too_large", "{base}");
    }
}
