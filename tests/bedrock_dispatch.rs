//! How Bedrock calls are dispatched, through the real CLI and the real AWS SDK against the
//! emulator started by each test on loopback: filling calls (across embed steps and source
//! batches, halving a refused call to isolate a bad input), quotas and requests-per-minute
//! pacing, throttling and the concurrency it lowers, and retries of faults until every row is
//! written or the deadline ends them.

mod common;

use common::*;
use common::{json_summary as summary, EmuEnv as Env};
use embedpipe_emulator::{Faults, Settings};
use std::path::Path;

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
    use embedpipe_emulator::Quota;
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
fn emulator_quotas_throttle_and_are_counted() {
    use embedpipe_emulator::Quota;
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
