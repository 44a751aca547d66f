//! RAG chunking (`[chunk]`): one row per chunk with its place in the document, incremental runs
//! that re-embed only changed chunks (reusing the vectors of chunks that merely moved), stale
//! and deleted chunks removed, `plan` counting chunks, Cohere batches filled with chunks, and
//! retrieval of a fact from the end of a long document — the real CLI against the Bedrock
//! emulator (Titan v2 takes one input per call, so calls count chunks) and the local model.

mod common;

use common::*;
use embedpipe_emulator::Settings;
use std::collections::BTreeMap;

const TITAN: &str = "amazon.titan-embed-text-v2:0";
const COHERE: &str = "cohere.embed-english-v3";

/// A long document: `n` numbered paragraphs of distinct sentences (the seed makes documents
/// differ).
fn document(seed: &str, n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "harbor", "lantern", "sensor", "mast", "battery", "wind", "rain", "gauge", "solar",
        "panel", "logger", "cable", "station", "field", "winter", "bearing", "shield", "signal",
    ];
    (0..n)
        .map(|i| {
            let sentences: Vec<String> = (0..3)
                .map(|s| {
                    let words: Vec<&str> = (0..9)
                        .map(|w| WORDS[(i * 7 + s * 5 + w * 3 + seed.len()) % WORDS.len()])
                        .collect();
                    format!("{seed} paragraph {i} sentence {s} {}.", words.join(" "))
                })
                .collect();
            sentences.join(" ")
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

struct Rag {
    env: EmuEnv,
}

impl Rag {
    fn new() -> Self {
        Self::with(Settings::default())
    }

    fn with(settings: Settings) -> Self {
        Self {
            env: EmuEnv::new(settings),
        }
    }

    /// Writes `docs.csv` (id, title, body) with paragraphs joined by blank lines.
    fn data(&self, docs: &BTreeMap<&str, Vec<String>>) {
        let mut csv = String::from("id,title,body\n");
        for (id, paragraphs) in docs {
            csv.push_str(&format!(
                "{id},{},{}\n",
                csv_field(&format!("Title of {id}")),
                csv_field(&paragraphs.join("\n\n"))
            ));
        }
        std::fs::write(self.env.path().join("docs.csv"), csv).unwrap();
    }

    /// `chunk`: the `[chunk]` table's keys besides `input = "body"` (unless it sets `input`).
    fn pipeline(&self, model: &str, chunk: &str, sink: &str) -> String {
        let chunk = match chunk.contains("input") {
            true => chunk.to_string(),
            false => format!("input = \"body\"\n{chunk}"),
        };
        self.env.write(
            "p.toml",
            &format!(
                r#"
[source]
type = "csv"
path = "docs.csv"
id_column = "id"
batch_size = 4

[chunk]
{chunk}

[[model]]
name = "m"
provider = "bedrock"
id = "{model}"

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

    fn run(&self, p: &str) -> serde_json::Value {
        let out = self.env.run(&["run", p, "--json"]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        json_summary(&out)
    }

    /// Calls the emulator answered for `model` since the last reset (then resets).
    fn calls(&self, model: &str) -> u64 {
        let n = self.env.counters(model).requests;
        self.env.emu.reset();
        n
    }

    fn rows(&self, columns: &[&str]) -> Vec<Vec<String>> {
        table_rows(&self.env.db(), "t", columns)
    }
}

#[test]
fn each_chunk_is_a_row_with_its_place_in_the_document() {
    let rag = Rag::new();
    let body = document("alpha", 12);
    rag.data(&BTreeMap::from([
        ("a", body.clone()),
        ("b", document("beta", 2)),
    ]));
    let p = rag.pipeline(TITAN, "max_tokens = 64\noverlap_tokens = 0", "");
    let s = rag.run(&p);
    let rows = rag.rows(&[
        "id",
        "doc_id",
        "chunk_index",
        "chunk_count",
        "start_char",
        "end_char",
        "text",
        "title",
    ]);
    assert_eq!(s["rows_read"], 2);
    assert_eq!(s["rows_written"], 2);
    assert_eq!(s["chunks_written"].as_u64(), Some(rows.len() as u64));
    assert_eq!(rag.calls(TITAN), rows.len() as u64, "one call per chunk");
    let text: Vec<char> = body.join("\n\n").chars().collect();
    let mut a: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == "a").collect();
    a.sort_by_key(|r| r[2].parse::<usize>().unwrap());
    assert!(
        a.len() >= 4,
        "12 paragraphs of ~40 tokens in 64-token chunks: {}",
        a.len()
    );
    let mut covered_to = 0;
    for r in &a {
        let (index, count): (usize, usize) = (r[2].parse().unwrap(), r[3].parse().unwrap());
        assert_eq!(r[0], format!("a#{index}"));
        assert_eq!(count, a.len());
        let (start, end): (usize, usize) = (r[4].parse().unwrap(), r[5].parse().unwrap());
        // The stored text is the document's characters start..end, exactly.
        assert_eq!(
            r[6],
            text[start..end].iter().collect::<String>(),
            "{}",
            r[0]
        );
        assert_eq!(
            r[7], "Title of a",
            "the row's metadata comes with each chunk"
        );
        let between: String = text[covered_to.min(start)..start].iter().collect();
        assert!(
            between.trim().is_empty(),
            "{between:?} is in no chunk, before {}",
            r[0]
        );
        covered_to = covered_to.max(end);
    }
    assert_eq!(covered_to, text.len(), "the chunks cover the document");
    // The document's whole text is not copied into every chunk row.
    let (_, schema) = table_info(&rag.env.db(), "t");
    assert!(schema.field_with_name("body").is_err(), "{schema:?}");
}

#[test]
fn editing_the_end_of_a_long_document_re_embeds_only_the_last_chunks() {
    let rag = Rag::new();
    let mut body = document("alpha", 40);
    rag.data(&BTreeMap::from([("a", body.clone())]));
    let p = rag.pipeline(TITAN, "max_tokens = 80\noverlap_tokens = 8", "");
    rag.run(&p);
    let first = rag.calls(TITAN);
    let chunks = rag.rows(&["id"]).len() as u64;
    assert_eq!(first, chunks);
    assert!(chunks >= 10, "{chunks}");

    // Unchanged: no call, nothing written.
    let s = rag.run(&p);
    assert_eq!(rag.calls(TITAN), 0);
    assert_eq!(
        (s["rows_skipped"].as_u64(), s["rows_written"].as_u64()),
        (Some(1), Some(0))
    );

    *body.last_mut().unwrap() = "The last paragraph now says something new entirely.".into();
    rag.data(&BTreeMap::from([("a", body.clone())]));
    let plan = rag.env.run(&["plan", &p, "--json"]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let to_embed = plan["chunks"]["to_embed"].as_u64().unwrap();
    assert!((1..=2).contains(&to_embed), "{plan:#}");
    let s = rag.run(&p);
    let second = rag.calls(TITAN);
    assert_eq!(second, to_embed, "the plan counted the calls the run made");
    assert_eq!(s["rows_written"], 1);
    let ids = rag.rows(&["id"]).len() as u64;
    assert!(
        ids.abs_diff(chunks) <= 1,
        "{ids} chunks now, {chunks} before"
    );
}

#[test]
fn moved_chunks_reuse_their_vectors_and_a_shorter_document_loses_its_extra_chunks() {
    let rag = Rag::new();
    let body = document("alpha", 40);
    rag.data(&BTreeMap::from([("a", body.clone())]));
    let p = rag.pipeline(TITAN, "max_tokens = 80\noverlap_tokens = 0", "");
    rag.run(&p);
    rag.calls(TITAN);
    let before: BTreeMap<String, Vec<f32>> = table_vectors(&rag.env.db(), "t", "vector")
        .into_iter()
        .collect();
    let texts_before: BTreeMap<String, String> = rag
        .rows(&["id", "text"])
        .into_iter()
        .map(|r| (r[1].clone(), r[0].clone()))
        .collect();

    // A paragraph inserted near the start: the chunks after it move (new index, new offsets)
    // but keep their text, so their vectors are reused; only chunks around the edit are paid.
    // (A short paragraph may join a chunk and move nothing: this one is a chunk's worth.)
    let mut edited = body.clone();
    edited.insert(2, document("inserted", 1).remove(0));
    rag.data(&BTreeMap::from([("a", edited)]));
    rag.run(&p);
    let calls = rag.calls(TITAN);
    let after = rag.rows(&["id", "text"]);
    let kept = after
        .iter()
        .filter(|r| texts_before.contains_key(&r[1]))
        .count();
    assert!(
        calls <= 4,
        "{calls} calls for one inserted paragraph ({} chunks, {kept} with a stored text)",
        after.len()
    );
    let vectors: BTreeMap<String, Vec<f32>> = table_vectors(&rag.env.db(), "t", "vector")
        .into_iter()
        .collect();
    let mut moved = 0;
    for r in &after {
        if let Some(old_id) = texts_before.get(&r[1]) {
            assert_eq!(
                vectors[&r[0]], before[old_id],
                "{} reuses {old_id}'s vector",
                r[0]
            );
            moved += (old_id != &r[0]) as usize;
        }
    }
    assert!(moved > 0, "no chunk moved: {after:?}");

    // Cut to a quarter: chunks past the new count are deleted.
    rag.data(&BTreeMap::from([("a", body[..10].to_vec())]));
    let s = rag.run(&p);
    let rows = rag.rows(&["id", "chunk_count"]);
    let count: usize = rows[0][1].parse().unwrap();
    assert_eq!(rows.len(), count, "{rows:?}");
    let mut ids: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..count).map(|i| format!("a#{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    assert!(s["rows_deleted"].as_u64().unwrap() > 0, "{s:#}");
    assert!(rag.calls(TITAN) <= 1, "the first chunks are unchanged");
}

#[test]
fn killed_chunked_runs_resume_to_the_table_a_full_rewrite_makes() {
    // Slow calls, a commit every 10 chunk rows, one document per batch: kills land mid-run,
    // between an upsert and its stale-chunk deletes too.
    let rag = Rag::with(Settings {
        latency: embedpipe_emulator::Latency::Fixed { ms: 20.0 },
        ..Default::default()
    });
    let seeds = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    let v1: BTreeMap<&str, Vec<String>> = seeds.iter().map(|s| (*s, document(s, 16))).collect();
    rag.data(&v1);
    let p = rag.pipeline(
        TITAN,
        "max_tokens = 64\noverlap_tokens = 8",
        "cleanup = \"full\"\ncommit_rows = 10",
    );
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("batch_size = 4", "batch_size = 1");
    std::fs::write(&p, text).unwrap();
    rag.run(&p);
    // Every kind of change at once: shorter, longer, edited, deleted, new.
    let mut v2 = v1.clone();
    v2.get_mut("alpha").unwrap().truncate(6);
    v2.get_mut("beta")
        .unwrap()
        .insert(1, document("inserted", 1).remove(0));
    v2.get_mut("gamma").unwrap()[10] = "A rewritten paragraph in the middle.".into();
    v2.remove("delta");
    v2.insert("eta", document("eta", 12));
    rag.data(&v2);
    rag.calls(TITAN);
    for kill_at in [4, 9] {
        let mut child = rag
            .env
            .cli(&["run", &p, "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(120, &format!("{kill_at} calls"), || {
            rag.env.counters(TITAN).requests >= kill_at
        });
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let s = rag.run(&p);
    assert_eq!(s["status"], "ok", "{s:#}");
    let cols = [
        "id",
        "doc_id",
        "chunk_index",
        "chunk_count",
        "start_char",
        "end_char",
        "text",
    ];
    let resumed = rag.rows(&cols);
    let vectors = table_vectors(&rag.env.db(), "t", "vector");
    // No id twice, no document left behind, none kept that left the source.
    let mut ids: Vec<&String> = resumed.iter().map(|r| &r[0]).collect();
    ids.dedup();
    assert_eq!(ids.len(), resumed.len());
    let docs: std::collections::BTreeSet<&str> = resumed.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(docs, v2.keys().copied().collect());
    // The same rows a rewrite from scratch makes, with the same vectors.
    let out = rag.env.run(&["run", &p, "--json", "--reindex"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(rag.rows(&cols), resumed);
    assert_eq!(table_vectors(&rag.env.db(), "t", "vector"), vectors);
}

#[test]
fn deleting_a_document_removes_all_its_chunks() {
    let rag = Rag::new();
    rag.data(&BTreeMap::from([
        ("a", document("alpha", 10)),
        ("b#x", document("beta", 10)),
    ]));
    let p = rag.pipeline(TITAN, "max_tokens = 64", "cleanup = \"full\"");
    rag.run(&p);
    let all = rag.rows(&["doc_id"]);
    let b_chunks = all.iter().filter(|r| r[0] == "b#x").count();
    assert!(b_chunks > 1);
    rag.data(&BTreeMap::from([("a", document("alpha", 10))]));
    rag.calls(TITAN);
    let s = rag.run(&p);
    assert_eq!(rag.calls(TITAN), 0);
    assert_eq!(s["rows_deleted"].as_u64(), Some(b_chunks as u64));
    let docs: Vec<String> = rag
        .rows(&["doc_id"])
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(docs.iter().all(|d| d == "a"), "{docs:?}");
    assert_eq!(docs.len(), all.len() - b_chunks);
}

#[test]
fn cohere_calls_fill_up_with_chunks() {
    let rag = Rag::new();
    let docs: BTreeMap<&str, Vec<String>> = [
        ("a", "alpha"),
        ("b", "beta"),
        ("c", "gamma"),
        ("d", "delta"),
        ("e", "epsilon"),
    ]
    .into_iter()
    .map(|(id, seed)| (id, document(seed, 60)))
    .collect();
    rag.data(&docs);
    let p = rag.pipeline(COHERE, "max_tokens = 48\noverlap_tokens = 4", "");
    let s = rag.run(&p);
    let chunks = rag.rows(&["id"]).len() as u64;
    let c = rag.env.counters(COHERE);
    assert_eq!(c.inputs, chunks);
    assert!(chunks > 96 * 2, "{chunks}");
    // 96 inputs per call; source batches of 4 documents are embedded several at once, so the
    // calls fill up across documents (a few calls may leave partly filled).
    assert!(
        c.requests <= chunks.div_ceil(96) + 3,
        "{} calls for {chunks} chunks",
        c.requests
    );
    assert_eq!(s["rows_written"], 5);
}

#[test]
fn chunk_settings_are_checked_against_the_models() {
    let rag = Rag::new();
    rag.data(&BTreeMap::from([("a", document("alpha", 2))]));
    let p = rag.pipeline(COHERE, "max_tokens = 1000", "");
    let out = rag.env.run(&["validate", &p]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("max_tokens = 1000 is more than model `m`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("512 tokens"), "{}", out.stderr);
    let p = rag.pipeline(TITAN, "input = \"bodyy\"", "");
    let out = rag.env.run(&["validate", &p]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("[chunk] input column `bodyy` is not a column"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("did you mean `body`"), "{}", out.stderr);
    assert_eq!(rag.env.emu.stats().requests, 0);
}

/// A pipeline over `docs.csv` with the local model, chunked (`chunk`: the `[chunk]` body) or not.
fn local_pipeline(dir: &std::path::Path, chunk: Option<&str>, table: &str) -> String {
    let (chunk, column) = match chunk {
        Some(c) => (format!("[chunk]\ninput = \"body\"\n{c}\n"), "text"),
        None => (String::new(), "body"),
    };
    write_pipeline(
        dir,
        &format!("{table}.toml"),
        &format!(
            r#"
[source]
type = "csv"
path = "docs.csv"
id_column = "id"

{chunk}
[[model]]
name = "minilm"
provider = "local"
id = "sentence-transformers/all-MiniLM-L6-v2"

[[embed]]
model = "minilm"
column = "{column}"

[sink]
uri = "db"
table = "{table}"
mode = "overwrite"
"#
        ),
    )
}

fn search(dir: &std::path::Path, p: &str, query: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["search", p, query, "--json", "-k", "3"];
    args.extend_from_slice(extra);
    let out = embedpipe(&args, dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn a_fact_at_the_end_of_a_long_document_is_found_with_chunking_and_missed_without() {
    ensure_model();
    let dir = tempfile::tempdir().unwrap();
    // The station logbook opens with pages on power and mounting; the one line about the
    // anemometer bearing comes at its very end, far past the 256 tokens the model reads.
    let mut logbook: Vec<String> = (0..30)
        .map(|i| format!("Day {i}: the solar panel charged the lead acid battery to {} percent before noon, the charge controller logged a float voltage of 13.{} volts, and the mounting bracket bolts were checked with a torque wrench.", 60 + i, i % 10))
        .collect();
    logbook.push("Maintenance rule: the anemometer bearing cartridge must be replaced every 26 months, or after 48,000 km of wind run, whichever comes first.".into());
    let overview = [
        "Anemometers measure wind speed. A cup anemometer has three cups on arms that spin around a vertical shaft; the faster the wind, the faster they turn.",
        "Sonic anemometers have no moving parts and time ultrasonic pulses between transducers instead.",
    ];
    let mut csv = String::from("id,body\n");
    csv.push_str(&format!("logbook,{}\n", csv_field(&logbook.join("\n\n"))));
    csv.push_str(&format!("overview,{}\n", csv_field(&overview.join("\n\n"))));
    std::fs::write(dir.path().join("docs.csv"), csv).unwrap();
    let query = "How often does the anemometer bearing need replacing?";

    let whole = local_pipeline(dir.path(), None, "whole");
    let out = embedpipe(&["run", &whole], dir.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let hits = search(dir.path(), &whole, query, &[]);
    assert_eq!(
        hits[0]["id"], "overview",
        "without chunks the logbook's end is never read: {hits:#?}"
    );

    let chunked = local_pipeline(dir.path(), Some("max_tokens = 128"), "chunked");
    let out = embedpipe(&["run", &chunked], dir.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let hits = search(dir.path(), &chunked, query, &["--per-doc", "1"]);
    assert_eq!(hits[0]["fields"]["doc_id"], "logbook", "{hits:#?}");
    let text = hits[0]["fields"]["text"].as_str().unwrap();
    assert!(
        text.contains("26 months"),
        "the whole chunk text comes with --json: {text}"
    );
    // One hit per document.
    let docs: Vec<&str> = hits
        .iter()
        .map(|h| h["fields"]["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(docs, ["logbook", "overview"], "{hits:#?}");
    // On a terminal: the place and the chunk text, shortened.
    let out = embedpipe(
        &["search", &chunked, query, "-k", "1", "--per-doc", "1"],
        dir.path(),
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("doc logbook"), "{}", out.stdout);
    assert!(out.stdout.contains("chars "), "{}", out.stdout);
    // The chunk's text, shortened to 240 characters on one line.
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let head: String = flat.chars().take(200).collect();
    assert!(out.stdout.contains(&head), "{}", out.stdout);
    assert!(
        flat.chars().count() > 240 && out.stdout.contains('…'),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("26 months"), "{}", out.stdout);
}

#[test]
fn the_sample_documents_answer_questions_from_their_last_pages() {
    ensure_model();
    let dir = tempfile::tempdir().unwrap();
    let p = repo().join("pipelines/rag_docs.toml");
    let p = p.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_embedpipe"))
            .args(args)
            .env("EMBEDPIPE_DB", dir.path().join("db"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let s = run(&["run", p, "--json"]);
    assert_eq!(s["rows_read"], 4, "{s:#}");
    assert_eq!(s["rows_written"], 4, "{s:#}");
    // Each question, its document, and what the best chunk holds.
    let questions = [
        ("How long does the wind cup spindle bearing last before it has to be swapped out?", "harbor-lantern-manual.md", "48,000"),
        // The passage about the nest (its fix follows in the next chunk).
        ("What fix was applied after birds moved into the temperature sensor housing at the salt flat site?", "field-notes.html", "rock wrens"),
        ("Is it possible to rename my weather station once it has been set up?", "quick-start.txt", "callsign"),
        ("What's the strongest wind gust the mast can survive when it's held by guy wires?", "specifications.pdf", "62 m/s"),
    ];
    for (q, doc, fact) in questions {
        let r = run(&["search", p, q, "--json", "-k", "2", "--per-doc", "1"]);
        let top = &r[0];
        assert_eq!(top["fields"]["doc_id"], doc, "{q}: {r:#}");
        assert!(
            top["fields"]["text"].as_str().unwrap().contains(fact),
            "{q}: {r:#}"
        );
    }
    // Markdown chunks carry their heading path; PDF chunks their page.
    let r = run(&[
        "search",
        p,
        "anemometer bearing cartridge service life",
        "--json",
        "-k",
        "1",
        "--filter",
        "format = 'md'",
    ]);
    let heading = r[0]["fields"]["heading"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        heading.starts_with("Harbor Lantern") && heading.contains(" > "),
        "{r:#}"
    );
    let r = run(&[
        "search",
        p,
        "guy kit gust survival",
        "--json",
        "-k",
        "1",
        "--filter",
        "format = 'pdf'",
    ]);
    assert_eq!(r[0]["fields"]["page"], 4, "{r:#}");
}

mod property {
    use embedpipe::prepare::chunk::{ChunkStrategy, Chunker, Limit};
    use proptest::prelude::*;
    use std::sync::{Arc, OnceLock};

    /// The local model's own tokenizer (its files fetched once per machine).
    fn tokenizer() -> Arc<dyn embedpipe::util::tokens::TokenCounter> {
        static T: OnceLock<Arc<dyn embedpipe::util::tokens::TokenCounter>> = OnceLock::new();
        T.get_or_init(|| {
            super::ensure_model();
            embedpipe::engines::local::LocalModel::catalogue(
                "all-MiniLM-L6-v2",
                embedpipe::engines::catalogue::Variant::Fp32,
                Some(1),
            )
            .unwrap()
            .token_counter()
        })
        .clone()
    }

    /// Pieces of text that stress tokenizers and boundaries: words, numbers, punctuation runs,
    /// CJK without spaces, emoji sequences, combining marks, long words, line breaks.
    const PIECES: &[&str] = &[
        "the ",
        "anemometer ",
        "bearing. ",
        "Replace ",
        "it! ",
        "Why? ",
        "12345678 ",
        "3.14159 ",
        "\n",
        "\n\n",
        "  ",
        "\t",
        "—",
        "«quoted» ",
        "naïve ",
        "e\u{301}\u{301} ",
        "漢字仮名交じり文",
        "。",
        "東京は晴れです！",
        "👩\u{200d}👩\u{200d}👧 ",
        "🇫🇷🇩🇪",
        "👍🏽 ",
        "supercalifragilisticexpialidocious ",
        "x_y_z::<T>() ",
        "https://example.com/a/b?c=d ",
        "# Heading\n",
        "## Sub heading\n",
        "```\n# not a heading\n```\n",
        "- item\n",
        "Ünïcödé ",
        "ก่ข้ ",
        "مرحبا ",
        "((((((((",
        "....",
    ];

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..600).prop_map(|p| p.concat())
    }

    fn strategy() -> impl Strategy<Value = ChunkStrategy> {
        prop::sample::select(vec![
            ChunkStrategy::Recursive,
            ChunkStrategy::Markdown,
            ChunkStrategy::Sentences,
            ChunkStrategy::Fixed,
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn no_chunk_is_over_the_local_models_token_limit(
            text in text(),
            max in 16usize..=256,
            strategy in strategy(),
        ) {
            let counter = tokenizer();
            let chunker = Chunker::new(
                strategy,
                vec![Limit { counter: counter.clone(), max }],
                max / 8,
            )
            .unwrap();
            let chunks = chunker.split(&text);
            let mut last_start = None;
            for c in &chunks {
                let piece = &text[c.start..c.end];
                let tokens = counter.count(piece);
                prop_assert!(tokens <= max, "{tokens} tokens > {max} ({strategy:?}): {piece:?}");
                prop_assert!(!piece.trim().is_empty());
                prop_assert!(last_start.is_none_or(|s| s < c.start));
                last_start = Some(c.start);
                prop_assert_eq!(c.start_char as usize, text[..c.start].chars().count());
                prop_assert_eq!(c.end_char as usize, text[..c.end].chars().count());
            }
            prop_assert_eq!(chunks.is_empty(), text.trim().is_empty());
        }
    }
}
