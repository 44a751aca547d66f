//! Bedrock requests and responses per model family, through the real CLI and the real AWS SDK
//! against the emulator started by each test on loopback (reached through
//! `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, signed with credentials from the environment, as in
//! production): every text and image family end to end, inputs refused before sending (too long,
//! unsupported format, corrupt or giant images), text and image embedded together, how each
//! error class is mapped from the SDK, and timeouts, regions and price overrides.

mod common;

use common::*;
use common::{json_summary as summary, EmuEnv as Env};
use embedpipe_emulator::{Faults, Settings};
use std::path::Path;

fn images() -> String {
    format!(
        "type = \"images\"\npath = {:?}\n",
        sample("images").to_string_lossy()
    )
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

#[test]
fn timeouts_regions_and_price_overrides() {
    let env = Env::new(Settings {
        latency: embedpipe_emulator::Latency::Fixed { ms: 1500.0 },
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

/// Asymmetric models embed a search query as a query, not as a document: Cohere's query embeds
/// are sent with `input_type = "search_query"` while the table's rows went as documents.
#[test]
fn search_queries_are_sent_as_queries() {
    let env = Env::new(Settings::default());
    let out = env.run_pipeline(
        &articles(),
        "id = \"cohere.embed-english-v3\"\ntruncate = \"END\"",
        "text = \"{title}\"",
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let documents = env.counters("cohere.embed-english-v3").input_types;
    assert_eq!(documents.get("search_document"), Some(&3), "{documents:?}");
    let p = env.path().join("p.toml");
    let out = env.run(&["search", p.to_str().unwrap(), "volcanoes", "-k", "3"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let after = env.counters("cohere.embed-english-v3").input_types;
    assert_eq!(after.get("search_query"), Some(&1), "{after:?}");
    assert_eq!(after.get("search_document"), Some(&3), "{after:?}");
}
