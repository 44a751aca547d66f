//! HTML pages to plain text: parsed as a browser would (html5ever, through `scraper`), entities
//! decoded, markup, comments, scripts, styles and the `<head>` dropped (its `<title>` kept as the
//! title). Block elements end lines, and paragraphs, headings, lists and tables are set apart by
//! a blank line, so a chunker finds the paragraphs; nothing is wrapped or decorated.

use super::text::normalize_newlines;
use super::{Extracted, Refusal};
use crate::util::FailureKind;
use ego_tree::iter::Edge;
use ego_tree::NodeId;
use encoding_rs::{Encoding, UTF_8};
use scraper::{Html, Node};

/// Elements whose content is never text of the page.
const SKIPPED: &[&str] = &[
    "script", "style", "noscript", "template", "iframe", "object", "canvas", "svg",
];

/// Elements whose content keeps its whitespace.
const PREFORMATTED: &[&str] = &["pre", "listing", "plaintext", "textarea"];

/// The text and title of an HTML file.
pub(super) fn extract(bytes: &[u8]) -> Result<Extracted, Refusal> {
    let source = decode(bytes)?;
    let (title, text) = to_text(&source);
    Ok(Extracted {
        title,
        text,
        page_starts: None,
    })
}

/// The page's characters: a BOM's encoding, else UTF-8, else the `charset` the page declares
/// (older pages in windows-1252 and the like say so in a `<meta>`).
fn decode(bytes: &[u8]) -> Result<String, Refusal> {
    if let Some((encoding, bom)) = Encoding::for_bom(bytes) {
        let (text, _) = encoding.decode_without_bom_handling(&bytes[bom..]);
        return Ok(text.into_owned());
    }
    let error = match std::str::from_utf8(bytes) {
        Ok(text) => return Ok(text.to_string()),
        Err(e) => e,
    };
    match declared_charset(bytes) {
        Some(encoding) if encoding != UTF_8 => {
            let (text, _) = encoding.decode_without_bom_handling(bytes);
            Ok(text.into_owned())
        }
        _ => Err((
            FailureKind::Unreadable,
            format!(
                "not UTF-8 text; convert it (e.g. iconv -f latin1 -t utf-8) or declare its \
                 charset in a <meta charset> tag (the first byte that is not UTF-8 is at offset \
                 {})",
                error.valid_up_to()
            ),
        )),
    }
}

/// The encoding a page declares in its first 1024 bytes (`<meta charset="...">`, or
/// `content="text/html; charset=..."`), as a browser's prescan finds it.
fn declared_charset(bytes: &[u8]) -> Option<&'static Encoding> {
    let head = bytes[..bytes.len().min(1024)].to_ascii_lowercase();
    let at = head.windows(8).position(|w| w == b"charset=")? + 8;
    let label: Vec<u8> = head[at..]
        .iter()
        .skip_while(|b| matches!(b, b'"' | b'\'' | b' '))
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
        .copied()
        .collect();
    Encoding::for_label(&label)
}

/// The title (the first `<title>`, whitespace collapsed) and the text of a page.
pub(super) fn to_text(source: &str) -> (Option<String>, String) {
    let page = Html::parse_document(source);
    let mut out = Writer::default();
    let mut title: Option<String> = None;
    // The element whose content is being left out, until it closes.
    let mut skipping: Option<NodeId> = None;
    let mut in_head = false;
    let mut preformatted = 0usize;
    let mut lists = 0usize;
    for edge in page.tree.root().traverse() {
        match edge {
            Edge::Open(node) => {
                if skipping.is_some() {
                    continue;
                }
                match node.value() {
                    Node::Text(text) if !in_head => out.text(text, preformatted > 0),
                    Node::Element(element) => {
                        let name = element.name();
                        if name == "title" {
                            if title.is_none() {
                                let words: String = node
                                    .children()
                                    .filter_map(|c| match c.value() {
                                        Node::Text(t) => Some(&**t),
                                        _ => None,
                                    })
                                    .collect();
                                let words = words.split_whitespace().collect::<Vec<_>>().join(" ");
                                title = (!words.is_empty()).then_some(words);
                            }
                            skipping = Some(node.id());
                            continue;
                        }
                        if SKIPPED.contains(&name) {
                            skipping = Some(node.id());
                            continue;
                        }
                        match name {
                            "head" => in_head = true,
                            "br" => out.line_break(),
                            "ul" | "ol" | "menu" => lists += 1,
                            _ if PREFORMATTED.contains(&name) => preformatted += 1,
                            _ => {}
                        }
                        out.block(breaks_around(name, lists));
                    }
                    _ => {}
                }
            }
            Edge::Close(node) => {
                if let Some(id) = skipping {
                    if id == node.id() {
                        skipping = None;
                    }
                    continue;
                }
                if let Node::Element(element) = node.value() {
                    let name = element.name();
                    out.block(breaks_around(name, lists));
                    match name {
                        "head" => in_head = false,
                        "ul" | "ol" | "menu" => lists = lists.saturating_sub(1),
                        _ if PREFORMATTED.contains(&name) => {
                            preformatted = preformatted.saturating_sub(1)
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    (title, out.finish())
}

/// Line breaks an element puts before and after its content: a blank line around paragraphs,
/// headings, whole lists and tables, rows and other sections; a line end around lines, list
/// items and cells. `lists` counts the lists open, this one included: a list inside a list item
/// only starts a line.
fn breaks_around(name: &str, lists: usize) -> usize {
    match name {
        "ul" | "ol" | "menu" if lists > 1 => 1,
        "p" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul" | "ol" | "menu" | "dl" | "table"
        | "tr" | "blockquote" | "pre" | "listing" | "plaintext" | "hr" | "section" | "article"
        | "header" | "footer" | "nav" | "aside" | "main" | "figure" | "address" | "details"
        | "fieldset" | "form" => 2,
        "div" | "li" | "dt" | "dd" | "td" | "th" | "caption" | "figcaption" | "summary"
        | "legend" | "textarea" | "thead" | "tbody" | "tfoot" | "option" => 1,
        _ => 0,
    }
}

/// Builds the text: runs of whitespace become one space (outside preformatted content), and
/// line breaks wait until the next text, so that breaks of nested blocks merge into the largest
/// and none lead or trail.
#[derive(Default)]
struct Writer {
    out: String,
    /// Line ends owed before the next text (2: a blank line).
    breaks: usize,
    /// Whitespace seen since the last text.
    space: bool,
}

impl Writer {
    fn block(&mut self, breaks: usize) {
        self.breaks = self.breaks.max(breaks);
    }

    /// `<br>`: one more line end, at most a blank line.
    fn line_break(&mut self) {
        self.breaks = (self.breaks + 1).min(2);
    }

    fn text(&mut self, text: &str, preformatted: bool) {
        if preformatted {
            if !text.is_empty() {
                self.settle();
                self.out.push_str(&normalize_newlines(text));
            }
            return;
        }
        for c in text.chars() {
            if c.is_whitespace() {
                self.space = true;
            } else {
                self.settle();
                self.out.push(c);
            }
        }
    }

    /// Writes the line ends or the space owed before the next text.
    fn settle(&mut self) {
        // Nothing leads the text.
        if !self.out.is_empty() {
            if self.breaks > 0 {
                let have = self.out.chars().rev().take_while(|&c| c == '\n').count();
                for _ in have..self.breaks {
                    self.out.push('\n');
                }
            } else if self.space && !matches!(self.out.chars().next_back(), Some(' ' | '\n')) {
                self.out.push(' ');
            }
        }
        self.breaks = 0;
        self.space = false;
    }

    fn finish(self) -> String {
        self.out.trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>  Caf&eacute;   &amp; Co  </title>
  <style>body { color: red; }</style>
  <script>var hidden = "script text";</script>
</head>
<body>
  <!-- a comment nobody reads -->
  <nav><a href="/">Home</a> | <a href="/menu">Menu</a></nav>
  <h1>Our   story</h1>
  <p>Founded in 1990 &mdash; <b>still</b> here.<br>Open daily.</p>
  <noscript>Enable JavaScript</noscript>
  <template><p>template text</p></template>
  <ul>
    <li>Espresso &lt;strong&gt;</li>
    <li>Latte
      <ul><li>with oat milk</li></ul>
    </li>
  </ul>
  <table>
    <tr><th>Day</th><th>Hours</th></tr>
    <tr><td>Mon</td><td>8&ndash;18</td></tr>
  </table>
  <pre>  indented
    code</pre>
  <p>Last&nbsp;words.</p>
</body>
</html>"#;

    #[test]
    fn a_page_becomes_paragraphs_of_plain_text() {
        let (title, text) = to_text(PAGE);
        assert_eq!(title.as_deref(), Some("Café & Co"));
        assert_eq!(
            text,
            "Home | Menu\n\n\
             Our story\n\n\
             Founded in 1990 \u{2014} still here.\nOpen daily.\n\n\
             Espresso <strong>\n\
             Latte\n\
             with oat milk\n\n\
             Day\nHours\n\n\
             Mon\n8\u{2013}18\n\n  \
             indented\n    code\n\n\
             Last words."
        );
        for hidden in [
            "color",
            "script text",
            "comment",
            "JavaScript",
            "template text",
        ] {
            assert!(!text.contains(hidden), "{hidden} leaked: {text}");
        }
    }

    #[test]
    fn a_page_without_title_or_text() {
        let (title, text) = to_text("<html><head><script>x()</script></head><body> </body></html>");
        assert_eq!(title, None);
        assert_eq!(text, "");
        let e = super::super::extract(super::super::Format::Html, b"<p>  </p>").unwrap_err();
        assert_eq!(e.0, FailureKind::EmptyInput);
    }

    #[test]
    fn declared_charsets_are_honoured_and_undeclared_bytes_refused() {
        let latin1 = b"<html><head><meta charset=\"iso-8859-1\"></head><body>caf\xe9</body></html>";
        assert_eq!(extract(latin1).unwrap().text, "caf\u{e9}");
        let http_equiv = b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=windows-1252\"><p>\x93quoted\x94</p>";
        assert_eq!(extract(http_equiv).unwrap().text, "\u{201c}quoted\u{201d}");
        let (kind, message) = extract(b"<p>caf\xe9</p>").unwrap_err();
        assert_eq!(kind, FailureKind::Unreadable);
        assert!(message.contains("not UTF-8 text; convert it"), "{message}");
        assert_eq!(extract(b"\xEF\xBB\xBF<p>bom</p>").unwrap().text, "bom");
    }
}
