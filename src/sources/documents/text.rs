//! Plain text and markdown files: UTF-8 only (guessing an encoding would embed mojibake without
//! a word), line endings made `\n`, and a markdown file's title from its first `# ` heading.

use super::Refusal;
use crate::util::FailureKind;

/// The text of a `.txt` / `.md` file: UTF-8 (a leading BOM dropped), `\r\n` and lone `\r` line
/// endings made `\n`.
pub(super) fn decode(bytes: &[u8]) -> Result<String, Refusal> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        (
            FailureKind::Unreadable,
            format!(
                "not UTF-8 text; convert it (e.g. iconv -f latin1 -t utf-8) (the first byte \
                 that is not UTF-8 is at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    Ok(normalize_newlines(text))
}

/// `\r\n` and lone `\r` made `\n`, so offsets and paragraphs are the same on every platform.
pub(super) fn normalize_newlines(text: &str) -> String {
    if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text.to_string()
    }
}

/// The text of a markdown file's first level-1 ATX heading (`# Title`), outside front matter and
/// fenced code (where `#` starts a comment, not a heading).
pub(super) fn markdown_title(text: &str) -> Option<String> {
    let mut lines = text.lines().peekable();
    // YAML front matter: `---` on the first line, up to the next `---` or `...`.
    if lines.peek().is_some_and(|l| l.trim_end() == "---") {
        lines.next();
        for line in lines.by_ref() {
            if matches!(line.trim_end(), "---" | "...") {
                break;
            }
        }
    }
    let mut fence: Option<&str> = None;
    for line in lines {
        let body = line.trim_start_matches(' ');
        if line.len() - body.len() > 3 {
            // Indented code.
            continue;
        }
        if let Some(open) = fence {
            if body.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if let Some(open) = ["```", "~~~"].into_iter().find(|f| body.starts_with(f)) {
            fence = Some(open);
            continue;
        }
        let heading = match body.strip_prefix('#') {
            Some("") => "",
            Some(rest) if rest.starts_with([' ', '\t']) => rest,
            _ => continue,
        };
        let title = without_closing_hashes(heading.trim());
        if !title.is_empty() {
            return Some(title.to_string());
        }
    }
    None
}

/// A heading's text without its optional closing `#`s (`# Title ##`), which count only after a
/// space (`# C#` keeps its `#`).
fn without_closing_hashes(heading: &str) -> &str {
    let open = heading.trim_end_matches('#');
    if open.is_empty() {
        ""
    } else if open.len() < heading.len() && open.ends_with([' ', '\t']) {
        open.trim_end()
    } else {
        heading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_with_bom_and_crlf_is_normalised() {
        assert_eq!(
            decode(b"\xEF\xBB\xBFline one\r\nline two\rthree\n").unwrap(),
            "line one\nline two\nthree\n"
        );
        assert_eq!(decode("héllo".as_bytes()).unwrap(), "héllo");
    }

    #[test]
    fn latin1_is_refused_with_the_fix() {
        let (kind, message) = decode(b"caf\xe9 au lait").unwrap_err();
        assert_eq!(kind, FailureKind::Unreadable);
        assert!(
            message.contains("not UTF-8 text; convert it (e.g. iconv -f latin1 -t utf-8)"),
            "{message}"
        );
        assert!(message.contains("offset 3"), "{message}");
    }

    #[test]
    fn markdown_title_is_the_first_level_one_heading() {
        assert_eq!(
            markdown_title("intro\n## Sub\n# The Title ##\n# Later\n").as_deref(),
            Some("The Title")
        );
        assert_eq!(markdown_title("# C#\n").as_deref(), Some("C#"));
        assert_eq!(markdown_title("#hashtag\n## Only two\n"), None);
        assert_eq!(
            markdown_title("```sh\n# a comment\n```\n# Real\n").as_deref(),
            Some("Real")
        );
        assert_eq!(
            markdown_title("---\ntitle: x\n# yaml comment\n---\n\n# Doc\n").as_deref(),
            Some("Doc")
        );
        assert_eq!(markdown_title("    # indented code\n"), None);
        assert_eq!(
            markdown_title("#\n# \n#   Spaced   \n").as_deref(),
            Some("Spaced")
        );
    }
}
