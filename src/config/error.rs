//! Pipeline-file errors that point at the offending file, line and column.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// An error in a pipeline file, with the position it refers to (boxed: errors are rare, results
/// are everywhere).
#[derive(Debug, Clone)]
pub struct ConfigError(Box<ConfigErrorDetail>);

/// What a [`ConfigError`] says.
#[derive(Debug, Clone)]
pub struct ConfigErrorDetail {
    pub file: PathBuf,
    /// 1-based line and column, when the error has a position.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The offending source line, for display.
    pub snippet: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl std::ops::Deref for ConfigError {
    type Target = ConfigErrorDetail;
    fn deref(&self) -> &ConfigErrorDetail {
        &self.0
    }
}

impl std::ops::DerefMut for ConfigError {
    fn deref_mut(&mut self) -> &mut ConfigErrorDetail {
        &mut self.0
    }
}

impl ConfigError {
    /// An error with no position in the file (e.g. the file cannot be read).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self(Box::new(ConfigErrorDetail {
            file: file.to_path_buf(),
            line: None,
            column: None,
            snippet: None,
            message: message.into(),
            help: None,
        }))
    }

    /// An error at `span` (byte offsets) of `text`.
    pub fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let mut err = Self::whole_file(file, message);
        if let Some(span) = span {
            let start = span.start.min(text.len());
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            err.line = Some(text[..start].matches('\n').count() + 1);
            err.column = Some(text[line_start..start].chars().count() + 1);
            err.snippet = Some(
                text[line_start..line_end]
                    .trim_end_matches('\r')
                    .to_string(),
            );
        }
        err
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line:col` (or just the file).
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{}:{}", self.file.display(), l, c),
            _ => self.file.display().to_string(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.location(), self.message)?;
        if let (Some(line), Some(col), Some(snippet)) = (self.line, self.column, &self.snippet) {
            let gutter = line.to_string().len();
            writeln!(f, "{:gutter$} |", "")?;
            writeln!(f, "{line} | {snippet}")?;
            writeln!(f, "{:gutter$} | {:>col$}", "", "^")?;
        }
        if let Some(help) = &self.help {
            writeln!(f, "help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_l = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (c, strsim::jaro_winkler(&word_l, &c.to_ascii_lowercase())))
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

/// Adds "did you mean" and the allowed values to serde's unknown field / unknown variant messages.
pub(crate) fn explain_serde_message(message: &str) -> (String, Option<String>) {
    let message = message.trim().to_string();
    for prefix in ["unknown field `", "unknown variant `"] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some(end) = rest.find('`') else { continue };
        let word = &rest[..end];
        let expected: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
        let what = if prefix.contains("field") {
            "key"
        } else {
            "value"
        };
        let mut help = String::new();
        if let Some(best) = did_you_mean(word, expected.iter().copied()) {
            help.push_str(&format!("did you mean `{best}`? "));
        }
        if expected.is_empty() {
            help.push_str("this table takes no keys");
        } else {
            help.push_str(&format!("allowed {what}s: {}", expected.join(", ")));
        }
        return (format!("unknown {what} `{word}`"), Some(help));
    }
    (message, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_is_one_based_line_and_column() {
        let text = "a = 1\nbb = 2\n";
        let e = ConfigError::at(Path::new("p.toml"), text, Some(6..8), "bad");
        assert_eq!((e.line, e.column), (Some(2), Some(1)));
        assert_eq!(e.snippet.as_deref(), Some("bb = 2"));
        assert!(e.to_string().starts_with("p.toml:2:1: bad"));
    }

    #[test]
    fn unknown_field_gets_suggestion_and_allowed_list() {
        let (msg, help) = explain_serde_message(
            "unknown field `colums`, expected one of `path`, `columns`, `type`",
        );
        assert_eq!(msg, "unknown key `colums`");
        let help = help.unwrap();
        assert!(help.contains("did you mean `columns`?"), "{help}");
        assert!(help.contains("allowed keys: path, columns, type"), "{help}");
    }

    #[test]
    fn unknown_variant_lists_values() {
        let (msg, help) = explain_serde_message(
            "unknown variant `overwrit`, expected one of `create`, `overwrite`, `append`",
        );
        assert_eq!(msg, "unknown value `overwrit`");
        assert!(help.unwrap().contains("did you mean `overwrite`?"));
    }

    #[test]
    fn no_suggestion_for_unrelated_word() {
        assert_eq!(did_you_mean("zzz", ["path", "columns"]), None);
    }
}
