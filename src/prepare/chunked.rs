//! Rows → chunk rows (`[chunk]`): each row's text is split by the [`Chunker`] (on rayon), and
//! every chunk becomes a row of its own, with its document's columns, its place in the document
//! and its text. The embed steps then read chunk rows as they read source rows.

use super::chunk::{Chunk, Chunker, Limit};
use super::inputs::{render_around, render_texts};
use super::Prepared;
use crate::config::ChunkStrategy;
use crate::resolve::{ChunkSettings, ModelSettings};
use crate::sink::incremental::{chunk_place, StoredChunk};
use crate::sources::SourceBatch;
use crate::util::columns::{CHUNK_DOC_ID, CHUNK_HEADING, CHUNK_PAGE, CHUNK_TEXT, PAGE_STARTS};
use crate::util::tokens::{CharCounter, EstimateCounter, TokenCounter};
use crate::util::FailureKind;
use anyhow::{Context, Result};
use arrow::array::{
    Array, ArrayRef, ListArray, RecordBatch, StringArray, StringBuilder, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// The columns a chunk row adds (in table order): `heading` with the markdown strategy,
/// `page` when the source has page offsets (PDF documents).
pub fn chunk_fields(heading: bool, page: bool) -> Vec<Field> {
    let mut f = vec![
        Field::new(CHUNK_DOC_ID, DataType::Utf8, false),
        Field::new("chunk_index", DataType::UInt32, false),
        Field::new("chunk_count", DataType::UInt32, false),
        Field::new("start_char", DataType::UInt64, false),
        Field::new("end_char", DataType::UInt64, false),
    ];
    if heading {
        f.push(Field::new(CHUNK_HEADING, DataType::Utf8, true));
    }
    if page {
        f.push(Field::new(CHUNK_PAGE, DataType::UInt32, true));
    }
    f.push(Field::new(CHUNK_TEXT, DataType::Utf8, false));
    f
}

/// Whether a source schema carries page offsets the chunk rows can turn into page numbers.
pub fn has_pages(source: &Schema) -> bool {
    source.field_with_name(PAGE_STARTS).is_ok_and(
        |f| matches!(f.data_type(), DataType::List(item) if item.data_type() == &DataType::UInt64),
    )
}

/// The schema of chunk rows: the source columns `keep` names (those a chunk column does not
/// shadow), then the chunk columns.
pub fn chunk_schema(source: &Schema, keep: &[String], heading: bool, page: bool) -> SchemaRef {
    let added = chunk_fields(heading, page);
    let mut fields: Vec<Field> = source
        .fields()
        .iter()
        .filter(|f| keep.contains(f.name()) && !added.iter().any(|a| a.name() == f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(added);
    Arc::new(Schema::new(fields))
}

/// One size limit per model that embeds the chunks: its own tokenizer where embedpipe has it
/// (`counter_of`), else the family estimate, plus the model's character limit if it has one.
/// Exact tokenizers come first: overlap is measured with the first limit's counter.
pub fn limits(
    settings: &ChunkSettings,
    models: &[ModelSettings],
    counter_of: impl Fn(usize) -> Option<Arc<dyn TokenCounter>>,
) -> Vec<Limit> {
    let mut exact = Vec::new();
    let mut estimated: Vec<Limit> = Vec::new();
    for &i in &settings.models {
        let max = settings.max_tokens.min(models[i].input_token_limit());
        match counter_of(i) {
            Some(counter) => {
                let max = counter.max_tokens().map_or(max, |m| max.min(m));
                exact.push(Limit { counter, max })
            }
            None => {
                if !estimated
                    .iter()
                    .any(|l| l.max == max && l.counter.name() == EstimateCounter.name())
                {
                    estimated.push(Limit {
                        counter: Arc::new(EstimateCounter),
                        max,
                    });
                }
            }
        }
        if let Some(chars) = models[i].spec.limits.max_chars {
            estimated.push(Limit {
                counter: Arc::new(CharCounter),
                max: chars,
            });
        }
    }
    exact.extend(estimated);
    exact
}

/// The chunk stage of a run (or a plan).
pub struct ChunkStage {
    chunker: Chunker,
    /// The limits the chunker was built with (rows whose step templates add text get a
    /// chunker of their own, with that text's tokens taken off).
    limits: Vec<Limit>,
    settings: ChunkSettings,
    /// Source columns carried into chunk rows (metadata and what step templates read).
    keep: Vec<String>,
    heading: bool,
    page: bool,
    schema: SchemaRef,
}

/// A batch of rows split into chunk rows.
pub struct Expanded {
    /// One row per chunk, in document order within each source row.
    pub batch: RecordBatch,
    /// `<row id>#<chunk index>`.
    pub ids: Arc<StringArray>,
    /// The source row (index into the split batch) of each chunk.
    pub parent: Vec<u32>,
    /// Source rows with nothing to split: (row index, why, message).
    pub failures: Vec<(usize, FailureKind, String)>,
}

impl Expanded {
    /// The chunk rows as a source batch of their own (each with its document's file and row
    /// number, no read failures), and the document row of each chunk.
    pub fn into_rows(self, sb: &SourceBatch) -> (SourceBatch, Vec<u32>) {
        let rows = self.parent.iter().map(|&p| sb.rows[p as usize]).collect();
        let chunks = SourceBatch {
            file: sb.file.clone(),
            rows,
            batch: self.batch,
            ids: self.ids,
            failures: Vec::new(),
            hidden_elsewhere: sb.hidden_elsewhere,
        };
        (chunks, self.parent)
    }
}

impl ChunkStage {
    /// `source`: the source's schema; `keep`: the source columns chunk rows carry.
    pub fn new(
        settings: &ChunkSettings,
        limits: Vec<Limit>,
        source: &Schema,
        keep: Vec<String>,
    ) -> Result<Self> {
        let heading = settings.strategy == ChunkStrategy::Markdown;
        let page = has_pages(source);
        let chunker = Chunker::new(settings.strategy, limits.clone(), settings.overlap_tokens)
            .map_err(|m| anyhow::anyhow!("[chunk]: {m}"))?;
        Ok(Self {
            chunker,
            limits,
            settings: settings.clone(),
            schema: chunk_schema(source, &keep, heading, page),
            keep,
            heading,
            page,
        })
    }

    /// The schema of the chunk rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The chunks of one text (tests, tools).
    pub fn split(&self, text: &str) -> Vec<Chunk> {
        self.chunker.split(text)
    }

    /// Splits every row of `batch` (CPU work: call on rayon). `ids` are the rows' ids.
    pub fn expand(&self, batch: &RecordBatch, ids: &StringArray) -> Result<Expanded> {
        let texts = render_texts(&self.settings.input, batch)?;
        let mut failures = Vec::new();
        let mut rows = Vec::with_capacity(texts.len());
        let mut strs: Vec<&str> = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            match t {
                Ok(s) => {
                    rows.push(i);
                    strs.push(s.as_str());
                }
                Err(m) => failures.push((i, FailureKind::EmptyInput, m.clone())),
            }
        }
        let chunks = self.split_rows(batch, &rows, &strs, &mut failures)?;
        let pages = match self.page {
            true => batch
                .column_by_name(PAGE_STARTS)
                .and_then(|c| c.as_any().downcast_ref::<ListArray>().cloned()),
            false => None,
        };
        let total: usize = chunks.iter().map(Vec::len).sum();
        let mut parent = Vec::with_capacity(total);
        let mut chunk_ids = StringBuilder::with_capacity(total, total * 16);
        let mut index = Vec::with_capacity(total);
        let mut count = Vec::with_capacity(total);
        let mut start = Vec::with_capacity(total);
        let mut end = Vec::with_capacity(total);
        let mut heading = StringBuilder::new();
        let mut page: Vec<Option<u32>> = Vec::with_capacity(total);
        let bytes: usize = chunks
            .iter()
            .zip(&strs)
            .map(|(cs, s)| {
                cs.iter()
                    .map(|c| c.end - c.start)
                    .sum::<usize>()
                    .max(s.len() / 4)
            })
            .sum();
        let mut text = StringBuilder::with_capacity(total, bytes);
        for ((&row, doc), cs) in rows.iter().zip(&strs).zip(&chunks) {
            if cs.is_empty() {
                if !failures.iter().any(|f| f.0 == row) {
                    failures.push((
                        row,
                        FailureKind::EmptyInput,
                        "the text to split is only whitespace".into(),
                    ));
                }
                continue;
            }
            let id = ids.value(row);
            let starts = pages
                .as_ref()
                .filter(|p| !p.is_null(row))
                .map(|p| p.value(row));
            let starts = starts
                .as_ref()
                .and_then(|a| a.as_any().downcast_ref::<UInt64Array>().cloned());
            for (k, c) in cs.iter().enumerate() {
                parent.push(row as u32);
                chunk_ids.append_value(format!("{id}#{k}"));
                index.push(k as u32);
                count.push(cs.len() as u32);
                start.push(c.start_char);
                end.push(c.end_char);
                heading.append_option(c.heading.as_deref());
                page.push(starts.as_ref().map(|s| page_of(s.values(), c.start_char)));
                text.append_value(&doc[c.start..c.end]);
            }
        }
        failures.sort_by_key(|f| f.0);
        let idx = UInt32Array::from(parent.clone());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            let name = f.name().as_str();
            let col: ArrayRef = match name {
                CHUNK_DOC_ID => arrow::compute::take(ids, &idx, None)?,
                "chunk_index" => Arc::new(UInt32Array::from(std::mem::take(&mut index))),
                "chunk_count" => Arc::new(UInt32Array::from(std::mem::take(&mut count))),
                "start_char" => Arc::new(UInt64Array::from(std::mem::take(&mut start))),
                "end_char" => Arc::new(UInt64Array::from(std::mem::take(&mut end))),
                CHUNK_HEADING if self.heading => Arc::new(heading.finish()),
                CHUNK_PAGE if self.page => Arc::new(UInt32Array::from(std::mem::take(&mut page))),
                CHUNK_TEXT => Arc::new(text.finish()),
                _ => {
                    let source = batch
                        .column_by_name(name)
                        .with_context(|| format!("column `{name}` is missing from the batch"))?;
                    arrow::compute::take(source, &idx, None)?
                }
            };
            columns.push(col);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok(Expanded {
            batch,
            ids: Arc::new(chunk_ids.finish()),
            parent,
            failures,
        })
    }

    /// Source columns chunk rows carry.
    pub fn kept_columns(&self) -> &[String] {
        &self.keep
    }

    /// The columns of a chunk row's place signature (what makes a stored chunk unchanged
    /// besides its text): the same on the table's side and the new rows'.
    pub fn place_columns(&self) -> Vec<String> {
        let mut c = vec!["chunk_count", "start_char", "end_char"];
        if self.heading {
            c.push(CHUNK_HEADING);
        }
        if self.page {
            c.push(CHUNK_PAGE);
        }
        c.into_iter().map(String::from).collect()
    }

    /// The chunks of `texts` (the texts of batch rows `rows`). Where a step template adds text
    /// around the chunk, that text's tokens come off each limit for its row (a row left with
    /// too little room fails, in `failures`, and gets no chunks).
    fn split_rows(
        &self,
        batch: &RecordBatch,
        rows: &[usize],
        texts: &[&str],
        failures: &mut Vec<(usize, FailureKind, String)>,
    ) -> Result<Vec<Vec<Chunk>>> {
        if self.settings.templates.is_empty() {
            return Ok(self.chunker.split_all(texts));
        }
        let around: Vec<Vec<String>> = self
            .settings
            .templates
            .iter()
            .map(|t| render_around(t, CHUNK_TEXT, batch))
            .collect::<Result<_>>()?;
        let empty: Vec<usize> = self.limits.iter().map(|l| l.counter.count("")).collect();
        let split: Vec<Result<Vec<Chunk>, String>> = rows
            .par_iter()
            .zip(texts.par_iter())
            .map(|(&row, text)| {
                let mut limits = self.limits.clone();
                let mut extra = false;
                for (l, base) in limits.iter_mut().zip(&empty) {
                    let over = around
                        .iter()
                        .map(|a| l.counter.count(&a[row]).saturating_sub(*base))
                        .max()
                        .unwrap_or(0);
                    if over > 0 {
                        extra = true;
                        l.max = l.max.saturating_sub(over);
                    }
                }
                if !extra {
                    return Ok(self.chunker.split(text));
                }
                let first = limits[0].max;
                let overlap = self.settings.overlap_tokens.min((first / 2).saturating_sub(1));
                Chunker::new(self.settings.strategy, limits, overlap)
                    .map(|c| c.split(text))
                    .map_err(|m| format!("the text the embed step's template adds around each chunk leaves too little room for the chunk: {m}"))
            })
            .collect();
        let mut out = Vec::with_capacity(split.len());
        for (&row, r) in rows.iter().zip(split) {
            match r {
                Ok(c) => out.push(c),
                Err(m) => {
                    failures.push((row, FailureKind::InputTooLong, m));
                    out.push(Vec::new());
                }
            }
        }
        Ok(out)
    }
}

/// A vector a step already has for a chunk row (the table holds a chunk of the same document
/// with the same content hash): the row, its content hash and the vector.
pub type Reused = (usize, String, Arc<[f32]>);

/// What the table already has for a batch of chunk rows.
pub struct Reuse {
    /// Chunk rows the table holds as they are (same id, place and hashes): nothing to write.
    pub unchanged: Vec<bool>,
    /// Per step, in row order: vectors known without a call.
    pub reused: Vec<Vec<Reused>>,
    /// Per document (row of the source batch): ids of stored chunks it no longer has.
    pub stale: HashMap<u32, Vec<String>>,
}

/// Matches chunk rows against the chunks the table holds for their documents (`stored`, by
/// document id; `place`: the place-signature columns, as given to `Existing::chunks`). Only
/// rows `ok` are matched (others fail or are refused anyway); stale chunks are found for every
/// document. Lookups are hashed: a document of thousands of chunks costs linear time.
#[allow(clippy::too_many_arguments)]
pub fn match_stored(
    chunks: &RecordBatch,
    chunk_ids: &StringArray,
    parent: &[u32],
    doc_ids: &StringArray,
    prepared: &[Prepared],
    stored: &HashMap<String, Vec<StoredChunk>>,
    place: &[String],
    ok: &[bool],
) -> Reuse {
    let steps = prepared.len();
    let mut unchanged = vec![false; parent.len()];
    let mut reused: Vec<Vec<Reused>> = vec![Vec::new(); steps];
    // Each step's hash of every chunk row that has one.
    let hash_of: Vec<HashMap<usize, &String>> = prepared
        .iter()
        .map(|p| p.rows.iter().copied().zip(&p.hashes).collect())
        .collect();
    let place_cols: Vec<&dyn Array> = place
        .iter()
        .filter_map(|c| chunks.column_by_name(c).map(|a| a.as_ref()))
        .collect();
    // Per document: stored chunks by id, and stored vectors by (step, hash).
    let mut by_doc: HashMap<u32, DocIndex> = HashMap::new();
    let mut new_ids: Vec<(u32, std::collections::HashSet<&str>)> = Vec::new();
    for (k, &d) in parent.iter().enumerate() {
        match new_ids.last_mut() {
            Some((doc, ids)) if *doc == d => {
                ids.insert(chunk_ids.value(k));
            }
            _ => new_ids.push((d, std::iter::once(chunk_ids.value(k)).collect())),
        }
        if !ok[k] {
            continue;
        }
        let Some(old) = stored.get(doc_ids.value(d as usize)) else {
            continue;
        };
        let Some(hashes) = hash_of
            .iter()
            .map(|h| h.get(&k).copied())
            .collect::<Option<Vec<&String>>>()
        else {
            continue;
        };
        let index = by_doc.entry(d).or_insert_with(|| DocIndex::of(old));
        let id = chunk_ids.value(k);
        let same = index.by_id.get(id).is_some_and(|c| {
            c.place == chunk_place(&place_cols, k)
                && c.hashes.len() == steps
                && c.hashes.iter().zip(&hashes).all(|(a, b)| a == *b)
        });
        if same {
            unchanged[k] = true;
            continue;
        }
        for (s, h) in hashes.iter().enumerate() {
            if let Some(v) = index.vectors.get(&(s, h.as_str())) {
                reused[s].push((k, (*h).clone(), Arc::clone(v)));
            }
        }
    }
    let mut stale = HashMap::new();
    for (d, ids) in new_ids {
        if let Some(old) = stored.get(doc_ids.value(d as usize)) {
            let gone: Vec<String> = old
                .iter()
                .filter(|c| !ids.contains(c.id.as_str()))
                .map(|c| c.id.clone())
                .collect();
            if !gone.is_empty() {
                stale.insert(d, gone);
            }
        }
    }
    Reuse {
        unchanged,
        reused,
        stale,
    }
}

/// One document's stored chunks, hashed for lookups.
struct DocIndex<'a> {
    by_id: HashMap<&'a str, &'a StoredChunk>,
    /// The vector of each (step, content hash) the document holds.
    vectors: HashMap<(usize, &'a str), &'a Arc<[f32]>>,
}

impl<'a> DocIndex<'a> {
    fn of(chunks: &'a [StoredChunk]) -> Self {
        let mut vectors = HashMap::new();
        for c in chunks {
            for (s, (h, v)) in c.hashes.iter().zip(&c.vectors).enumerate() {
                vectors.entry((s, h.as_str())).or_insert(v);
            }
        }
        Self {
            by_id: chunks.iter().map(|c| (c.id.as_str(), c)).collect(),
            vectors,
        }
    }
}

/// The 1-based page holding character `at`, from each page's first character offset.
fn page_of(starts: &[u64], at: u64) -> u32 {
    starts.partition_point(|&s| s <= at).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StepInput, Template};
    use crate::util::tokens::TokenCounter;

    fn settings(templates: Vec<Template>) -> ChunkSettings {
        ChunkSettings {
            input: StepInput::Column("body".into()),
            strategy: ChunkStrategy::Recursive,
            max_tokens: 40,
            overlap_tokens: 4,
            models: vec![0],
            templates,
        }
    }

    fn batch(title: &str, body: &str) -> (RecordBatch, StringArray) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("title", DataType::Utf8, true),
            Field::new("body", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![title])),
                Arc::new(StringArray::from(vec![body])),
            ],
        )
        .unwrap();
        (b, StringArray::from(vec!["doc"]))
    }

    #[test]
    fn text_a_template_adds_around_the_chunk_counts_against_its_size() {
        let title = "A rather long title of several words that the template repeats";
        let body = "word ".repeat(400);
        let (b, ids) = batch(title, &body);
        let limits = vec![Limit {
            counter: Arc::new(EstimateCounter),
            max: 40,
        }];
        let template = Template::parse("{title}: {text}").unwrap();
        let keep = vec!["title".to_string()];
        let plain = ChunkStage::new(
            &settings(vec![]),
            limits.clone(),
            b.schema().as_ref(),
            keep.clone(),
        )
        .unwrap();
        let framed =
            ChunkStage::new(&settings(vec![template]), limits, b.schema().as_ref(), keep).unwrap();
        let e = framed.expand(&b, &ids).unwrap();
        let texts = e.batch.column_by_name(CHUNK_TEXT).unwrap();
        let texts = texts.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..texts.len() {
            let input = format!("{title}: {}", texts.value(i));
            assert!(EstimateCounter.count(&input) <= 40, "{input}");
        }
        // Without the template's text taken off, the same chunks would not fit.
        let p = plain.expand(&b, &ids).unwrap();
        assert!(p.batch.num_rows() < e.batch.num_rows());
        let t = p.batch.column_by_name(CHUNK_TEXT).unwrap();
        let t = t.as_any().downcast_ref::<StringArray>().unwrap();
        assert!(EstimateCounter.count(&format!("{title}: {}", t.value(0))) > 40);
        // A title that leaves no room fails the row with the reason.
        let (b, ids) = batch(&"long ".repeat(40), &body);
        let e = framed.expand(&b, &ids).unwrap();
        assert_eq!(e.batch.num_rows(), 0);
        assert_eq!(e.failures[0].1, FailureKind::InputTooLong);
        assert!(e.failures[0].2.contains("template"), "{}", e.failures[0].2);
    }

    #[test]
    fn pages_from_offsets() {
        let starts = [0, 100, 250];
        assert_eq!(page_of(&starts, 0), 1);
        assert_eq!(page_of(&starts, 99), 1);
        assert_eq!(page_of(&starts, 100), 2);
        assert_eq!(page_of(&starts, 400), 3);
        assert_eq!(page_of(&[], 5), 1);
    }
}
