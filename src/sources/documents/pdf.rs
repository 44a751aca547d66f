//! PDF files: the text of each page (pdf-extract), pages joined by a blank line with the offset
//! where each starts (so chunks can name their page), and the title from the document's
//! information dictionary. The parser panics on some odd files: a panic is caught and the file
//! dead-lettered, so one file never ends a run.

use super::{panic_message, Extracted, Refusal};
use crate::util::FailureKind;
use lopdf::{Document, Object};
use pdf_extract::{output_doc_page, PlainTextOutput};

/// What joins the text of two pages.
const PAGE_BREAK: &str = "\n\n";

fn encrypted() -> Refusal {
    (
        FailureKind::Unreadable,
        "the PDF is encrypted; embedpipe cannot read it — save an unencrypted copy".to_string(),
    )
}

/// The text, page offsets and title of a PDF file.
pub(super) fn extract(bytes: &[u8]) -> Result<Extracted, Refusal> {
    match std::panic::catch_unwind(|| read_pages(bytes)) {
        Ok(extracted) => extracted,
        Err(panic) => Err((
            FailureKind::Unreadable,
            format!(
                "the PDF cannot be read: the PDF parser failed on it ({})",
                panic_message(&*panic)
            ),
        )),
    }
}

/// Whether the file's bytes name an `/Encrypt` dictionary (for a file the parser refused: an
/// encrypted file needs another fix than a damaged one).
fn declares_encryption(bytes: &[u8]) -> bool {
    bytes.windows(b"/Encrypt".len()).any(|w| w == b"/Encrypt")
}

fn read_pages(bytes: &[u8]) -> Result<Extracted, Refusal> {
    let mut doc = match Document::load_mem(bytes) {
        Ok(doc) => doc,
        Err(_) if declares_encryption(bytes) => return Err(encrypted()),
        Err(e) => return Err((FailureKind::Unreadable, format!("not a readable PDF: {e}"))),
    };
    // A file encrypted only to restrict printing or copying opens with the empty password (as
    // pdf-extract itself tries); one that needs a password to open cannot be read.
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(encrypted());
    }
    let numbers: Vec<u32> = doc.get_pages().into_keys().collect();
    if numbers.is_empty() {
        return Err((
            FailureKind::Unreadable,
            "the PDF has no pages (is it damaged?)".to_string(),
        ));
    }
    let mut pages = Vec::with_capacity(numbers.len());
    for number in numbers {
        let mut text = String::new();
        {
            let mut output = PlainTextOutput::new(&mut text);
            output_doc_page(&doc, &mut output, number).map_err(|e| {
                (
                    FailureKind::Unreadable,
                    format!("page {number} cannot be read: {e}"),
                )
            })?;
        }
        pages.push(text);
    }
    let (text, page_starts) = join_pages(&pages);
    Ok(Extracted {
        title: info_title(&doc),
        text,
        page_starts: Some(page_starts),
    })
}

/// The pages' text joined by [`PAGE_BREAK`] (each page's line endings made `\n`, its edges
/// trimmed), and the offset in Unicode scalar values where each page starts.
fn join_pages(pages: &[String]) -> (String, Vec<u64>) {
    let mut text = String::new();
    let mut starts = Vec::with_capacity(pages.len());
    let mut chars = 0u64;
    for (i, page) in pages.iter().enumerate() {
        if i > 0 {
            text.push_str(PAGE_BREAK);
            chars += PAGE_BREAK.chars().count() as u64;
        }
        starts.push(chars);
        let page = super::text::normalize_newlines(page);
        let page = page.trim();
        chars += page.chars().count() as u64;
        text.push_str(page);
    }
    (text, starts)
}

/// `/Title` of the document information dictionary, if it says anything.
fn info_title(doc: &Document) -> Option<String> {
    let resolve = |object: &Object| -> Option<Object> {
        match object {
            Object::Reference(id) => doc.get_object(*id).ok().cloned(),
            other => Some(other.clone()),
        }
    };
    let Object::Dictionary(info) = resolve(doc.trailer.get(b"Info").ok()?)? else {
        return None;
    };
    let Object::String(bytes, _) = resolve(info.get(b"Title").ok()?)? else {
        return None;
    };
    let title = decode_text_string(&bytes);
    let title = title
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then_some(title)
}

/// A PDF text string: UTF-16BE with its byte order mark, UTF-8 with its mark (PDF 2.0), else
/// PDFDocEncoding (Latin-1 but for a few typographic characters).
fn decode_text_string(bytes: &[u8]) -> String {
    if let Some(utf16) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        let units: Vec<u16> = utf16
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else if let Some(utf8) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        String::from_utf8_lossy(utf8).into_owned()
    } else {
        bytes.iter().map(|&b| pdf_doc_char(b)).collect()
    }
}

/// PDFDocEncoding's characters where they differ from Latin-1: 0x80 to 0xA0.
const PDF_DOC_HIGH: [char; 33] = [
    '\u{2022}', '\u{2020}', '\u{2021}', '\u{2026}', '\u{2014}', '\u{2013}', '\u{0192}', '\u{2044}',
    '\u{2039}', '\u{203A}', '\u{2212}', '\u{2030}', '\u{201E}', '\u{201C}', '\u{201D}', '\u{2018}',
    '\u{2019}', '\u{201A}', '\u{2122}', '\u{FB01}', '\u{FB02}', '\u{0141}', '\u{0152}', '\u{0160}',
    '\u{0178}', '\u{017D}', '\u{0131}', '\u{0142}', '\u{0153}', '\u{0161}', '\u{017E}', '\u{FFFD}',
    '\u{20AC}',
];

fn pdf_doc_char(b: u8) -> char {
    match b {
        0x80..=0xA0 => PDF_DOC_HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

/// Also makes the PDFs of the source's own tests.
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use lopdf::content::{Content, Operation};
    use lopdf::{Dictionary, Stream};

    fn name(n: &str) -> Object {
        Object::Name(n.as_bytes().to_vec())
    }

    /// A PDF of one page per entry of `pages` (the content operations after `BT /F1 12 Tf`,
    /// before `ET`), in Helvetica, with `title` in its information dictionary.
    pub(crate) fn pdf_with(pages: Vec<Vec<Operation>>, title: Option<&str>) -> Document {
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
        for operations in pages {
            let mut all = vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec![name("F1"), Object::Integer(12)]),
            ];
            all.extend(operations);
            all.push(Operation::new("ET", vec![]));
            let content = Content { operations: all }.encode().unwrap();
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

    pub(crate) fn save(mut doc: Document) -> Vec<u8> {
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        bytes
    }

    /// Text operations writing `lines` down the page, 14 points apart (one line each).
    pub(crate) fn lines(lines: &[&str]) -> Vec<Operation> {
        let mut ops = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let (x, y) = if i == 0 { (72, 720) } else { (0, -14) };
            ops.push(Operation::new(
                "Td",
                vec![Object::Integer(x), Object::Integer(y)],
            ));
            ops.push(Operation::new("Tj", vec![Object::string_literal(*line)]));
        }
        ops
    }

    /// The text of each page, cut out of `text` at `starts`.
    fn cut(text: &str, starts: &[u64]) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut ends: Vec<usize> = starts[1..]
            .iter()
            .map(|&s| s as usize - PAGE_BREAK.len())
            .collect();
        ends.push(chars.len());
        starts
            .iter()
            .zip(ends)
            .map(|(&s, e)| chars[s as usize..e].iter().collect())
            .collect()
    }

    #[test]
    fn pages_are_joined_with_their_start_offsets_and_the_title_is_read() {
        let bytes = save(pdf_with(
            vec![
                lines(&["Hello from page one", "still page one"]),
                lines(&["Page two"]),
                lines(&["Third and last page"]),
            ],
            Some("  Quarterly   report "),
        ));
        let e = extract(&bytes).unwrap();
        assert_eq!(e.title.as_deref(), Some("Quarterly report"));
        let starts = e.page_starts.clone().unwrap();
        assert_eq!(starts.len(), 3, "{e:?}");
        assert_eq!(starts[0], 0);
        assert_eq!(
            cut(&e.text, &starts),
            [
                "Hello from page one\nstill page one",
                "Page two",
                "Third and last page"
            ],
            "{e:?}"
        );
        assert_eq!(
            e.text,
            "Hello from page one\nstill page one\n\nPage two\n\nThird and last page"
        );
        assert_eq!(starts, [0, 36, 46]);
    }

    #[test]
    fn offsets_count_characters_not_bytes() {
        let pages = [
            "  Ünïcödé page\r\n".to_string(),
            "日本語".to_string(),
            String::new(),
        ];
        let (text, starts) = join_pages(&pages);
        assert_eq!(text, "Ünïcödé page\n\n日本語\n\n");
        assert_eq!(starts, [0, 14, 19]);
        assert_eq!(text.chars().skip(14).take(3).collect::<String>(), "日本語");
    }

    #[test]
    fn a_pdf_without_text_asks_for_ocr() {
        let bytes = save(pdf_with(vec![vec![], vec![]], None));
        let e = extract(&bytes).unwrap();
        assert_eq!(e.title, None);
        assert!(e.text.trim().is_empty(), "{e:?}");
        let (kind, message) = super::super::extract(super::super::Format::Pdf, &bytes).unwrap_err();
        assert_eq!(kind, FailureKind::EmptyInput);
        assert!(message.contains("no extractable text"), "{message}");
        assert!(message.contains("run OCR first"), "{message}");
    }

    #[test]
    fn an_encrypted_pdf_is_refused_with_what_to_do() {
        let mut doc = pdf_with(vec![lines(&["Secret"])], None);
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
        let (kind, message) = extract(&save(doc)).unwrap_err();
        assert_eq!(kind, FailureKind::Unreadable);
        assert_eq!(
            message,
            "the PDF is encrypted; embedpipe cannot read it — save an unencrypted copy"
        );
    }

    #[test]
    fn a_corrupt_pdf_is_refused_not_a_panic() {
        let mut bytes = b"%PDF-1.7\n".to_vec();
        let mut x = 0x2545_4F46_u32;
        for _ in 0..4096 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            bytes.push((x >> 24) as u8);
        }
        assert!(!declares_encryption(&bytes));
        let (kind, message) = extract(&bytes).unwrap_err();
        assert_eq!(kind, FailureKind::Unreadable, "{message}");
    }

    #[test]
    fn a_page_that_makes_the_parser_panic_is_refused() {
        // `Tj` takes a string; pdf-extract panics on anything else.
        let bytes = save(pdf_with(
            vec![vec![Operation::new("Tj", vec![Object::Integer(5)])]],
            None,
        ));
        let (kind, message) = extract(&bytes).unwrap_err();
        assert_eq!(kind, FailureKind::Unreadable);
        assert!(message.contains("parser failed"), "{message}");
    }

    #[test]
    fn text_strings_decode_utf16_and_pdf_doc_encoding() {
        assert_eq!(
            decode_text_string(&[0xFE, 0xFF, 0x00, 0x52, 0x00, 0xE9, 0x65, 0xE5]),
            "Ré\u{65E5}"
        );
        assert_eq!(
            decode_text_string(b"caf\xe9 \x84 \x92"),
            "café \u{2014} \u{2122}"
        );
        assert_eq!(decode_text_string(b"\xEF\xBB\xBFna\xC3\xAFve"), "naïve");
    }
}
