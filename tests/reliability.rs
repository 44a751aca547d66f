//! No fault may lose or corrupt an index: outages, empty sources, odd sink settings, signals —
//! the real CLI against the Bedrock emulator on loopback, and real LanceDB tables.

mod common;

use common::*;
use embedpipe_emulator::{Faults, Latency, Settings};

const TITAN: &str = "amazon.titan-embed-text-v2:0";

/// `rows.csv` with ids `r0..` and a text each.
fn write_rows(env: &EmuEnv, n: usize) {
    let mut csv = String::from("id,text\n");
    for i in 0..n {
        csv.push_str(&format!("r{i},row {i} about topic {}\n", i % 7));
    }
    std::fs::write(env.path().join("rows.csv"), csv).unwrap();
}

/// A Titan v2 pipeline over `rows.csv`; `model` and `sink` add keys to those tables.
fn pipeline(env: &EmuEnv, model: &str, sink: &str) -> String {
    env.write(
        "p.toml",
        &format!(
            r#"
[source]
type = "csv"
path = "rows.csv"
id_column = "id"
batch_size = 8

[[model]]
name = "m"
provider = "bedrock"
id = "{TITAN}"
{model}

[[embed]]
model = "m"
column = "text"

[sink]
uri = "db"
table = "t"
{sink}
"#
        ),
    )
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn rows_in(env: &EmuEnv) -> usize {
    table_info(&env.db(), "t").0
}

#[test]
fn an_outage_never_empties_the_table() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 20);
    let p = pipeline(&env, "max_attempts = 2", "mode = \"overwrite\"");
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(rows_in(&env), 20);
    let failures = env.db().join("t_failures.jsonl");

    // The endpoint is down: every call fails with a network error. Nothing is committed.
    let down = format!(
        "max_attempts = 2\nendpoint_url = \"http://127.0.0.1:{}\"",
        closed_port()
    );
    let p = pipeline(&env, &down, "mode = \"overwrite\"");
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("because of the service"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("network"), "{}", out.stderr);
    assert!(
        out.stderr.contains("max_service_failures"),
        "{}",
        out.stderr
    );
    let s = json_summary(&out);
    assert_eq!(s["status"], "failed");
    assert_eq!(s["rows_committed"], 0);
    assert_eq!(rows_in(&env), 20, "the table keeps its rows");
    assert!(
        !failures.exists(),
        "no failures file for a run that did not commit"
    );

    // Allowing service failures commits the rest (here: nothing, but it says so).
    let p = pipeline(
        &env,
        &down,
        "mode = \"overwrite\"\nmax_service_failures = 1000\n",
    );
    let out = env.run(&["run", &p, "--json", "--allow-empty"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert_eq!(json_summary(&out)["failures_by_kind"]["network"], 20);
    assert_eq!(rows_in(&env), 0);
}

#[test]
fn a_partial_outage_stops_the_run_and_reports_what_it_paid_for() {
    // Every call after the first few fails with 5xx: the run stops, says what it did.
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 40);
    let p = pipeline(
        &env,
        "max_attempts = 1\nconcurrency = 1",
        "mode = \"overwrite\"",
    );
    env.emu.set(Settings {
        faults: Faults {
            server_error: 0.5,
            ..Default::default()
        },
        ..Default::default()
    });
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let s = json_summary(&out);
    assert_eq!(s["status"], "failed");
    assert!(s["error"].as_str().unwrap().contains("server_error"), "{s}");
    let calls = s["models"][0]["calls"].as_u64().unwrap();
    assert!(calls > 0, "paid calls are reported: {s}");
    // Calls still in flight when it stopped may be answered after the summary was made.
    assert!(calls <= env.ok_calls(TITAN), "{s}");
    assert!(s["models"][0]["cost_usd"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["rows_read"].as_u64().unwrap() > 0, "{s}");
    // The run log has it too.
    let out = env.run(&["runs", &p, "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let last = runs.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(last["calls"].as_u64().unwrap(), calls, "{last}");
    assert_eq!(last["rows_written"], 0, "{last}");
}

#[test]
fn an_empty_source_does_not_replace_a_table_unless_asked() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 5);
    let p = pipeline(&env, "", "mode = \"overwrite\"");
    assert_eq!(env.run(&["run", &p]).code, 0);
    assert_eq!(rows_in(&env), 5);
    std::fs::write(env.path().join("rows.csv"), "id,text\n").unwrap();
    let out = env.run(&["run", &p]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("--allow-empty"), "{}", out.stderr);
    assert_eq!(rows_in(&env), 5);
    let out = env.run(&["run", &p, "--allow-empty"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(rows_in(&env), 0);
}

#[test]
fn the_failures_file_belongs_to_the_committed_version() {
    let env = EmuEnv::new(Settings {
        poison: Some("POISON".into()),
        ..Default::default()
    });
    // One row the model refuses: a committed run with one dead letter.
    let mut csv = String::from("id,text\n");
    for i in 0..10 {
        csv.push_str(&format!(
            "r{i},{}\n",
            if i == 3 { "POISON" } else { "fine" }
        ));
    }
    std::fs::write(env.path().join("rows.csv"), csv).unwrap();
    let p = pipeline(&env, "max_attempts = 1", "mode = \"overwrite\"");
    let out = env.run(&["run", &p]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let failures = env.db().join("t_failures.jsonl");
    let committed = std::fs::read_to_string(&failures).unwrap();
    assert_eq!(dead_letters(&failures).len(), 1);

    // A run that fails (the endpoint is down) leaves that file as it was.
    let down = format!(
        "max_attempts = 1\nendpoint_url = \"http://127.0.0.1:{}\"",
        closed_port()
    );
    let p = pipeline(&env, &down, "mode = \"overwrite\"");
    assert_eq!(env.run(&["run", &p]).code, 1);
    assert_eq!(std::fs::read_to_string(&failures).unwrap(), committed);
    assert_eq!(rows_in(&env), 9);
}

#[test]
fn the_failures_file_may_not_overwrite_a_source_or_a_foreign_file() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 3);
    let csv_before = std::fs::read_to_string(env.path().join("rows.csv")).unwrap();
    for (target, says) in [
        ("rows.csv", "is the source"),
        ("notes.txt", "not an embedpipe failures file"),
    ] {
        std::fs::write(env.path().join("notes.txt"), "my notes\n").unwrap();
        let p = pipeline(&env, "", &format!("failures = \"{target}\""));
        for cmd in ["validate", "run"] {
            let out = env.run(&[cmd, &p]);
            assert_eq!(out.code, 2, "{cmd} {target}: {}{}", out.stdout, out.stderr);
            assert!(out.stderr.contains(says), "{}", out.stderr);
            assert!(
                out.stderr.contains("p.toml:"),
                "names the file: {}",
                out.stderr
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(env.path().join("rows.csv")).unwrap(),
        csv_before
    );
    assert_eq!(
        std::fs::read_to_string(env.path().join("notes.txt")).unwrap(),
        "my notes\n"
    );
}

#[test]
fn appending_the_same_ids_again_dead_letters_them_before_any_call() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 6);
    let p = pipeline(&env, "", "mode = \"append\"");
    assert_eq!(env.run(&["run", &p]).code, 0);
    env.emu.reset();
    let mut csv = std::fs::read_to_string(env.path().join("rows.csv")).unwrap();
    csv.push_str("new1,a new row\nnew1,the same id again\n");
    std::fs::write(env.path().join("rows.csv"), csv).unwrap();
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let s = json_summary(&out);
    assert_eq!(s["rows_written"], 1, "{s}");
    assert_eq!(s["failures_by_kind"]["duplicate_id"], 7, "{s}");
    // Neither the six known ids nor the repeated new one were sent.
    assert_eq!(env.ok_calls(TITAN), 1);
    let mut ids = table_strings(&env.db(), "t", "id");
    ids.sort();
    assert_eq!(ids, ["new1", "r0", "r1", "r2", "r3", "r4", "r5"]);
}

#[test]
fn sigterm_stops_a_run_like_ctrl_c_and_it_is_recorded() {
    let env = EmuEnv::new(Settings {
        latency: Latency::Fixed { ms: 20.0 },
        ..Default::default()
    });
    write_rows(&env, 200);
    let p = pipeline(
        &env,
        "concurrency = 1",
        "mode = \"incremental\"\ncommit_rows = 10",
    );
    let child = env
        .cli(&["run", &p, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Past two commits, well before the end.
    wait_for(60, "25 calls", || env.ok_calls(TITAN) >= 25);
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(out.code, 143, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("SIGTERM"), "{}", out.stderr);
    let s = json_summary(&out);
    assert_eq!(s["status"], "interrupted");
    let committed = s["rows_committed"].as_u64().unwrap();
    assert!(committed >= 10, "{s}");
    assert!(
        !out.stderr.contains("nothing was committed"),
        "{}",
        out.stderr
    );
    assert_eq!(rows_in(&env) as u64, committed);
    let out = env.run(&["runs", &p, "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let last = runs.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "interrupted", "{last}");
    assert_eq!(
        last["rows_written"].as_u64().unwrap(),
        committed,
        "{last} {s}"
    );
    // Calls answered while the signal came may be missing from the summary, never others.
    assert_eq!(last["calls"], s["models"][0]["calls"], "{last}");
    assert!(last["calls"].as_u64().unwrap() >= 16, "{last}");
}

#[test]
fn a_run_log_name_can_never_be_a_users_table() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 3);
    let p = pipeline(&env, "", "mode = \"overwrite\"");
    assert_eq!(env.run(&["run", &p]).code, 0);
    let clash = env.write(
        "clash.toml",
        &std::fs::read_to_string(&p)
            .unwrap()
            .replace("table = \"t\"", "table = \"t_runs\""),
    );
    let out = env.run(&["run", &clash]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("reserved"), "{}", out.stderr);
    let out = env.run(&["runs", &p, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1);
}

#[test]
fn validate_refuses_what_run_would_refuse() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 3);
    // A folder whose mode bits say writable but that nobody can write in, root included.
    let text = std::fs::read_to_string(pipeline(&env, "", ""))
        .unwrap()
        .replace("uri = \"db\"", "uri = \"/sys/kernel/embedpipe-db\"");
    let p = env.write("ro.toml", &text);
    let out = env.run(&["validate", &p]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("cannot be written"), "{}", out.stderr);

    // A vector column landing on a copied source column: named with line and column.
    let text = std::fs::read_to_string(pipeline(&env, "", ""))
        .unwrap()
        .replace("column = \"text\"", "column = \"text\"\nvector = \"text\"");
    let p = env.write("collide.toml", &text);
    let out = env.run(&["validate", &p]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    let line = text[..text.find("vector = ").unwrap()]
        .matches('\n')
        .count()
        + 1;
    assert!(
        out.stderr.contains(&format!("collide.toml:{line}:")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("copied into the table as metadata"),
        "{}",
        out.stderr
    );
}

#[test]
fn search_refuses_bad_arguments_with_exit_2_and_no_internals() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 4);
    let p = pipeline(&env, "", "mode = \"overwrite\"");
    // No table yet.
    let out = env.run(&["search", &p, "topic"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    assert!(!out.stderr.contains(".rs:"), "{}", out.stderr);
    assert!(!out.stderr.contains(".cargo"), "{}", out.stderr);
    assert_eq!(env.run(&["run", &p]).code, 0);
    for args in [
        vec!["search", &p, "topic", "-k", "0"],
        vec!["search", &p, "   "],
        vec!["search", &p, "topic", "--filter", "id = 'r1'; DROP TABLE t"],
    ] {
        let out = env.run(&args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
    }
    let out = env.run(&[
        "search",
        &p,
        "topic",
        "--filter",
        "id = 'r1;x' OR id = 'r2'",
        "--json",
    ]);
    assert_eq!(out.code, 0, "a `;` inside a string is data: {}", out.stderr);
    let hits: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 1);
}

#[test]
fn the_access_key_id_stays_out_of_trace_logs() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 2);
    let p = pipeline(&env, "", "mode = \"overwrite\"");
    // Every crate at trace level: the SDK logs the credentials it resolved.
    let mut cmd = env.cli(&["run", &p, "-vv"]);
    cmd.env("EMBEDPIPE_LOG", "trace");
    let out = output(cmd);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("access_key_id"),
        "the SDK's credential lines were logged"
    );
    assert!(!out.stderr.contains(TEST_KEY));
    assert!(!out.stderr.contains(TEST_SECRET));
}

/// The hash stored next to each vector decides whether an incremental run re-embeds (and
/// re-bills) a row: a silent change to it would re-embed every row of every table.
#[test]
fn the_stored_content_hash_is_pinned() {
    let env = EmuEnv::new(Settings::default());
    write_rows(&env, 2);
    let p = pipeline(&env, "dimensions = 256", "mode = \"overwrite\"");
    assert_eq!(env.run(&["run", &p]).code, 0);
    let ids = table_strings(&env.db(), "t", "id");
    let hashes = table_strings(&env.db(), "t", "vector_hash");
    let mut rows: Vec<(String, String)> = ids.into_iter().zip(hashes).collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (
                "r0".to_string(),
                "eaf1dd224c3fcdda1de5a768d724ef6a".to_string()
            ),
            (
                "r1".to_string(),
                "4a5aa99e08dcd64564aa0f14ca301481".to_string()
            )
        ]
    );
}

#[test]
fn a_tokens_per_minute_quota_holds_over_a_whole_minute() {
    let env = EmuEnv::new(Settings::default());
    // 26 rows of 60 words: more tokens than the quota lets through in one minute, so the run
    // crosses a minute; the emulator counts the tokens it received in every trailing minute.
    let mut csv = String::from("id,text\n");
    for i in 0..26 {
        csv.push_str(&format!("r{i},{}\n", vec![format!("w{i}"); 60].join(" ")));
    }
    std::fs::write(env.path().join("rows.csv"), csv).unwrap();
    let p = pipeline(
        &env,
        "tokens_per_minute = 1200\nconcurrency = 4",
        "mode = \"overwrite\"",
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let c = env.emu.stats().models[TITAN].clone();
    assert_eq!(c.ok, 26, "{c:?}");
    assert!(c.tokens > 1200, "the quota mattered: {c:?}");
    assert!(c.max_tokens_per_minute <= 1200, "{c:?}");
    assert!(c.errors.is_empty(), "{c:?}");
}
