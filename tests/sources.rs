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

#[test]
fn sample_csv_matches_sample_parquet() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    let src = format!(
        "type = \"csv\"\npath = \"{}\"\nid_column = \"id\"",
        sample("articles.csv").display()
    );
    let p = write_pipeline(
        tmp.path(),
        "p.toml",
        &pipeline_text(&src, "text = \"{title}\\n{body}\"", ""),
    );
    let (code, s, err) = run_json(&p, tmp.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(s["rows_written"], 240);
    let (_, schema) = table_info(&tmp.path().join("db"), "t");
    assert_eq!(
        schema.field_with_name("word_count").unwrap().data_type(),
        &arrow_schema::DataType::Int64,
        "types are inferred"
    );
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
