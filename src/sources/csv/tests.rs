//! CSV source tests: framing, line numbers, type inference, ids and failure messages.

use super::decode::strip_arrow_line;
use super::*;
use std::path::Path;

/// A CSV pipeline over `csv` (written into `dir`), with extra `[source]` keys.
fn pipeline(dir: &Path, csv: &[u8], source_extra: &str) -> SourceSettings {
    let path = dir.join("d.csv");
    std::fs::write(&path, csv).unwrap();
    let text = format!(
        "[source]\ntype = \"csv\"\npath = \"{}\"\n{source_extra}\n\n\
         [[model]]\nname = \"minilm\"\nprovider = \"local\"\n\
         id = \"sentence-transformers/all-MiniLM-L6-v2\"\n\n\
         [[embed]]\nmodel = \"minilm\"\ncolumn = \"title\"\n\n\
         [sink]\nuri = \"db\"\ntable = \"t\"\n",
        path.display()
    );
    SourceSettings::resolve(&crate::resolve::parse(&dir.join("p.toml"), &text).unwrap())
}

/// Reads the whole source: (id, row) of every row read, and the failures.
fn read_all(s: &SourceSettings) -> (Vec<(String, u64)>, Vec<ReadFailure>) {
    let survey = crate::sources::survey_now(s).unwrap();
    let columns = survey.column_names();
    let id = crate::sources::id_column(s, |c| columns.iter().any(|n| n == c));
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for sb in open(s, &survey, &columns, id, None).unwrap() {
        let sb = sb.unwrap();
        rows.extend((0..sb.rows.len()).map(|i| (sb.ids.value(i).to_string(), sb.rows[i])));
        failures.extend(sb.failures);
    }
    (rows, failures)
}

fn ids(rows: &[(String, u64)]) -> Vec<&str> {
    rows.iter().map(|(id, _)| id.as_str()).collect()
}

fn lines(rows: &[(String, u64)]) -> Vec<u64> {
    rows.iter().map(|(_, line)| *line).collect()
}

#[test]
fn type_guessing_widens() {
    assert!(matches!(merge(guess(b"1"), guess(b"2.5")), Guess::Float));
    assert!(matches!(merge(guess(b"1"), guess(b"x")), Guess::Text));
    assert!(matches!(merge(guess(b""), guess(b"true")), Guess::Bool));
}

#[test]
fn ids_are_read_as_text_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        b"id,title\n007,a\n7,b\n0042,c\n42,d\n1e3,e\n",
        "",
    );
    let survey = crate::sources::survey_now(&p).unwrap();
    assert_eq!(
        survey.schema.field_with_name("id").unwrap().data_type(),
        &DataType::Utf8
    );
    let (rows, failures) = read_all(&p);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(ids(&rows), ["007", "7", "0042", "42", "1e3"]);

    // `id_column`, even when `[source.schema]` calls it a number.
    let p = pipeline(
        dir.path(),
        b"sku,title\n007,a\n7,b\n",
        "id_column = \"sku\"\n[source.schema]\nsku = \"int64\"",
    );
    let (rows, failures) = read_all(&p);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(ids(&rows), ["007", "7"]);

    // A column `id` that the projection leaves out is no id: its type is inferred.
    let p = pipeline(dir.path(), b"id,title\n007,a\n", "columns = [\"title\"]");
    let survey = crate::sources::survey_now(&p).unwrap();
    assert_eq!(
        survey.schema.field_with_name("id").unwrap().data_type(),
        &DataType::Int64
    );

    // Blank ids are missing, not ids.
    let p = pipeline(dir.path(), b"id,title\n1,a\n  ,b\n,c\n", "");
    let (rows, failures) = read_all(&p);
    assert_eq!(ids(&rows), ["1"]);
    let kinds: Vec<_> = failures.iter().map(|f| (f.kind, f.row)).collect();
    assert_eq!(
        kinds,
        [
            (FailureKind::MissingId, Some(3)),
            (FailureKind::MissingId, Some(4))
        ]
    );
}

#[test]
fn rows_are_the_lines_records_start_on_for_lf_crlf_and_cr() {
    let dir = tempfile::tempdir().unwrap();
    let lf = "\nid,title\n1,a\n\n2,b\n3,\"x\ny\"\n\n\n4,c\n5,d,extra\n";
    for (name, text) in [
        ("LF", lf.to_string()),
        ("CRLF", lf.replace('\n', "\r\n")),
        ("CR", lf.replace('\n', "\r")),
    ] {
        for batch in ["", "batch_size = 1"] {
            let p = pipeline(dir.path(), text.as_bytes(), batch);
            let (rows, failures) = read_all(&p);
            assert_eq!(ids(&rows), ["1", "2", "3", "4"], "{name}");
            assert_eq!(lines(&rows), [3, 5, 6, 10], "{name} {batch}");
            assert_eq!(failures.len(), 1, "{name}: {failures:?}");
            assert_eq!(failures[0].row, Some(11), "{name}: {failures:?}");
            assert_eq!(
                failures[0].message,
                "line 11: has 3 fields, the header has 2"
            );
        }
    }
}

#[test]
fn a_quote_left_open_at_the_end_is_a_malformed_row() {
    let dir = tempfile::tempdir().unwrap();
    let lf = "id,title\n1,hello\n2,\"broken\n3,third\n";
    for text in [lf.to_string(), lf.replace('\n', "\r")] {
        for batch in ["", "batch_size = 1"] {
            let p = pipeline(dir.path(), text.as_bytes(), batch);
            let (rows, failures) = read_all(&p);
            assert_eq!(rows, [("1".to_string(), 2)], "{text:?} {batch}");
            assert_eq!(failures.len(), 1, "{failures:?}");
            let f = &failures[0];
            assert_eq!(
                (f.kind, f.row, f.id.as_deref()),
                (FailureKind::MalformedRow, Some(3), Some("2"))
            );
            assert_eq!(
                f.message,
                "line 3: the quoted field opened on line 3 is not closed before the end of the file"
            );
        }
    }
    // The record starts on line 2; its last field opens a quote on line 3.
    let p = pipeline(dir.path(), b"id,title,n\n1,\"a\nb\",\"open\n", "");
    let (rows, failures) = read_all(&p);
    assert!(rows.is_empty());
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        (failures[0].row, failures[0].id.as_deref()),
        (Some(2), Some("1"))
    );
    assert!(
        failures[0]
            .message
            .starts_with("line 2: the quoted field opened on line 3 "),
        "{}",
        failures[0].message
    );
    // With the id in the open field, the id is not known.
    let p = pipeline(dir.path(), b"title,id\na,\"1\n", "");
    let (_, failures) = read_all(&p);
    assert_eq!(
        (failures[0].kind, failures[0].id.as_deref()),
        (FailureKind::MalformedRow, None)
    );
    // A header left open is an error of the file.
    let p = pipeline(dir.path(), b"id,\"title\n1,a\n", "");
    let err = crate::sources::survey_now(&p)
        .err()
        .expect("an open header fails");
    assert!(err.to_string().contains("is not closed"), "{err}");
}

#[test]
fn closed_and_literal_quotes_are_not_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    for (text, quote) in [
        ("\"id\",\"title\"\n1,\"ok\"", ""),
        (
            "id,title\n1,\"a \"\"quoted\"\" word\"\n2,5\" disk\n3,\"x\"y\n",
            "",
        ),
        ("id,title\n1,\"\"\n", ""),
        ("id,title\n1,5\" disk\n2,'a,b'\n", "quote = \"'\""),
    ] {
        let p = pipeline(dir.path(), text.as_bytes(), quote);
        let (rows, failures) = read_all(&p);
        assert!(failures.is_empty(), "{text:?}: {failures:?}");
        assert!(!rows.is_empty(), "{text:?}");
    }
}

#[test]
fn unreadable_rows_carry_their_id_and_plain_messages() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        b"id,title,price\n1,a,1.5\n2,b,abc\n\n3,c,2\n4,d,2,extra\n5,\xff,3\n",
        "[source.schema]\nprice = \"float64\"",
    );
    let (rows, failures) = read_all(&p);
    assert_eq!(rows, [("1".to_string(), 2), ("3".to_string(), 5)]);
    let find = |kind: FailureKind, row: u64| {
        failures
            .iter()
            .find(|f| f.kind == kind && f.row == Some(row))
            .unwrap_or_else(|| panic!("{kind} at {row}: {failures:?}"))
    };
    let bad = find(FailureKind::BadValue, 3);
    assert_eq!(bad.id.as_deref(), Some("2"));
    assert_eq!(
        bad.message,
        "line 3: value `abc` of column `price` is not a float64"
    );
    let ragged = find(FailureKind::MalformedRow, 6);
    assert_eq!(ragged.id.as_deref(), Some("4"));
    let utf8 = find(FailureKind::BadValue, 7);
    assert_eq!(utf8.id.as_deref(), Some("5"));
    assert_eq!(
        utf8.message,
        "line 7: value of column `title` is not valid UTF-8"
    );
    assert_eq!(failures.len(), 3, "{failures:?}");

    // A ragged row's fields may be shifted: only a first-column id is named.
    let p = pipeline(dir.path(), b"title,id\na,1\nb,x,2\n", "");
    let (_, failures) = read_all(&p);
    assert_eq!(
        (failures[0].row, failures[0].id.as_deref()),
        (Some(3), None)
    );
}

#[test]
fn arrow_messages_lose_their_buffer_lines() {
    assert_eq!(
        strip_arrow_line("Csv error: Encountered invalid UTF-8 data for line 1 and field 2"),
        "Encountered invalid UTF-8 data"
    );
    assert_eq!(
        strip_arrow_line(
            "Parser error: Error while parsing value 'abc' as type 'Float64' for column 2 at line 0. Row data: '[2,b,abc]'"
        ),
        "Error while parsing value 'abc' as type 'Float64'"
    );
}
