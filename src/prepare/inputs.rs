//! Per embed step: turn source rows into model inputs, and hash each input with the model's
//! fingerprint (the basis of incremental runs).

use crate::config::{MediaModality, StepInput, Template, TemplatePart};
use crate::util::{content_hash, FailureKind};
use anyhow::{Context, Result};
use arrow::array::{Array, BinaryArray, LargeBinaryArray, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use embedpipe_wire::Modality;
use std::sync::Arc;

/// One media input of a step.
#[derive(Debug, Clone)]
pub struct MediaInput {
    /// A local path (relative to the pipeline file) or an `s3://` URI.
    pub source: String,
    /// The step's or the row's modality; `None`: detect it.
    pub modality: Option<Modality>,
}

/// Model inputs for one step over one batch.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Row indexes (into the batch) that have an input, in order.
    pub rows: Vec<usize>,
    pub inputs: Inputs,
    /// Content hash per entry of `rows`.
    pub hashes: Vec<String>,
    /// Rows without a usable input: (row index, why, message).
    pub failures: Vec<(usize, FailureKind, String)>,
}

#[derive(Debug)]
pub enum Inputs {
    Text(Vec<String>),
    Image(Vec<Arc<[u8]>>),
    /// A text and an image per input, embedded together.
    TextImage(Vec<(String, Arc<[u8]>)>),
    /// Video/audio files (async jobs).
    Media(Vec<MediaInput>),
}

impl Inputs {
    pub fn len(&self) -> usize {
        match self {
            Inputs::Text(t) => t.len(),
            Inputs::Image(i) => i.len(),
            Inputs::TextImage(p) => p.len(),
            Inputs::Media(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs::Text(Vec::new())
    }
}

fn as_text(batch: &RecordBatch, column: &str) -> Result<StringArray> {
    let col = batch
        .column_by_name(column)
        .with_context(|| format!("column `{column}` is missing from the batch"))?;
    let cast = arrow::compute::cast(col, &DataType::Utf8)
        .with_context(|| format!("column `{column}` cannot be read as text"))?;
    Ok(cast
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8")
        .clone())
}

/// The text of a text input (a column or a template) for every row, or why a row has none.
pub(crate) fn render_texts(
    input: &StepInput,
    batch: &RecordBatch,
) -> Result<Vec<Result<String, String>>> {
    match input {
        StepInput::Template(t) => render(t, batch),
        StepInput::Column(c) => {
            let col = as_text(batch, c)?;
            Ok((0..batch.num_rows())
                .map(|i| {
                    if col.is_null(i) || col.value(i).trim().is_empty() {
                        Err(format!("column `{c}` is empty"))
                    } else {
                        Ok(col.value(i).to_string())
                    }
                })
                .collect())
        }
        _ => anyhow::bail!("only text can be split into chunks"),
    }
}

/// Renders a template for every row with the column `skip` left empty (it may be absent from
/// the batch): what a template adds around a chunk's text.
pub(crate) fn render_around(t: &Template, skip: &str, batch: &RecordBatch) -> Result<Vec<String>> {
    let mut cols: Vec<(String, StringArray)> = Vec::new();
    for c in t.columns() {
        if c != skip {
            cols.push((c.clone(), as_text(batch, &c)?));
        }
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut s = String::new();
        for part in &t.parts {
            match part {
                TemplatePart::Literal(l) => s.push_str(l),
                TemplatePart::Column(c) => {
                    if let Some((_, a)) = cols.iter().find(|(n, _)| n == c) {
                        if !a.is_null(i) {
                            s.push_str(a.value(i));
                        }
                    }
                }
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// Renders a template for every row: the text, or why the row has none.
fn render(t: &Template, batch: &RecordBatch) -> Result<Vec<Result<String, String>>> {
    let cols: Vec<(String, StringArray)> = t
        .columns()
        .into_iter()
        .map(|c| as_text(batch, &c).map(|a| (c, a)))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut s = String::new();
        let mut any = false;
        for part in &t.parts {
            match part {
                TemplatePart::Literal(l) => s.push_str(l),
                TemplatePart::Column(c) => {
                    let a = &cols
                        .iter()
                        .find(|(n, _)| n == c)
                        .expect("template columns are cast")
                        .1;
                    if !a.is_null(i) {
                        let v = a.value(i);
                        any |= !v.trim().is_empty();
                        s.push_str(v);
                    }
                }
            }
        }
        out.push(if any {
            Ok(s)
        } else {
            let names = t.columns().join("`, `");
            Err(if t.columns().len() == 1 {
                format!("column `{names}` is empty")
            } else {
                format!("template columns `{names}` are all empty")
            })
        });
    }
    Ok(out)
}

/// Accessor for the non-empty image bytes of row `i` of a binary column.
fn image_column<'a>(
    batch: &'a RecordBatch,
    c: &str,
) -> Result<impl Fn(usize) -> Option<&'a [u8]> + 'a> {
    let col = batch
        .column_by_name(c)
        .with_context(|| format!("column `{c}` is missing from the batch"))?;
    Ok(move |i: usize| -> Option<&'a [u8]> {
        if col.is_null(i) {
            return None;
        }
        let v = if let Some(a) = col.as_any().downcast_ref::<BinaryArray>() {
            Some(a.value(i))
        } else {
            col.as_any()
                .downcast_ref::<LargeBinaryArray>()
                .map(|a| a.value(i))
        };
        v.filter(|b| !b.is_empty())
    })
}

/// Builds the inputs of `input` for every row of `batch`.
pub fn prepare(input: &StepInput, fingerprint: &str, batch: &RecordBatch) -> Result<Prepared> {
    let mut out = Prepared::default();
    let inputs = match input {
        StepInput::Column(c) => column_inputs(c, fingerprint, batch, &mut out)?,
        StepInput::Template(t) => template_inputs(t, fingerprint, batch, &mut out)?,
        StepInput::TextImage(t, c) => text_image_inputs(t, c, fingerprint, batch, &mut out)?,
        StepInput::Image(c) => image_inputs(c, fingerprint, batch, &mut out)?,
        StepInput::Media(c, how) => media_inputs(c, how, fingerprint, batch, &mut out)?,
    };
    out.inputs = inputs;
    Ok(out)
}

/// A text column as it is: one input per row whose cell is not blank.
fn column_inputs(
    c: &str,
    fingerprint: &str,
    batch: &RecordBatch,
    out: &mut Prepared,
) -> Result<Inputs> {
    let n = batch.num_rows();
    let col = as_text(batch, c)?;
    let mut texts = Vec::with_capacity(n);
    for i in 0..n {
        if col.is_null(i) || col.value(i).trim().is_empty() {
            out.failures
                .push((i, FailureKind::EmptyInput, format!("column `{c}` is empty")));
            continue;
        }
        let t = col.value(i);
        out.hashes.push(content_hash(fingerprint, t.as_bytes()));
        texts.push(t.to_string());
        out.rows.push(i);
    }
    Ok(Inputs::Text(texts))
}

/// A template rendered per row: one input per row where it renders to some text.
fn template_inputs(
    t: &Template,
    fingerprint: &str,
    batch: &RecordBatch,
    out: &mut Prepared,
) -> Result<Inputs> {
    let n = batch.num_rows();
    let rendered = render(t, batch)?;
    let mut texts = Vec::with_capacity(n);
    for (i, r) in rendered.into_iter().enumerate() {
        match r {
            Ok(s) => {
                out.hashes.push(content_hash(fingerprint, s.as_bytes()));
                texts.push(s);
                out.rows.push(i);
            }
            Err(msg) => out.failures.push((i, FailureKind::EmptyInput, msg)),
        }
    }
    Ok(Inputs::Text(texts))
}

/// A template and an image column embedded together: a row needs both.
fn text_image_inputs(
    t: &Template,
    c: &str,
    fingerprint: &str,
    batch: &RecordBatch,
    out: &mut Prepared,
) -> Result<Inputs> {
    let n = batch.num_rows();
    let rendered = render(t, batch)?;
    let images = image_column(batch, c)?;
    let mut pairs = Vec::with_capacity(n);
    for (i, r) in rendered.into_iter().enumerate() {
        let img = images(i);
        match (r, img) {
            (Ok(text), Some(b)) => {
                let mut h = Vec::with_capacity(text.len() + b.len() + 1);
                h.extend_from_slice(text.as_bytes());
                h.push(0xFF); // never in UTF-8: text and image cannot run together
                h.extend_from_slice(b);
                out.hashes.push(content_hash(fingerprint, &h));
                pairs.push((text, Arc::from(b)));
                out.rows.push(i);
            }
            (Err(msg), _) => out.failures.push((i, FailureKind::EmptyInput, msg)),
            (_, None) => out.failures.push((
                i,
                FailureKind::EmptyInput,
                format!("image column `{c}` is empty"),
            )),
        }
    }
    Ok(Inputs::TextImage(pairs))
}

/// An image (binary) column: one input per row with non-empty bytes.
fn image_inputs(
    c: &str,
    fingerprint: &str,
    batch: &RecordBatch,
    out: &mut Prepared,
) -> Result<Inputs> {
    let n = batch.num_rows();
    let value = image_column(batch, c)?;
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        match value(i) {
            Some(b) => {
                out.hashes.push(content_hash(fingerprint, b));
                images.push(Arc::from(b));
                out.rows.push(i);
            }
            _ => out.failures.push((
                i,
                FailureKind::EmptyInput,
                format!("image column `{c}` is empty"),
            )),
        }
    }
    Ok(Inputs::Image(images))
}

/// Media references (paths or `s3://` URIs) with their modality; async jobs read the files.
fn media_inputs(
    c: &str,
    how: &MediaModality,
    fingerprint: &str,
    batch: &RecordBatch,
    out: &mut Prepared,
) -> Result<Inputs> {
    let n = batch.num_rows();
    let col = as_text(batch, c)?;
    let kinds = match how {
        MediaModality::Column(k) => Some(as_text(batch, k)?),
        _ => None,
    };
    let mut media = Vec::with_capacity(n);
    for i in 0..n {
        if col.is_null(i) || col.value(i).trim().is_empty() {
            out.failures
                .push((i, FailureKind::EmptyInput, format!("column `{c}` is empty")));
            continue;
        }
        let modality = match row_modality(how, kinds.as_ref(), i) {
            Ok(m) => m,
            Err(msg) => {
                out.failures.push((i, FailureKind::WrongModality, msg));
                continue;
            }
        };
        let source = col.value(i).trim().to_string();
        // The file's content is hashed when the job is prepared; the table's hash column
        // holds the reference under the model fingerprint.
        out.hashes
            .push(content_hash(fingerprint, source.as_bytes()));
        media.push(MediaInput { source, modality });
        out.rows.push(i);
    }
    Ok(Inputs::Media(media))
}

/// A media row's modality: the step's, or its modality column's (`None`: detect), or an error.
fn row_modality(
    how: &MediaModality,
    kinds: Option<&StringArray>,
    i: usize,
) -> Result<Option<Modality>, String> {
    Ok(match (how, kinds) {
        (MediaModality::Fixed(m), _) => Some(*m),
        (MediaModality::Column(k), Some(a)) => {
            match (!a.is_null(i)).then(|| a.value(i).trim().to_ascii_lowercase()) {
                Some(v) if v == "video" => Some(Modality::Video),
                Some(v) if v == "audio" => Some(Modality::Audio),
                Some(v) if v == "text" => Some(Modality::Text),
                Some(v) if v.is_empty() || v == "auto" => None,
                None => None,
                Some(v) => {
                    return Err(format!(
                        "column `{k}` says `{v}`; use video, audio, text or auto"
                    ))
                }
            }
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("title", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("Hello"), None, Some("  ")])),
                Arc::new(Int64Array::from(vec![Some(1), None, None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn template_renders_and_skips_empty_rows() {
        let t = Template::parse("{title} #{n}").unwrap();
        let p = prepare(&StepInput::Template(t), "fp", &batch()).unwrap();
        assert_eq!(p.rows, vec![0]);
        match p.inputs {
            Inputs::Text(t) => assert_eq!(t, vec!["Hello #1"]),
            _ => panic!(),
        }
        assert_eq!(p.failures.len(), 2);
        assert_eq!(p.failures[0].1, FailureKind::EmptyInput);
    }

    #[test]
    fn hash_depends_on_fingerprint_and_input() {
        assert_eq!(content_hash("a", b"x"), content_hash("a", b"x"));
        assert_ne!(content_hash("a", b"x"), content_hash("b", b"x"));
        assert_ne!(content_hash("a", b"x"), content_hash("a", b"y"));
    }
}
