//! Documents source tests: formats, refusals, filters and the rows a folder becomes.

use super::pdf::tests::{lines, pdf_with, save};
use super::*;
use crate::resolve::SourceSettings;
use arrow::array::{Array, ListArray};

#[test]
fn formats_come_from_the_extension_whatever_its_case() {
    assert_eq!(Format::of("a/b.txt"), Some(Format::Txt));
    assert_eq!(Format::of("README.MD"), Some(Format::Md));
    assert_eq!(Format::of("x.markdown"), Some(Format::Md));
    assert_eq!(Format::of("index.htm"), Some(Format::Html));
    assert_eq!(Format::of("Scan.PDF"), Some(Format::Pdf));
    assert_eq!(Format::of("notes.docx"), None);
    assert_eq!(Format::of("Makefile"), None);
    assert_eq!(Format::Html.as_str(), "html");
}

#[test]
fn the_schema_is_the_documents_contract() {
    let schema = schema();
    let columns: Vec<(&str, &DataType, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type(), f.is_nullable()))
        .collect();
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true)));
    assert_eq!(
        columns,
        [
            ("path", &DataType::Utf8, false),
            ("format", &DataType::Utf8, false),
            ("title", &DataType::Utf8, true),
            ("text", &DataType::Utf8, false),
            ("page_starts", &list, true),
            ("size", &DataType::UInt64, false),
        ]
    );
}

#[test]
fn text_and_markdown_are_kept_as_written() {
    let md = extract(
        Format::Md,
        b"Intro\r\n\r\n# Title\r\n\r\n## Part\r\ntext\r\n",
    )
    .unwrap();
    assert_eq!(md.title.as_deref(), Some("Title"));
    assert_eq!(md.text, "Intro\n\n# Title\n\n## Part\ntext\n");
    assert_eq!(md.page_starts, None);
    let txt = extract(Format::Txt, b"# not a title in a .txt").unwrap();
    assert_eq!(txt.title, None);
}

#[test]
fn empty_and_non_utf8_files_are_refused() {
    for format in [Format::Txt, Format::Md, Format::Html, Format::Pdf] {
        let (kind, message) = extract(format, b"").unwrap_err();
        assert_eq!(kind, FailureKind::EmptyInput, "{format:?}");
        assert_eq!(message, "the file is empty");
    }
    let (kind, message) = extract(Format::Txt, b" \n\t\r\n").unwrap_err();
    assert_eq!(kind, FailureKind::EmptyInput);
    assert!(message.contains("only whitespace"), "{message}");
    let (kind, message) = extract(Format::Md, b"# Caf\xe9").unwrap_err();
    assert_eq!(kind, FailureKind::Unreadable);
    assert!(
        message.starts_with("not UTF-8 text; convert it (e.g. iconv -f latin1 -t utf-8)"),
        "{message}"
    );
}

/// A documents source over `dir/docs`, with `extra` keys in [source].
fn settings(dir: &Path, extra: &str) -> SourceSettings {
    let text = format!(
        "[source]\ntype = \"documents\"\npath = \"{}\"\n{extra}\n\n\
         [[model]]\nname = \"minilm\"\nprovider = \"local\"\n\
         id = \"sentence-transformers/all-MiniLM-L6-v2\"\n\n\
         [[embed]]\nmodel = \"minilm\"\ncolumn = \"text\"\n\n\
         [sink]\nuri = \"db\"\ntable = \"t\"\n",
        dir.join("docs").display()
    );
    SourceSettings::resolve(&crate::resolve::parse(&dir.join("p.toml"), &text).unwrap())
}

/// One row of the source, read back.
#[derive(Debug, PartialEq)]
struct Row {
    path: String,
    format: String,
    title: Option<String>,
    text: String,
    page_starts: Option<Vec<u64>>,
    size: u64,
}

fn rows_of(sb: &SourceBatch) -> Vec<Row> {
    let batch = &sb.batch;
    let text = |name: &str| -> StringArray {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .unwrap()
            .clone()
    };
    let (path, format, title, body) = (text("path"), text("format"), text("title"), text("text"));
    let pages = batch
        .column_by_name(PAGE_STARTS)
        .and_then(|c| c.as_any().downcast_ref::<ListArray>())
        .unwrap();
    let size = batch
        .column_by_name("size")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .unwrap();
    (0..batch.num_rows())
        .map(|i| {
            assert_eq!(sb.ids.value(i), path.value(i), "the id is the path");
            Row {
                path: path.value(i).to_string(),
                format: format.value(i).to_string(),
                title: title.is_valid(i).then(|| title.value(i).to_string()),
                text: body.value(i).to_string(),
                page_starts: pages.is_valid(i).then(|| {
                    let starts = pages.value(i);
                    let starts = starts.as_any().downcast_ref::<UInt64Array>().unwrap();
                    starts.values().to_vec()
                }),
                size: size.value(i),
            }
        })
        .collect()
}

/// Reads the whole source: its rows, its failures, the rows its survey counted and the number
/// of batches.
fn read_all(s: &SourceSettings) -> (Vec<Row>, Vec<ReadFailure>, Option<u64>, usize) {
    let survey = crate::sources::survey_now(s).unwrap();
    let columns = survey.column_names();
    let (mut rows, mut failures, mut batches) = (Vec::new(), Vec::new(), 0);
    for sb in crate::sources::open(s, &survey, &columns, None, None).unwrap() {
        let sb = sb.unwrap();
        assert!(sb.rows.iter().all(|&r| r == 0));
        rows.extend(rows_of(&sb));
        failures.extend(sb.failures);
        batches += 1;
    }
    (rows, failures, survey.total_rows(), batches)
}

/// A folder of good and bad documents in `dir/docs`.
fn write_folder(dir: &Path) {
    let docs = dir.join("docs");
    for sub in ["sub", "drafts"] {
        std::fs::create_dir_all(docs.join(sub)).unwrap();
    }
    let pdf = save(pdf_with(
        vec![lines(&["Page one"]), lines(&["Page two"])],
        Some("Report"),
    ));
    let scan = save(pdf_with(vec![vec![]], None));
    let files: [(&str, &[u8]); 13] = [
        ("a.txt", b"Plain text\r\nsecond line"),
        ("b.md", b"# Guide\n\nBody"),
        (
            "c.html",
            b"<html><head><title>Page</title><script>no()</script></head>\
              <body><h1>Hi</h1><p>Hello &amp; welcome</p></body></html>",
        ),
        ("d.pdf", &pdf),
        ("e.txt", b"caf\xe9"),
        ("empty.md", b""),
        ("scan.pdf", &scan),
        ("big.txt", &[b'x'; 2000]),
        ("UPPER.TXT", b"upper"),
        ("notes.docx", b"PK not read"),
        ("broken.pdf", b"%PDF-1.4\nnot really"),
        ("sub/deep.txt", b"deep"),
        ("drafts/wip.md", b"# Draft"),
    ];
    for (name, bytes) in files {
        std::fs::write(docs.join(name), bytes).unwrap();
    }
}

#[test]
fn a_folder_becomes_one_row_per_document_and_bad_files_are_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    let s = settings(
        tmp.path(),
        "exclude = [\"drafts/**\"]\nmax_document_bytes = 1000",
    );
    let (rows, failures, counted, _) = read_all(&s);
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "UPPER.TXT",
            "a.txt",
            "b.md",
            "c.html",
            "d.pdf",
            "sub/deep.txt"
        ],
        "sorted; .docx not included, drafts excluded"
    );
    assert_eq!(counted, Some((rows.len() + failures.len()) as u64));
    let row = |p: &str| rows.iter().find(|r| r.path == p).unwrap();
    assert_eq!(
        row("a.txt"),
        &Row {
            path: "a.txt".into(),
            format: "txt".into(),
            title: None,
            text: "Plain text\nsecond line".into(),
            page_starts: None,
            size: 23,
        }
    );
    assert_eq!(row("b.md").title.as_deref(), Some("Guide"));
    assert_eq!(row("b.md").text, "# Guide\n\nBody");
    assert_eq!(row("c.html").format, "html");
    assert_eq!(row("c.html").title.as_deref(), Some("Page"));
    assert_eq!(row("c.html").text, "Hi\n\nHello & welcome");
    let pdf = row("d.pdf");
    assert_eq!(pdf.format, "pdf");
    assert_eq!(pdf.title.as_deref(), Some("Report"));
    assert_eq!(pdf.text, "Page one\n\nPage two");
    assert_eq!(pdf.page_starts.as_deref(), Some(&[0, 10][..]));
    assert_eq!(row("UPPER.TXT").format, "txt");

    let failed: Vec<(&str, FailureKind, &str)> = failures
        .iter()
        .map(|f| (f.id.as_deref().unwrap(), f.kind, f.message.as_str()))
        .collect();
    let of = |id: &str| {
        failed
            .iter()
            .find(|f| f.0 == id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {failed:?}"))
    };
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert_eq!(
        of("big.txt").1,
        FailureKind::TooLarge,
        "refused before it is read"
    );
    assert_eq!(
        of("big.txt").2,
        "big.txt: 2000 bytes is over the limit of 1000 bytes (max_document_bytes)"
    );
    assert_eq!(of("e.txt").1, FailureKind::Unreadable);
    assert!(
        of("e.txt")
            .2
            .starts_with("e.txt: not UTF-8 text; convert it (e.g. iconv -f latin1 -t utf-8)"),
        "{failed:?}"
    );
    assert_eq!(of("empty.md").1, FailureKind::EmptyInput);
    assert_eq!(of("scan.pdf").1, FailureKind::EmptyInput);
    assert!(of("scan.pdf").2.contains("run OCR first"), "{failed:?}");
    assert_eq!(of("broken.pdf").1, FailureKind::Unreadable);
    assert!(of("broken.pdf").2.starts_with("broken.pdf: "), "{failed:?}");
    for f in &failures {
        let id = f.id.as_deref().unwrap();
        assert!(f.file.ends_with(&format!("docs/{id}")), "{}", f.file);
        assert!(!f.hides_later_rows);
    }
}

#[test]
fn include_exclude_recursive_and_batches() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());

    // A written include is matched as written; files of no known format are dead-lettered.
    let (rows, failures, _, _) = read_all(&settings(
        tmp.path(),
        "include = [\"**/*\"]\nexclude = [\"*.pdf\", \"big.txt\", \"e.txt\", \"empty.md\"]",
    ));
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "UPPER.TXT",
            "a.txt",
            "b.md",
            "c.html",
            "drafts/wip.md",
            "sub/deep.txt"
        ]
    );
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].id.as_deref(), Some("notes.docx"));
    assert!(
        failures[0]
            .message
            .starts_with("notes.docx: not a document embedpipe reads (.docx files are not)"),
        "{}",
        failures[0].message
    );

    // `*` stays in one folder; without `recursive`, only the folder's own level.
    let (rows, _, _, _) = read_all(&settings(tmp.path(), "include = [\"*.md\", \"sub/*\"]"));
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["b.md", "sub/deep.txt"]);
    let (rows, failures, counted, _) = read_all(&settings(
        tmp.path(),
        "recursive = false\nexclude = [\"*.pdf\", \"e.txt\", \"empty.md\", \"big.txt\"]",
    ));
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["UPPER.TXT", "a.txt", "b.md", "c.html"]);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(counted, Some(4));

    // Batches hold at most `batch_size` documents; failures ride along.
    let (rows, failures, _, batches) = read_all(&settings(tmp.path(), "batch_size = 2"));
    assert_eq!(rows.len() + failures.len(), 12, "{failures:?}");
    assert!(batches >= 6, "{batches} batches");
}
