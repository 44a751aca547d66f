//! The embed steps of a pipeline: each `[[embed]]` table built into one [`Step`] (its model
//! checked to take the input by the resolve layer), and the text templates (`"{title}\n{body}"`)
//! their inputs may be.

use super::file::Modality;
use std::ops::Range;

/// One embed step, built from its `[[embed]]` table.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub model_index: usize,
    pub input: StepInput,
    pub vector: String,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepInput {
    Column(String),
    Template(Template),
    Image(String),
    /// A text (template) and an image embedded together into one vector.
    TextImage(Template, String),
    /// Video or audio files (paths or `s3://` URIs), embedded by async jobs into segments.
    Media(String, MediaModality),
}

/// How a media step tells video from audio.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaModality {
    /// From the extension, then magic bytes.
    Auto,
    Fixed(Modality),
    /// A column holding `video` or `audio`.
    Column(String),
}

impl StepInput {
    pub fn modality(&self) -> Modality {
        match self {
            StepInput::Image(_) | StepInput::TextImage(..) => Modality::Image,
            StepInput::Media(..) => Modality::Video,
            _ => Modality::Text,
        }
    }

    /// Source columns this input reads.
    pub fn columns(&self) -> Vec<String> {
        match self {
            StepInput::Column(c) | StepInput::Image(c) => vec![c.clone()],
            StepInput::Media(c, MediaModality::Column(m)) => vec![c.clone(), m.clone()],
            StepInput::Media(c, _) => vec![c.clone()],
            StepInput::Template(t) => t.columns(),
            StepInput::TextImage(t, i) => {
                let mut c = t.columns();
                c.push(i.clone());
                c
            }
        }
    }
}

/// A text template: literal text and `{column}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    Literal(String),
    Column(String),
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(format!("unclosed `{{{name}` in template (write `{{{{` for a literal brace)")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(
                            "empty `{}` placeholder in template: put a column name inside".into(),
                        );
                    }
                    if !lit.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(TemplatePart::Column(name));
                }
                '}' => return Err("stray `}` in template (write `}}` for a literal brace)".into()),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(TemplatePart::Literal(lit));
        }
        if !parts.iter().any(|p| matches!(p, TemplatePart::Column(_))) {
            return Err(
                "template has no `{column}` placeholder, so every row would embed the same text"
                    .into(),
            );
        }
        Ok(Self { parts })
    }

    pub fn columns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.parts {
            if let TemplatePart::Column(c) = p {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        }
        out
    }
}
