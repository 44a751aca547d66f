//! The documents source through the built binary: a folder of text, markdown, HTML and PDF files
//! becomes one row per document, and every file that cannot be read is dead-lettered by name with
//! its reason; from a local folder and from an S3 prefix alike.

mod common;

use common::*;
use lopdf::content::{Content, Operation};
use lopdf::{Dictionary, Document, Object, Stream};
use std::path::Path;

fn name(n: &str) -> Object {
    Object::Name(n.as_bytes().to_vec())
}

/// A PDF with one page per entry of `pages` (its lines in Helvetica, 14 points apart) and
/// `title` in its information dictionary.
fn pdf_document(pages: &[&[&str]], title: Option<&str>) -> Document {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let mut font = Dictionary::new();
    font.set("Type", name("Font"));
    font.set("Subtype", name("Type1"));
    font.set("BaseFont", name("Helvetica"));
    let font_id = doc.add_object(font);
    let mut fonts = Dictionary::new();
    fonts.set("F1", Object::Reference(font_id));
    let mut resources = Dictionary::new();
    resources.set("Font", Object::Dictionary(fonts));
    let resources_id = doc.add_object(resources);
    let mut kids = Vec::new();
    for lines in pages {
        let mut operations = vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec![name("F1"), Object::Integer(12)]),
        ];
        for (i, line) in lines.iter().enumerate() {
            let (x, y) = if i == 0 { (72, 720) } else { (0, -14) };
            operations.push(Operation::new(
                "Td",
                vec![Object::Integer(x), Object::Integer(y)],
            ));
            operations.push(Operation::new("Tj", vec![Object::string_literal(*line)]));
        }
        operations.push(Operation::new("ET", vec![]));
        let content = Content { operations }.encode().unwrap();
        let content_id = doc.add_object(Stream::new(Dictionary::new(), content));
        let mut page = Dictionary::new();
        page.set("Type", name("Page"));
        page.set("Parent", Object::Reference(pages_id));
        page.set("Contents", Object::Reference(content_id));
        kids.push(Object::Reference(doc.add_object(page)));
    }
    let mut tree = Dictionary::new();
    tree.set("Type", name("Pages"));
    tree.set("Count", Object::Integer(kids.len() as i64));
    tree.set("Kids", Object::Array(kids));
    tree.set("Resources", Object::Reference(resources_id));
    tree.set(
        "MediaBox",
        Object::Array([0, 0, 612, 792].into_iter().map(Object::Integer).collect()),
    );
    doc.objects.insert(pages_id, Object::Dictionary(tree));
    let mut catalog = Dictionary::new();
    catalog.set("Type", name("Catalog"));
    catalog.set("Pages", Object::Reference(pages_id));
    let catalog_id = doc.add_object(catalog);
    doc.trailer.set("Root", Object::Reference(catalog_id));
    if let Some(title) = title {
        let mut info = Dictionary::new();
        info.set("Title", Object::string_literal(title));
        let info_id = doc.add_object(info);
        doc.trailer.set("Info", Object::Reference(info_id));
    }
    doc
}

fn pdf_bytes(mut doc: Document) -> Vec<u8> {
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    bytes
}

/// A PDF that needs a password to open (an `/Encrypt` dictionary the empty password fails).
fn locked_pdf() -> Vec<u8> {
    let mut doc = pdf_document(&[&["Secret"]], None);
    let mut encrypt = Dictionary::new();
    encrypt.set("Filter", name("Standard"));
    encrypt.set("V", Object::Integer(1));
    encrypt.set("R", Object::Integer(2));
    encrypt.set("O", Object::string_literal(vec![0x4Fu8; 32]));
    encrypt.set("U", Object::string_literal(vec![0x55u8; 32]));
    encrypt.set("P", Object::Integer(-4));
    let encrypt_id = doc.add_object(encrypt);
    doc.trailer.set("Encrypt", Object::Reference(encrypt_id));
    doc.trailer.set(
        "ID",
        Object::Array(vec![
            Object::string_literal(vec![1u8; 16]),
            Object::string_literal(vec![1u8; 16]),
        ]),
    );
    pdf_bytes(doc)
}

/// The documents `write_docs` writes that are read, sorted.
const GOOD: [&str; 4] = ["guide.md", "notes.txt", "page.html", "report.pdf"];

/// The documents `write_docs` writes that are dead-lettered: id, kind, and what the message says.
const BAD: [(&str, &str, &str); 6] = [
    (
        "big.txt",
        "too_large",
        "over the limit of 1000 bytes (max_document_bytes)",
    ),
    ("broken.pdf", "unreadable", "broken.pdf: "),
    ("empty.md", "empty_input", "the file is empty"),
    (
        "latin1.txt",
        "unreadable",
        "not UTF-8 text; convert it (e.g. iconv -f latin1 -t utf-8)",
    ),
    (
        "locked.pdf",
        "unreadable",
        "the PDF is encrypted; embedpipe cannot read it",
    ),
    (
        "scan.pdf",
        "empty_input",
        "no extractable text (a scanned document?); run OCR first",
    ),
];

/// Writes the folder `dir/docs`: every format, good and bad, and a file of no format the
/// source reads.
fn write_docs(dir: &Path) {
    let docs = dir.join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    let report = pdf_bytes(pdf_document(
        &[&["Page one"], &["Page two"]],
        Some("Quarterly report"),
    ));
    let scan = pdf_bytes(pdf_document(&[&[]], None));
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("guide.md", b"# Guide\n\nHow to brew coffee.\n".to_vec()),
        ("notes.txt", b"Plain notes about tea.\r\n".to_vec()),
        (
            "page.html",
            b"<html><head><title>Menu</title><style>p { color: red }</style></head>\
              <body><h1>Menu</h1><p>Espresso &amp; latte</p><script>track()</script></body></html>"
                .to_vec(),
        ),
        ("report.pdf", report),
        ("latin1.txt", b"caf\xe9 au lait".to_vec()),
        ("empty.md", Vec::new()),
        ("scan.pdf", scan),
        ("broken.pdf", b"%PDF-1.4\nthis is no PDF body".to_vec()),
        ("locked.pdf", locked_pdf()),
        ("big.txt", vec![b'x'; 2000]),
        ("slides.pptx", b"PK not a document".to_vec()),
    ];
    for (name, bytes) in files {
        std::fs::write(docs.join(name), bytes).unwrap();
    }
}

const SOURCE: &str = "type = \"documents\"\npath = \"docs\"\nmax_document_bytes = 1000";

/// Checks the dead letters of a run name every bad document with its reason.
fn check_letters(letters: &[serde_json::Value]) {
    let mut ids: Vec<&str> = letters.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(
        ids,
        BAD.iter().map(|b| b.0).collect::<Vec<_>>(),
        "{letters:#?}"
    );
    for (id, kind, says) in BAD {
        let letter = letters.iter().find(|l| l["id"] == id).unwrap();
        assert_eq!(letter["kind"], kind, "{letter:#}");
        assert_eq!(letter["step"], "read", "{letter:#}");
        let message = letter["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{id}: ")),
            "the message names the file: {message}"
        );
        assert!(message.contains(says), "{id}: {message}");
    }
}

#[test]
fn validate_counts_the_documents_it_found() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    write_docs(tmp.path());
    let p = write_pipeline(
        tmp.path(),
        "p.toml",
        &pipeline_text(SOURCE, "column = \"text\"", ""),
    );
    let out = embedpipe(&["validate", &p], tmp.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("source: 1 file(s), 10 rows"),
        "{}",
        out.stdout
    );
    let out = embedpipe(&["validate", &p, "--json"], tmp.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["source"]["rows"], 10, "{report:#}");
    assert_eq!(
        report["source"]["columns_read"],
        serde_json::json!(["path", "format", "title", "text", "page_starts", "size"])
    );
    assert!(report["source"]["id_column"].is_null());
    assert!(report["source"]["files"][0]
        .as_str()
        .unwrap()
        .ends_with("docs"));

    // A folder that does not exist is an error pointing at `path`.
    let p = write_pipeline(
        tmp.path(),
        "q.toml",
        &pipeline_text(
            "type = \"documents\"\npath = \"nowhere\"",
            "column = \"text\"",
            "",
        ),
    );
    let out = embedpipe(&["validate", &p], tmp.path());
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("document folder")
            && out.stderr.contains("does not exist or is not a folder"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_run_embeds_each_document_and_dead_letters_each_bad_file_with_its_reason() {
    ensure_model();
    let tmp = tempfile::tempdir().unwrap();
    write_docs(tmp.path());
    let p = write_pipeline(
        tmp.path(),
        "p.toml",
        &pipeline_text(SOURCE, "column = \"text\"", ""),
    );
    let out = embedpipe(&["run", &p, "--json"], tmp.path());
    assert_eq!(out.code, 3, "completed with failed rows: {}", out.stderr);
    let summary = json_summary(&out);
    assert_eq!(summary["rows_read"], 10, "{summary:#}");
    assert_eq!(summary["rows_written"], 4, "{summary:#}");
    assert_eq!(summary["rows_failed"], 6, "{summary:#}");
    check_letters(&dead_letters(&tmp.path().join("db/t_failures.jsonl")));

    let db = tmp.path().join("db");
    let ids = table_strings(&db, "t", "id");
    let paths = table_strings(&db, "t", "path");
    let formats = table_strings(&db, "t", "format");
    let titles = table_strings(&db, "t", "title");
    let texts = table_strings(&db, "t", "text");
    let mut rows: Vec<(&str, &str, &str, &str, &str)> = (0..ids.len())
        .map(|i| {
            (
                ids[i].as_str(),
                paths[i].as_str(),
                formats[i].as_str(),
                titles[i].as_str(),
                texts[i].as_str(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (
                "guide.md",
                "guide.md",
                "md",
                "Guide",
                "# Guide\n\nHow to brew coffee.\n"
            ),
            (
                "notes.txt",
                "notes.txt",
                "txt",
                "",
                "Plain notes about tea.\n"
            ),
            (
                "page.html",
                "page.html",
                "html",
                "Menu",
                "Menu\n\nEspresso & latte"
            ),
            (
                "report.pdf",
                "report.pdf",
                "pdf",
                "Quarterly report",
                "Page one\n\nPage two"
            ),
        ]
    );
    let (count, schema) = table_info(&db, "t");
    assert_eq!(count, GOOD.len());
    assert!(schema.field_with_name("page_starts").is_ok(), "{schema:?}");
    assert!(schema.field_with_name("vector").is_ok(), "{schema:?}");
}

#[test]
fn documents_are_listed_and_fetched_from_s3_as_from_a_folder() {
    use embedpipe_emulator::s3::LocalS3;
    let env = EmuEnv::new(embedpipe_emulator::Settings::default());
    let s3 = env
        .rt
        .block_on(LocalS3::start(
            ([127, 0, 0, 1], 0).into(),
            &env.path().join("s3"),
            &["data"],
            &[(TEST_KEY, TEST_SECRET)],
        ))
        .unwrap();
    write_docs(env.path());
    // s3-fs keeps a bucket as a folder: the same files under s3://data/library/.
    let bucket = s3.root.join("data").join("library");
    std::fs::create_dir_all(&bucket).unwrap();
    for entry in std::fs::read_dir(env.path().join("docs")).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), bucket.join(entry.file_name())).unwrap();
        }
    }
    let pipeline = |file: &str, path: &str, db: &str| {
        env.write(
            file,
            &format!(
                "[storage]\ns3_endpoint_url = \"{}\"\n\n\
                 [source]\ntype = \"documents\"\npath = \"{path}\"\nmax_document_bytes = 1000\n\n\
                 [[model]]\nname = \"m\"\nprovider = \"bedrock\"\n\
                 id = \"amazon.titan-embed-text-v2:0\"\ndimensions = 256\n\n\
                 [[embed]]\nmodel = \"m\"\ncolumn = \"text\"\n\n\
                 [sink]\nuri = \"{db}\"\ntable = \"t\"\nmode = \"overwrite\"\n",
                s3.endpoint()
            ),
        )
    };
    let remote = pipeline("remote.toml", "s3://data/library/", "remote-db");
    let local = pipeline("local.toml", "docs", "local-db");
    for (p, db) in [(&remote, "remote-db"), (&local, "local-db")] {
        let out = env.run(&["run", p, "--json"]);
        assert_eq!(out.code, 3, "{p}: {}", out.stderr);
        let summary = json_summary(&out);
        assert_eq!(summary["rows_written"], 4, "{p}: {summary:#}");
        assert_eq!(summary["rows_failed"], 6, "{p}: {summary:#}");
        check_letters(&dead_letters(&env.path().join(db).join("t_failures.jsonl")));
    }
    assert_eq!(
        table_vectors(&env.path().join("remote-db"), "t", "vector"),
        table_vectors(&env.path().join("local-db"), "t", "vector"),
        "the same documents, ids and vectors"
    );

    // A prefix holding no document fails before any call.
    let empty = pipeline("empty.toml", "s3://data/nothing/", "empty-db");
    let out = env.run(&["validate", &empty]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no documents under s3://data/nothing/"),
        "{}",
        out.stderr
    );
}
