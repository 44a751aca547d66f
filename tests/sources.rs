//! Each source on good and bad input, through the built binary.

mod common;

use common::*;
use std::path::Path;

fn run_json(p: &str, cwd: &Path) -> (i32, serde_json::Value, String) {
    let out = embedpipe(&["run", p, "--json"], cwd);
    let v = serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.code, v, out.stderr)
}

#[test]
fn parquet_glob_with_projection_and_derived_ids() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(sample("articles.parquet"), data.join("a.parquet")).unwrap();
    std::fs::copy(sample("articles.parquet"), data.join("b.parquet")).unwrap();
    let src = "type = \"parquet\"\npath = \"data/*.parquet\"\ncolumns = [\"title\", \"topic\"]\nbatch_size = 50";
    let text = pipeline_text(src, "column = \"title\"", "metadata = [\"topic\"]");
    let p = write_pipeline(tmp.path(), "p.toml", &text);
    let (code, s, err) = run_json(&p, tmp.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(s["rows_read"], 480);
    assert_eq!(s["rows_written"], 480);
    let db = tmp.path().join("db");
    let ids = table_strings(&db, "t", "id");
    assert!(
        ids.contains(&"a.parquet#1".to_string()) && ids.contains(&"b.parquet#240".to_string()),
        "{:?}",
        &ids[..5]
    );
    let (_, schema) = table_info(&db, "t");
    assert!(
        schema.field_with_name("body").is_err(),
        "only projected metadata is written"
    );
    assert_eq!(
        table_fragments(&db, "t"),
        1,
        "10 source batches are written as one fragment, not ten"
    );
}

#[test]
fn truncated_parquet_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(sample("articles.parquet")).unwrap();
    std::fs::write(tmp.path().join("cut.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let text = pipeline_text(
        "type = \"parquet\"\npath = \"cut.parquet\"",
        "column = \"title\"",
        "",
    );
    let p = write_pipeline(tmp.path(), "p.toml", &text);
    let out = embedpipe(&["validate", &p], tmp.path());
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("cut.parquet: not a readable Parquet file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);
}

#[test]
fn missing_file_and_empty_glob_point_at_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        "type = \"parquet\"\npath = \"nope/*.parquet\"",
        "column = \"title\"",
        "",
    );
    let p = write_pipeline(tmp.path(), "p.toml", &text);
    let out = embedpipe(&["validate", &p], tmp.path());
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("p.toml:4:8: glob") && out.stderr.contains("matches no files"),
        "{}",
        out.stderr
    );
}

#[test]
fn ragged_and_unparseable_csv_rows_are_dead_lettered_with_line_numbers() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let csv = "id,title,score\n\
               1,Stars and galaxies,1.5\n\
               2,\"A title, with a comma\",2\n\
               3,ragged row with too many,fields,here\n\
               4,Bad number,abc\n\
               5,\"Multi\nline title\",3\n\
               6,,4\n\
               7,Last one,5\n";
    std::fs::write(tmp.path().join("d.csv"), csv).unwrap();
    let src = "type = \"csv\"\npath = \"d.csv\"\n[source.schema]\nscore = \"float64\"";
    let p = write_pipeline(
        tmp.path(),
        "p.toml",
        &pipeline_text(src, "column = \"title\"", ""),
    );
    let (code, s, err) = run_json(&p, tmp.path());
    assert_eq!(code, 3, "completed with failed rows: {err}");
    assert_eq!(s["rows_read"], 7);
    assert_eq!(s["rows_written"], 4);
    assert_eq!(s["rows_failed"], 3);
    let letters = dead_letters(&tmp.path().join("db/t_failures.jsonl"));
    assert_eq!(letters.len(), 3, "{letters:#?}");
    let by_line = |line: u64| {
        letters
            .iter()
            .find(|l| l["row"] == line)
            .unwrap_or_else(|| panic!("line {line}: {letters:#?}"))
    };
    assert_eq!(by_line(4)["kind"], "malformed_row");
    assert!(by_line(4)["message"]
        .as_str()
        .unwrap()
        .contains("has 4 fields, the header has 3"));
    assert!(by_line(4)["source"].as_str().unwrap().ends_with("d.csv"));
    assert_eq!(by_line(5)["kind"], "bad_value");
    assert!(
        by_line(5)["message"].as_str().unwrap().contains("abc"),
        "{letters:#?}"
    );
    let empty = by_line(8);
    assert_eq!(empty["kind"], "empty_input");
    assert_eq!(empty["id"], "6");
    assert_eq!(empty["step"], "vector");
    let mut ids = table_strings(&tmp.path().join("db"), "t", "id");
    ids.sort();
    assert_eq!(ids, vec!["1", "2", "5", "7"]);
}

/// The rows of table `t` in `db` as (id, values of `columns` as text), sorted by id.
fn rows_by_id(db: &Path, columns: &[&str]) -> Vec<(String, Vec<String>)> {
    let ids = table_strings(db, "t", "id");
    let values: Vec<Vec<String>> = columns.iter().map(|c| table_strings(db, "t", c)).collect();
    for (c, v) in columns.iter().zip(&values) {
        assert_eq!(v.len(), ids.len(), "column {c} of {}", db.display());
    }
    let mut rows: Vec<(String, Vec<String>)> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, values.iter().map(|v| v[i].clone()).collect()))
        .collect();
    rows.sort();
    rows
}

#[test]
fn sample_csv_matches_sample_parquet() {
    // make_sample_data.py writes the same 240 rows, in the same order, to both files; the
    // tables indexed from them must hold the same ids, metadata and content hashes.
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let table_from = |name: &str, kind: &str| {
        let dir = tmp.path().join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        let src = format!(
            "type = \"{kind}\"\npath = \"{}\"\nid_column = \"id\"",
            sample(name).display()
        );
        let p = write_pipeline(
            &dir,
            "p.toml",
            &pipeline_text(&src, "text = \"{title}\\n{body}\"", ""),
        );
        let (code, s, err) = run_json(&p, &dir);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(
            (
                s["rows_read"].as_u64(),
                s["rows_written"].as_u64(),
                s["rows_failed"].as_u64()
            ),
            (Some(240), Some(240), Some(0)),
            "{name}: {s}"
        );
        dir.join("db")
    };
    let csv_db = table_from("articles.csv", "csv");
    let parquet_db = table_from("articles.parquet", "parquet");

    // Every source column but the id is copied as metadata, with the same types: the CSV's
    // inferred ones (`published` holds ISO dates, but CSV infers no dates unless
    // [source.schema] says so: text in both) match the Parquet file's.
    let metadata = [
        "title",
        "body",
        "topic",
        "author",
        "published",
        "url",
        "word_count",
    ];
    let (_, csv_schema) = table_info(&csv_db, "t");
    let (_, parquet_schema) = table_info(&parquet_db, "t");
    let names = |s: &arrow_schema::SchemaRef| {
        let mut v: Vec<String> = s.fields().iter().map(|f| f.name().clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&csv_schema), names(&parquet_schema));
    // Text is text, however Arrow holds it.
    let kind = |s: &arrow_schema::SchemaRef, c: &str| {
        use arrow_schema::DataType;
        match s.field_with_name(c).unwrap().data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".to_string(),
            other => other.to_string(),
        }
    };
    for c in metadata {
        assert_eq!(kind(&csv_schema, c), kind(&parquet_schema, c), "column {c}");
    }
    assert_eq!(
        csv_schema
            .field_with_name("word_count")
            .unwrap()
            .data_type(),
        &arrow_schema::DataType::Int64,
        "types are inferred"
    );

    // Row by row (by id): the metadata as text, and the hash of what was embedded.
    let mut columns: Vec<&str> = metadata.to_vec();
    columns.extend(["vector_model", "vector_hash"]);
    let from_csv = rows_by_id(&csv_db, &columns);
    let from_parquet = rows_by_id(&parquet_db, &columns);
    assert_eq!(from_csv.len(), 240);
    let mut ids: Vec<&str> = from_csv.iter().map(|r| r.0.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 240, "ids are unique");
    assert_eq!(
        from_csv.iter().map(|r| &r.0).collect::<Vec<_>>(),
        from_parquet.iter().map(|r| &r.0).collect::<Vec<_>>(),
        "the two tables hold different ids"
    );
    for (c, p) in from_csv.iter().zip(&from_parquet) {
        for (i, col) in columns.iter().enumerate() {
            assert_eq!(
                c.1[i], p.1[i],
                "row {}: column {col} differs between CSV and Parquet",
                c.0
            );
        }
    }
    // Anchors from the first line of articles.csv: neither table lost or reshaped values.
    let first = from_csv
        .iter()
        .find(|r| r.0 == "art-0059")
        .expect("art-0059");
    let col = |name: &str| first.1[columns.iter().position(|c| *c == name).unwrap()].as_str();
    assert_eq!(
        col("title"),
        "A creamy mushroom risotto benefits from a hot cast-iron pan"
    );
    assert_eq!(col("topic"), "cooking");
    assert_eq!(col("author"), "Ada Byrne");
    assert_eq!(col("published"), "2026-01-19");
    assert_eq!(col("word_count"), "46");
    assert!(col("body").contains("Serve with a squeeze of lime, chopped coriander"));
    // The hash follows the embedded text: as many distinct hashes as distinct texts.
    let at = |name: &str| columns.iter().position(|c| *c == name).unwrap();
    let (title, body, hash) = (at("title"), at("body"), at("vector_hash"));
    let mut hashes: Vec<&str> = from_csv.iter().map(|r| r.1[hash].as_str()).collect();
    let mut texts: Vec<String> = from_csv
        .iter()
        .map(|r| format!("{}\n{}", r.1[title], r.1[body]))
        .collect();
    assert!(hashes.iter().all(|h| !h.is_empty()), "{hashes:?}");
    hashes.sort();
    hashes.dedup();
    texts.sort();
    texts.dedup();
    assert_eq!(hashes.len(), texts.len());
}

#[test]
fn image_folder_detects_formats_and_dead_letters_bad_files() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    let sub = imgs.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    for f in [
        "landscapes/sky-1.png",
        "landscapes/desert-1.jpg",
        "landscapes/forest-1.gif",
        "landscapes/sea-1.webp",
    ] {
        let name = Path::new(f).file_name().unwrap();
        std::fs::copy(sample("images").join(f), sub.join(name)).unwrap();
    }
    std::fs::write(imgs.join("fake.jpg"), "I am text pretending to be a JPEG").unwrap();
    std::fs::write(imgs.join("notes.txt"), "plain text").unwrap();
    std::fs::write(imgs.join("big.png"), vec![0u8; 4096]).unwrap();
    // A symlink leaving the folder is not followed; one inside it is.
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(
        sample("images/landscapes/sky-2.gif"),
        outside.join("secret.gif"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, imgs.join("escape")).unwrap();
    std::os::unix::fs::symlink(sub.join("sky-1.png"), imgs.join("alias.png")).unwrap();

    let src =
        "type = \"images\"\npath = \"imgs\"\nexclude = [\"**/*.txt\"]\nmax_image_bytes = 2048";
    let p = write_pipeline(
        tmp.path(),
        "p.toml",
        &pipeline_text(src, "text = \"{path}\"", ""),
    );
    let (code, s, err) = run_json(&p, tmp.path());
    assert_eq!(code, 3, "{err}");
    assert_eq!(s["rows_written"], 5, "{s:#}");
    assert_eq!(s["rows_failed"], 2, "{s:#}");
    let letters = dead_letters(&tmp.path().join("db/t_failures.jsonl"));
    let fake = letters
        .iter()
        .find(|l| l["id"] == "fake.jpg")
        .expect("fake.jpg dead-lettered");
    assert_eq!(fake["kind"], "not_an_image");
    assert!(fake["message"].as_str().unwrap().contains(".jpg extension"));
    let big = letters
        .iter()
        .find(|l| l["id"] == "big.png")
        .expect("big.png dead-lettered");
    assert_eq!(big["kind"], "too_large");

    let db = tmp.path().join("db");
    let mut paths = table_strings(&db, "t", "path");
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "alias.png",
            "sub/desert-1.jpg",
            "sub/forest-1.gif",
            "sub/sea-1.webp",
            "sub/sky-1.png"
        ]
    );
    let mut mimes = table_strings(&db, "t", "mime");
    mimes.sort();
    mimes.dedup();
    assert_eq!(
        mimes,
        vec!["image/gif", "image/jpeg", "image/png", "image/webp"]
    );
    let widths = table_strings(&db, "t", "width");
    assert!(
        widths.iter().all(|w| w.parse::<u32>().unwrap() >= 96),
        "{widths:?}"
    );
    let (_, schema) = table_info(&db, "t");
    assert!(
        schema.field_with_name("bytes").is_err(),
        "image bytes are not copied into the table by default"
    );
}

#[test]
fn header_only_csv_makes_an_empty_table() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("d.csv"), "id,title\n").unwrap();
    let p = write_pipeline(
        tmp.path(),
        "p.toml",
        &pipeline_text("type = \"csv\"\npath = \"d.csv\"", "column = \"title\"", ""),
    );
    let (code, s, err) = run_json(&p, tmp.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(s["rows_read"], 0);
    assert_eq!(table_info(&tmp.path().join("db"), "t").0, 0);
}

#[cfg(unix)]
#[test]
fn image_filters_apply_before_walk_failures() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub/deep")).unwrap();
    std::fs::copy(sample("images/landscapes/sky-1.png"), imgs.join("top.png")).unwrap();
    std::fs::copy(
        sample("images/landscapes/sky-3.png"),
        imgs.join("sub/a.png"),
    )
    .unwrap();
    std::fs::copy(
        sample("images/landscapes/desert-1.jpg"),
        imgs.join("sub/deep/b.jpg"),
    )
    .unwrap();
    // A broken symlink, and one looping back to the folder.
    std::os::unix::fs::symlink(imgs.join("missing.png"), imgs.join("broken.png")).unwrap();
    std::os::unix::fs::symlink(&imgs, imgs.join("sub/loop")).unwrap();
    let run = |filters: &str| {
        let src = format!("type = \"images\"\npath = \"imgs\"\n{filters}");
        let p = write_pipeline(
            tmp.path(),
            "p.toml",
            &pipeline_text(&src, "text = \"{path}\"", ""),
        );
        let (code, s, err) = run_json(&p, tmp.path());
        let mut paths = table_strings(&tmp.path().join("db"), "t", "path");
        paths.sort();
        (code, s, err, paths)
    };
    let all = ["sub/a.png", "sub/deep/b.jpg", "top.png"];

    // Without filters, both links are failures.
    let (code, s, err, paths) = run("");
    assert_eq!(code, 3, "{err}");
    assert_eq!(s["rows_failed"], 2, "{s:#}");
    assert_eq!(paths, all);

    // Excluded links are skipped silently.
    let (code, s, err, paths) = run("exclude = [\"broken.png\", \"**/loop\"]");
    assert_eq!(code, 0, "{err}");
    assert_eq!(s["rows_failed"], 0, "{s:#}");
    assert_eq!(paths, all);

    // So are links that are not included; `**` crosses folders.
    let (code, s, err, paths) = run("include = [\"**/*.jpg\"]");
    assert_eq!(code, 0, "{err}");
    assert_eq!(s["rows_failed"], 0, "{s:#}");
    assert_eq!(paths, ["sub/deep/b.jpg"]);

    // `*` stays within one folder level.
    let (code, s, err, paths) = run("include = [\"*.png\"]\nexclude = [\"broken.png\"]");
    assert_eq!(code, 0, "{err}");
    assert_eq!(s["rows_failed"], 0, "{s:#}");
    assert_eq!(paths, ["top.png"]);
}

/// Writes `csv` as `d.csv` in `dir` and runs the local model over its `title` column (`source`
/// adds keys to [source]).
fn run_csv(dir: &Path, csv: &str, source: &str) -> (i32, serde_json::Value, String) {
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    let src = format!("type = \"csv\"\npath = \"d.csv\"\n{source}");
    let p = write_pipeline(
        dir,
        "p.toml",
        &pipeline_text(&src, "column = \"title\"", ""),
    );
    run_json(&p, dir)
}

#[test]
fn csv_ids_are_kept_verbatim_as_text() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let (code, s, err) = run_csv(
        tmp.path(),
        "id,title\n007,Stars\n7,Moons\n0042,Comets\n42,Planets\n1e3,Nebulae\n",
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(s["rows_written"], 5);
    let mut ids = table_strings(&tmp.path().join("db"), "t", "id");
    ids.sort();
    assert_eq!(ids, vec!["0042", "007", "1e3", "42", "7"]);
}

#[test]
fn csv_rows_are_start_lines_in_crlf_and_cr_files_and_letters_carry_ids() {
    ensure_model();
    for eol in ["\r\n", "\r"] {
        let tmp = tempfile::tempdir().unwrap();
        let lines = [
            "id,title,score",
            "1,Stars,1",
            "",
            "2,Bad number,abc",
            "3,\"Two",
            "lines\",2",
            "4,ragged,3,extra",
            "5,,4",
        ];
        let (code, s, err) = run_csv(
            tmp.path(),
            &(lines.join(eol) + eol),
            "[source.schema]\nscore = \"float64\"",
        );
        assert_eq!(code, 3, "{eol:?}: {err}");
        assert_eq!(s["rows_read"], 5, "{eol:?}");
        assert_eq!(s["rows_written"], 2, "{eol:?}");
        let letters = dead_letters(&tmp.path().join("db/t_failures.jsonl"));
        assert_eq!(letters.len(), 3, "{eol:?}: {letters:#?}");
        let at = |row: u64| {
            letters
                .iter()
                .find(|l| l["row"] == row)
                .unwrap_or_else(|| panic!("{eol:?} row {row}: {letters:#?}"))
        };
        assert_eq!(at(4)["kind"], "bad_value");
        assert_eq!(at(4)["id"], "2");
        assert_eq!(
            at(4)["message"],
            "line 4: value `abc` of column `score` is not a float64"
        );
        assert_eq!(at(7)["kind"], "malformed_row");
        assert_eq!(at(7)["id"], "4");
        assert_eq!(at(7)["message"], "line 7: has 4 fields, the header has 3");
        assert_eq!(at(8)["kind"], "empty_input");
        assert_eq!(at(8)["id"], "5");
        let mut ids = table_strings(&tmp.path().join("db"), "t", "id");
        ids.sort();
        assert_eq!(ids, vec!["1", "3"]);
    }
}

#[test]
fn csv_quote_left_open_at_the_end_is_a_malformed_row() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let (code, s, err) = run_csv(tmp.path(), "id,title\n1,hello\n2,\"broken\n3,third\n", "");
    assert_eq!(code, 3, "{err}");
    assert_eq!(s["rows_read"], 2);
    assert_eq!(s["rows_written"], 1);
    assert_eq!(s["rows_failed"], 1);
    let letters = dead_letters(&tmp.path().join("db/t_failures.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["kind"], "malformed_row");
    assert_eq!(letters[0]["step"], "read");
    assert_eq!(letters[0]["row"], 3);
    assert_eq!(letters[0]["id"], "2");
    assert_eq!(
        letters[0]["message"],
        "line 3: the quoted field opened on line 3 is not closed before the end of the file"
    );
    assert_eq!(
        table_strings(&tmp.path().join("db"), "t", "title"),
        vec!["hello"]
    );

    // A header left open is an error of the input, found before any model call.
    std::fs::write(tmp.path().join("h.csv"), "id,\"title\n1,a\n").unwrap();
    let p = write_pipeline(
        tmp.path(),
        "h.toml",
        &pipeline_text("type = \"csv\"\npath = \"h.csv\"", "column = \"title\"", ""),
    );
    let out = embedpipe(&["validate", &p], tmp.path());
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("is not closed"), "{}", out.stderr);
}

#[test]
fn parquet_integer_ids_are_exact_text_and_float_ids_are_dead_lettered() {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use std::sync::Arc;
    ensure_model();
    let write = |dir: &Path, id: ArrayRef| {
        let title: ArrayRef = Arc::new(StringArray::from(vec!["Stars", "Moons", "Comets"]));
        let batch =
            arrow::record_batch::RecordBatch::try_from_iter(vec![("id", id), ("title", title)])
                .unwrap();
        let f = std::fs::File::create(dir.join("d.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    };
    let src = "type = \"parquet\"\npath = \"d.parquet\"";

    // 2^53 + 1 would come out as ...992 through a float.
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        Arc::new(Int64Array::from(vec![
            Some(9_007_199_254_740_993),
            Some(-7),
            None,
        ])),
    );
    let p = write_pipeline(
        tmp.path(),
        "p.toml",
        &pipeline_text(src, "column = \"title\"", ""),
    );
    let (code, s, err) = run_json(&p, tmp.path());
    assert_eq!(code, 3, "{err}");
    assert_eq!(s["rows_written"], 2);
    let mut ids = table_strings(&tmp.path().join("db"), "t", "id");
    ids.sort();
    assert_eq!(ids, vec!["-7", "9007199254740993"]);
    let letters = dead_letters(&tmp.path().join("db/t_failures.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["kind"], "missing_id");
    assert_eq!(letters[0]["row"], 3);

    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        Arc::new(Float64Array::from(vec![1.0, f64::NAN, 2.5])),
    );
    let p = write_pipeline(
        tmp.path(),
        "p.toml",
        &pipeline_text(src, "column = \"title\"", ""),
    );
    let (code, s, err) = run_json(&p, tmp.path());
    assert_eq!(code, 3, "{err}");
    assert_eq!(s["rows_read"], 3);
    assert_eq!(s["rows_written"], 0);
    let letters = dead_letters(&tmp.path().join("db/t_failures.jsonl"));
    assert_eq!(letters.len(), 3, "{letters:#?}");
    assert!(
        letters
            .iter()
            .all(|l| l["kind"] == "bad_id" && l["id"].is_null()),
        "{letters:#?}"
    );
    assert!(letters[1]["message"].as_str().unwrap().contains("NaN"));
}
