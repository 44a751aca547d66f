//! The quickstart through the built binary: run, search, re-run.

mod common;

use common::*;

#[test]
fn quickstart_run_search_and_rerun() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    // The shipped quickstart, pointed at a temporary database through its ${EMBEDPIPE_DB}.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_embedpipe"))
            .args(args)
            .current_dir(repo())
            .env("EMBEDPIPE_DB", &db)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run(&["validate", "pipelines/quickstart.toml"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("240 rows"), "{stdout}");

    let (code, stdout, stderr) = run(&["run", "pipelines/quickstart.toml", "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["rows_read"], 240);
    assert_eq!(summary["rows_written"], 240);
    assert_eq!(summary["rows_failed"], 0);
    assert_eq!(summary["models"][0]["inputs"], 240);
    assert!(summary["models"][0]["calls"].as_u64().unwrap() >= 240 / 32);

    let (rows, schema) = table_info(&db, "articles");
    assert_eq!(rows, 240);
    let vector = schema.field_with_name("vector").unwrap();
    match vector.data_type() {
        arrow_schema::DataType::FixedSizeList(item, 384) => {
            assert_eq!(item.data_type(), &arrow_schema::DataType::Float32)
        }
        other => panic!("vector column is {other}"),
    }
    assert_eq!(
        vector
            .metadata()
            .get("embedpipe.model_id")
            .map(String::as_str),
        Some("sentence-transformers/all-MiniLM-L6-v2")
    );
    assert_eq!(
        vector
            .metadata()
            .get("embedpipe.dimension")
            .map(String::as_str),
        Some("384")
    );
    for col in [
        "id",
        "title",
        "topic",
        "author",
        "published",
        "url",
        "vector_model",
        "vector_hash",
        "embedded_at",
    ] {
        assert!(schema.field_with_name(col).is_ok(), "missing column {col}");
    }
    let mut ids = table_strings(&db, "articles", "id");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 240, "ids are unique");

    for (query, topic) in [
        (
            "telescope observations of distant galaxies and exoplanets",
            "astronomy",
        ),
        ("recipe for a creamy sauce with garlic and herbs", "cooking"),
        (
            "the goalkeeper saved a penalty in the cup final",
            "football",
        ),
        (
            "fixing a race condition with a mutex in Rust code",
            "programming",
        ),
        ("interest rates, inflation and bond yields", "finance"),
    ] {
        let (code, stdout, stderr) = run(&[
            "search",
            "pipelines/quickstart.toml",
            query,
            "-k",
            "3",
            "--json",
        ]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        let hits: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let hits = hits.as_array().unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(
            hits[0]["fields"]["topic"], topic,
            "query {query:?} → {hits:#?}"
        );
        assert!(hits[0]["distance"].as_f64().unwrap() <= hits[2]["distance"].as_f64().unwrap());
    }
    let (code, stdout, _) = run(&[
        "search",
        "pipelines/quickstart.toml",
        "sourdough bread",
        "-k",
        "2",
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("1. ") && stdout.contains("topic=cooking"),
        "{stdout}"
    );

    // Overwrite mode: same row count again, not doubled.
    let (code, stdout, stderr) = run(&["run", "pipelines/quickstart.toml", "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(table_info(&db, "articles").0, 240);
}

#[test]
fn create_mode_refuses_an_existing_table_and_append_adds() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let src = format!(
        "type = \"parquet\"\npath = \"{}\"",
        sample("articles.parquet").display()
    );
    let text = pipeline_text(&src, "column = \"title\"", "")
        .replace("mode = \"overwrite\"", "mode = \"create\"");
    let p = write_pipeline(tmp.path(), "p.toml", &text);
    let out = embedpipe(&["run", &p, "-q"], tmp.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = embedpipe(&["run", &p], tmp.path());
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("already exists") && out.stderr.contains("overwrite"),
        "{}",
        out.stderr
    );

    // Appending the same rows again adds no duplicate: their ids are dead-lettered.
    let p2 = write_pipeline(
        tmp.path(),
        "p2.toml",
        &text.replace("mode = \"create\"", "mode = \"append\""),
    );
    let out = embedpipe(&["run", &p2, "-q"], tmp.path());
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(table_info(&tmp.path().join("db"), "t").0, 240);
    let dead = dead_letters(&tmp.path().join("db/t_failures.jsonl"));
    assert_eq!(dead.len(), 240);
    assert!(
        dead.iter().all(|d| d["kind"] == "duplicate_id"),
        "{:?}",
        dead[0]
    );

    // New ids are added: the same articles under other ids.
    let batches: Vec<arrow::record_batch::RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(sample("articles.parquet")).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let schema = batches[0].schema();
    let id_at = schema.index_of("id").unwrap();
    let f = std::fs::File::create(tmp.path().join("more.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None).unwrap();
    for b in &batches {
        let ids = arrow::compute::cast(b.column(id_at), &arrow_schema::DataType::Utf8).unwrap();
        let ids = ids
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        let new_ids: arrow::array::ArrayRef = std::sync::Arc::new(
            ids.iter()
                .map(|id| id.map(|id| format!("more-{id}")))
                .collect::<arrow::array::StringArray>(),
        );
        let new_ids = arrow::compute::cast(&new_ids, schema.field(id_at).data_type()).unwrap();
        let mut cols = b.columns().to_vec();
        cols[id_at] = new_ids;
        w.write(&arrow::record_batch::RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
    }
    w.close().unwrap();
    let more = text
        .replace("mode = \"create\"", "mode = \"append\"")
        .replace(
            &sample("articles.parquet").display().to_string(),
            "more.parquet",
        );
    let p3 = write_pipeline(tmp.path(), "p3.toml", &more);
    let out = embedpipe(&["run", &p3, "-q"], tmp.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(table_info(&tmp.path().join("db"), "t").0, 480);
}

#[test]
fn config_errors_point_at_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let src = format!(
        "type = \"parquet\"\npath = \"{}\"",
        sample("articles.parquet").display()
    );
    // Misspelt key.
    let p = write_pipeline(
        tmp.path(),
        "bad.toml",
        &pipeline_text(&src, "colum = \"title\"", ""),
    );
    let out = embedpipe(&["validate", &p], tmp.path());
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("bad.toml:13:1: unknown key `colum`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `column`?"),
        "{}",
        out.stderr
    );
    // A column the data does not have.
    let p = write_pipeline(
        tmp.path(),
        "bad2.toml",
        &pipeline_text(&src, "column = \"titel\"", ""),
    );
    let out = embedpipe(&["validate", &p], tmp.path());
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("bad2.toml:13:10: input column `titel` is not a column of the source"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `title`?"),
        "{}",
        out.stderr
    );
    // The run refuses before touching the model or the sink.
    let out = embedpipe(&["run", &p], tmp.path());
    assert_eq!(out.code, 2);
    assert!(!tmp.path().join("db").exists());
}

#[test]
fn every_shipped_pipeline_validates() {
    // Every pipeline in pipelines/, by name: one missing, renamed or added without being
    // listed here fails, as does one that does not validate. (table, embed steps, rows the
    // source reports: Parquet sources know theirs from the footers.)
    let expected: [(&str, &str, usize, Option<u64>); 13] = [
        (
            "bedrock_batch_backfill.toml",
            "articles_batch",
            1,
            Some(240),
        ),
        ("bedrock_cohere_v4.toml", "images_cohere", 2, None),
        ("bedrock_nova_images.toml", "images_nova", 1, None),
        ("bedrock_titan_multimodal.toml", "images_titan_mm", 1, None),
        ("bedrock_titan_text.toml", "articles_titan", 1, Some(240)),
        ("images_folder.toml", "images", 1, None),
        ("media.toml", "media_nova", 1, None),
        ("openai_compatible.toml", "articles_openai", 1, Some(240)),
        ("quickstart.toml", "articles", 1, Some(240)),
        ("quickstart_csv.toml", "articles_csv", 2, None),
        ("rag_docs.toml", "docs", 1, None),
        ("s3.toml", "articles", 1, Some(240)),
        ("scheduled.toml", "articles", 1, Some(240)),
    ];
    let mut shipped: Vec<String> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    shipped.sort();
    assert_eq!(
        shipped,
        expected.iter().map(|e| e.0).collect::<Vec<_>>(),
        "pipelines/ and this test's list differ"
    );
    // The environment the pipelines are written for, and nothing from this machine: the sinks
    // in a temporary database (${EMBEDPIPE_DB}), ${MEDIA_BUCKET} at its default, and for the
    // Bedrock ones a test AWS identity with the emulator as Bedrock (validate calls no model:
    // the emulator must see no request).
    let env = EmuEnv::new(embedpipe_emulator::Settings::default());
    let db = env.db();
    for (name, table, steps, rows) in expected {
        let path = repo().join("pipelines").join(name);
        let mut args = vec!["validate", path.to_str().unwrap(), "--json"];
        // The S3 pipeline, as its header says: a local S3 server serving the sample data.
        let seed = format!("embedpipe-sample={}", repo().join("sample_data").display());
        if name == "s3.toml" {
            args.extend(["--emulator", "--emulator-bucket", &seed]);
        }
        let mut cmd = env.cli(&args);
        cmd.env("EMBEDPIPE_DB", &db).env_remove("MEDIA_BUCKET");
        let out = output(cmd);
        assert_eq!(out.code, 0, "{name}: {}{}", out.stdout, out.stderr);
        let report: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}: {}", out.stdout));
        assert_eq!(report["ok"], true, "{name}: {report:#}");
        assert_eq!(report["sink"]["table"], table, "{name}: {report:#}");
        if name == "s3.toml" {
            // In the local S3 server's bucket (kept across runs in the temp directory).
            assert_eq!(
                report["sink"]["uri"], "s3://embedpipe-demo/db",
                "{report:#}"
            );
        } else {
            assert_eq!(
                report["sink"]["uri"].as_str(),
                db.to_str(),
                "{name}: the sink is not in ${{EMBEDPIPE_DB}}: {report:#}"
            );
            assert_eq!(report["sink"]["table_exists"], false, "{name}: {report:#}");
        }
        assert_eq!(
            report["steps"].as_array().map(Vec::len),
            Some(steps),
            "{name}: {report:#}"
        );
        if let Some(rows) = rows {
            assert_eq!(report["source"]["rows"], rows, "{name}: {report:#}");
        }
    }
    let stats = env.emu.stats();
    assert_eq!(stats.requests, 0, "validate called a model: {stats:?}");
    assert_eq!(stats.async_invoke.submits, 0, "{stats:?}");
}

#[test]
fn plan_counts_the_rows_each_shard_would_read() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for f in 0..4 {
        let mut csv = String::from("id,text\n");
        for r in 0..10 {
            let id = format!("f{f}-r{r:02}");
            csv.push_str(&format!("{id},same length text\n"));
            ids.push(id);
        }
        std::fs::write(tmp.path().join(format!("{f}.csv")), csv).unwrap();
    }
    let plan = |sink_extra: &str| {
        let p = write_pipeline(
            tmp.path(),
            "p.toml",
            &pipeline_text(
                "type = \"csv\"\npath = \"*.csv\"\nid_column = \"id\"",
                "column = \"text\"",
                sink_extra,
            )
            .replace("mode = \"overwrite\"\n", ""),
        );
        let out = embedpipe(&["plan", &p, "--json", "--shards", "4"], tmp.path());
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["rows_read"], 40, "{v:#}");
        v["rows_per_shard"].clone()
    };
    // Files of one size: one file per shard.
    assert_eq!(
        plan("mode = \"overwrite\""),
        serde_json::json!([10, 10, 10, 10])
    );
    // Incremental runs split by id, so shards never touch the same rows.
    let mut want = [0u64; 4];
    for id in &ids {
        want[embedpipe::util::shard_of(id, 4) as usize] += 1;
    }
    assert_eq!(plan("mode = \"incremental\""), serde_json::json!(want));
    assert_ne!(want, [10, 10, 10, 10]);
    let out = embedpipe(
        &[
            "plan",
            &tmp.path().join("p.toml").to_string_lossy(),
            "--shards",
            "0",
        ],
        tmp.path(),
    );
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
}
