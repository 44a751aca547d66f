//! Layer 8, commands: `validate` — the checks that need the data's schema or the sink: columns
//! exist and have usable types, ids can be found, the table can be written in the chosen mode.
//! Runs before any model call.
//!
//! The checks run in a fixed order (the first failing one is reported): the source's columns
//! (repeated names, the id column, step inputs, metadata, the projection), then the models and
//! the output layout, then the sink (fts column, target, failures file, table mode).

use crate::clients::store::Stores;
use crate::config::{did_you_mean, Pipeline, SourceKind, StepInput, WriteMode};
use crate::prepare::chunked;
use crate::resolve::{ModelSettings, Overrides, Settings};
use crate::resolve::{SourceSettings, Target};
use crate::sink::table as sink_table;
use crate::sink::OutputLayout;
use crate::sources::{self, SourceFiles};
use crate::util::columns::PAGE_STARTS;
use crate::util::Location;
use anyhow::Result;
use arrow::datatypes::{DataType, SchemaRef};
use std::ops::Range;
use toml::Spanned;

/// A pipeline checked against its data and sink.
pub struct Checked {
    pub source: SourceFiles,
    /// Columns read from the source.
    pub read_columns: Vec<String>,
    pub id_column: Option<String>,
    pub layout: OutputLayout,
    pub models: Vec<ModelSettings>,
    pub target: Target,
    /// The table's schema when it already exists.
    pub existing: Option<SchemaRef>,
    /// Every component's settings, resolved once.
    pub settings: Settings,
    /// `[chunk]`: the source columns chunk rows carry (metadata and step template columns).
    pub chunk_keep: Option<Vec<String>>,
    /// The object-store client, when anything of the run is in S3.
    pub stores: Option<Stores>,
}

fn texty(dt: &DataType) -> bool {
    !matches!(
        dt,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    ) && arrow::compute::can_cast_types(dt, &DataType::Utf8)
}

/// Runs every check that needs no model call.
pub async fn check(pipeline: &Pipeline, overrides: &Overrides) -> Result<Checked> {
    check_run(pipeline, false, overrides).await
}

/// As [`check`], for a run: with `reindex` the table is rewritten, so its vector spaces may
/// change.
pub async fn check_run(
    pipeline: &Pipeline,
    reindex: bool,
    overrides: &Overrides,
) -> Result<Checked> {
    let settings = Settings::resolve(pipeline, overrides)?;
    let stores = if settings.uses_s3() {
        Some(Stores::connect(&settings.storage).await?)
    } else {
        None
    };
    let source_settings = &settings.source;
    let survey = sources::survey(source_settings, stores.as_ref()).await?;
    let schema = survey.schema.clone();
    let file = survey.files[0].display.to_string();
    let columns = SourceSchema {
        pipeline,
        schema: &schema,
        file: &file,
    }
    .columns(source_settings)?;
    let read_columns = match survey.kind {
        SourceKind::Images | SourceKind::Documents => survey.column_names(),
        _ => columns.needed,
    };

    // Sink.
    let models = models_warned(pipeline);
    let (layout, chunk_keep) = match &settings.chunk {
        None => (
            OutputLayout::new(&pipeline.steps, &schema, columns.metadata, &models)?,
            None,
        ),
        Some(chunk) => {
            let heading = chunk.strategy == crate::config::ChunkStrategy::Markdown;
            let page = chunked::has_pages(&schema);
            let keep = columns.carried.clone();
            let rows = chunked::chunk_schema(&schema, &keep, heading, page);
            let mut metadata = columns.metadata;
            metadata.extend(
                chunked::chunk_fields(heading, page)
                    .iter()
                    .map(|f| f.name().clone()),
            );
            (
                OutputLayout::new(&pipeline.steps, &rows, metadata, &models)?,
                Some(keep),
            )
        }
    };
    check_fts_column(pipeline, &layout)?;
    let sink_settings = &settings.sink;
    let target = sink_settings.target.clone();
    sink_table::check_reachable(&target)?;
    if let Some(stores) = &stores {
        sink_table::check_reachable_remote(&target, stores)
            .await
            .map_err(|e| sink_error(pipeline, e))?;
    }
    check_failures_path(pipeline, &sink_settings.failures, &survey, stores.as_ref()).await?;
    let existing = existing_schema(&target).await?;
    sink_table::check_mode(
        if reindex {
            WriteMode::Overwrite
        } else {
            sink_settings.mode
        },
        &target,
        existing.as_deref(),
        &layout.schema,
    )?;
    Ok(Checked {
        source: survey,
        read_columns,
        id_column: columns.id_column,
        layout,
        models,
        target,
        existing,
        settings,
        stores,
        chunk_keep,
    })
}

/// An error reaching the sink, pointed at `uri` in the file.
fn sink_error(pipeline: &Pipeline, e: anyhow::Error) -> anyhow::Error {
    pipeline
        .error(pipeline.sink().uri.span(), format!("{e:#}"))
        .into()
}

/// What the source-side checks settle: which columns the run reads and copies.
struct SourceColumns {
    id_column: Option<String>,
    /// Columns the pipeline uses: the id, every step input, then the metadata (each once).
    needed: Vec<String>,
    /// Source columns copied into the table.
    metadata: Vec<String>,
    /// `[chunk]`: source columns carried into chunk rows (metadata, and what step templates
    /// read besides the chunk's own columns).
    carried: Vec<String>,
}

/// The source's schema with what its errors name (the pipeline file, the first source file):
/// the checks of the pipeline's columns against the data.
struct SourceSchema<'a> {
    pipeline: &'a Pipeline,
    schema: &'a SchemaRef,
    /// The first source file, listed in errors.
    file: &'a str,
}

impl SourceSchema<'_> {
    /// Runs the column checks in their order and gathers the columns they settle.
    fn columns(&self, settings: &SourceSettings) -> Result<SourceColumns> {
        self.no_repeated_columns()?;
        let id_column = self.id_column(settings)?;
        let mut needed: Vec<String> = id_column.iter().cloned().collect();
        self.chunk_input(&mut needed)?;
        let mut carried = Vec::new();
        self.step_inputs(&mut needed, &mut carried)?;
        let metadata = self.metadata(id_column.as_ref())?;
        self.vectors_clear_of(&metadata)?;
        for m in &metadata {
            if !needed.contains(m) {
                needed.push(m.clone());
            }
            if !carried.contains(m) {
                carried.push(m.clone());
            }
        }
        self.projection(&needed)?;
        Ok(SourceColumns {
            id_column,
            needed,
            metadata,
            carried,
        })
    }

    /// Names of the columns a chunk row has of its own (`None` without `[chunk]`).
    fn chunk_names(&self) -> Option<Vec<String>> {
        self.pipeline.chunk.as_ref().map(|c| {
            let heading = c.strategy == crate::config::ChunkStrategy::Markdown;
            chunked::chunk_fields(heading, chunked::has_pages(self.schema))
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
    }

    /// `[chunk] input`: its columns exist and read as text; page offsets come along.
    fn chunk_input(&self, needed: &mut Vec<String>) -> Result<()> {
        let Some(chunk) = &self.pipeline.chunk else {
            return Ok(());
        };
        for col in chunk.input.columns() {
            let Ok(field) = self.schema.field_with_name(&col) else {
                return Err(self.column_error(
                    chunk.input_span.clone(),
                    &col,
                    "[chunk] input column",
                ));
            };
            self.input_type(
                chunk.input_span.clone(),
                &chunk.input,
                &col,
                field.data_type(),
            )?;
            if !needed.contains(&col) {
                needed.push(col);
            }
        }
        if chunked::has_pages(self.schema) && !needed.iter().any(|c| c == PAGE_STARTS) {
            needed.push(PAGE_STARTS.to_string());
        }
        Ok(())
    }

    /// The error for a column the pipeline names but the source lacks, with a did-you-mean.
    fn column_error(&self, span: Range<usize>, col: &str, what: &str) -> anyhow::Error {
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let mut help = String::new();
        if let Some(best) = did_you_mean(col, names.iter().copied()) {
            help.push_str(&format!("did you mean `{best}`? "));
        }
        help.push_str(&format!("columns in {}: {}", self.file, names.join(", ")));
        self.pipeline
            .error(
                span,
                format!("{what} `{col}` is not a column of the source"),
            )
            .with_help(help)
            .into()
    }

    /// A column name twice: its rows could not be told apart in the table.
    fn no_repeated_columns(&self) -> Result<()> {
        let pipeline = self.pipeline;
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = self
            .schema
            .fields()
            .iter()
            .find(|f| !names.insert(f.name()))
        {
            let span = pipeline
                .source_paths()
                .first()
                .map_or(pipeline.file.source.span(), |p| p.span());
            return Err(pipeline
                .error(
                    span,
                    format!("column `{}` appears twice in {}", dup.name(), self.file),
                )
                .with_help("rename one of them in the file (a CSV header names each column once)")
                .into());
        }
        Ok(())
    }

    /// Checks a written `id_column` exists, then settles the id column the run uses.
    fn id_column(&self, settings: &SourceSettings) -> Result<Option<String>> {
        if let Some(c) = &self.pipeline.source().id_column {
            if self.schema.field_with_name(c.get_ref()).is_err() {
                return Err(self.column_error(c.span(), c.get_ref(), "id_column"));
            }
        }
        Ok(sources::id_column(settings, |c| {
            self.schema.field_with_name(c).is_ok()
        }))
    }

    /// Checks every step's input columns exist and have a type the step reads; adds them to
    /// `needed`.
    fn step_inputs(&self, needed: &mut Vec<String>, carried: &mut Vec<String>) -> Result<()> {
        let pipeline = self.pipeline;
        let chunk_names = self.chunk_names().unwrap_or_default();
        for (step, cfg) in pipeline.steps.iter().zip(&pipeline.file.embeds) {
            let cfg = cfg.get_ref();
            let span = cfg
                .column
                .as_ref()
                .or(cfg.text.as_ref())
                .or(cfg.image.as_ref())
                .map_or(step.span.clone(), |s| s.span());
            for col in step.input.columns() {
                // A chunk row's own columns (the chunk text) come from the chunk stage.
                if chunk_names.contains(&col) {
                    continue;
                }
                if self.pipeline.chunk.is_some() && !carried.contains(&col) {
                    carried.push(col.clone());
                }
                let Ok(field) = self.schema.field_with_name(&col) else {
                    return Err(self.column_error(span, &col, "input column"));
                };
                self.input_type(span.clone(), &step.input, &col, field.data_type())?;
                if !needed.contains(&col) {
                    needed.push(col);
                }
            }
        }
        Ok(())
    }

    /// Refuses an input column of the wrong kind: image inputs need binary bytes, text inputs a
    /// type that casts to text.
    fn input_type(
        &self,
        span: Range<usize>,
        input: &StepInput,
        col: &str,
        dt: &DataType,
    ) -> Result<()> {
        let is_image = match input {
            StepInput::Image(_) => true,
            StepInput::TextImage(_, i) => *i == col,
            _ => false,
        };
        if is_image && !matches!(dt, DataType::Binary | DataType::LargeBinary) {
            return Err(self
                .pipeline
                .error(
                    span,
                    format!("image column `{col}` is {dt}, not binary image bytes"),
                )
                .into());
        }
        if !is_image && !texty(dt) {
            return Err(self
                .pipeline
                .error(
                    span,
                    format!("text input column `{col}` is {dt}, which cannot be read as text"),
                )
                .with_help("use `image = ...` for image bytes")
                .into());
        }
        Ok(())
    }

    /// The source columns copied as metadata: `[sink] metadata` checked (its spans point errors
    /// at the file), else the default.
    fn metadata(&self, id_column: Option<&String>) -> Result<Vec<String>> {
        match &self.pipeline.sink().metadata {
            Some(list) => self.listed_metadata(list),
            None => Ok(self.default_metadata(id_column)),
        }
    }

    /// Checks the listed metadata columns exist and are not filled per segment (`id` is
    /// skipped: the table has its own).
    fn listed_metadata(&self, list: &[Spanned<String>]) -> Result<Vec<String>> {
        let pipeline = self.pipeline;
        let chunk_names = self.chunk_names().unwrap_or_default();
        let mut out = Vec::new();
        for m in list {
            let name = m.get_ref();
            // A chunked table always has its chunk columns.
            if name == "id" || chunk_names.contains(name) {
                continue;
            }
            if pipeline.has_media_step() && crate::sink::SEGMENT_COLUMNS.contains(&name.as_str()) {
                return Err(pipeline
                    .error(
                        m.span(),
                        format!("`{name}` is a column media tables fill per segment"),
                    )
                    .with_help("leave it out of metadata, or rename it in the source")
                    .into());
            }
            if self.schema.field_with_name(name).is_err() {
                return Err(self.column_error(m.span(), name, "metadata column"));
            }
            out.push(name.clone());
        }
        Ok(out)
    }

    /// The default metadata: every non-binary source column but the ids and the columns the
    /// table fills itself (it depends on the schema, so the resolve layer cannot apply it).
    fn default_metadata(&self, id_column: Option<&String>) -> Vec<String> {
        // Chunked: the split text is in the chunks (a copy per chunk would repeat the whole
        // document), and the chunk columns come from the chunk stage.
        let mut left_out = self.chunk_names().unwrap_or_default();
        if let Some(chunk) = &self.pipeline.chunk {
            left_out.extend(chunk.input.columns());
            left_out.push(PAGE_STARTS.to_string());
        }
        self.schema
            .fields()
            .iter()
            .filter(|f| {
                !matches!(
                    f.data_type(),
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                )
            })
            .map(|f| f.name().clone())
            .filter(|n| {
                Some(n) != id_column
                    && !left_out.contains(n)
                    && n != "id"
                    && !crate::sink::RESERVED_COLUMNS.contains(&n.as_str())
                    && !(self.pipeline.has_media_step()
                        && crate::sink::SEGMENT_COLUMNS.contains(&n.as_str()))
            })
            .collect()
    }

    /// A step's output columns must not land on a copied source column.
    fn vectors_clear_of(&self, metadata: &[String]) -> Result<()> {
        let pipeline = self.pipeline;
        for (step, cfg) in pipeline.steps.iter().zip(&pipeline.file.embeds) {
            let taken = crate::sink::step_columns(&step.vector)
                .into_iter()
                .find(|c| metadata.contains(c));
            if let Some(col) = taken {
                let span = cfg
                    .get_ref()
                    .vector
                    .as_ref()
                    .map_or(step.span.clone(), |v| v.span());
                let help = if pipeline.sink().metadata.is_some() {
                    format!("leave `{col}` out of [sink] metadata, or name the vector column otherwise (vector = \"{}_vector\")", step.vector)
                } else {
                    format!("name the vector column otherwise (vector = \"{}_vector\"), or list the [sink] metadata columns to copy without `{col}`", step.vector)
                };
                return Err(pipeline
                    .error(
                        span,
                        format!(
                            "step `{}` writes a column `{col}`, but the source column `{col}` is copied into the table as metadata",
                            step.name
                        ),
                    )
                    .with_help(help)
                    .into());
            }
        }
        Ok(())
    }

    /// Checks a `columns` projection names real columns and keeps every column the pipeline
    /// uses.
    fn projection(&self, needed: &[String]) -> Result<()> {
        let Some(cols) = &self.pipeline.source().columns else {
            return Ok(());
        };
        let listed: Vec<&str> = cols.iter().map(|c| c.get_ref().as_str()).collect();
        for c in cols {
            if self.schema.field_with_name(c.get_ref()).is_err() {
                return Err(self.column_error(c.span(), c.get_ref(), "column"));
            }
        }
        if let Some(missing) = needed.iter().find(|n| !listed.contains(&n.as_str())) {
            return Err(self
                .pipeline
                .error(
                    cols[0].span(),
                    format!("`columns` leaves out `{missing}`, which the pipeline uses"),
                )
                .with_help(format!("add it: the pipeline reads {}", needed.join(", ")))
                .into());
        }
        Ok(())
    }
}

/// The settings of every model, warning once per step about a deprecated model.
fn models_warned(pipeline: &Pipeline) -> Vec<ModelSettings> {
    let models = ModelSettings::all(pipeline, &Default::default());
    for step in &pipeline.steps {
        if let Some(note) = models[step.model_index].spec.deprecation {
            tracing::warn!("model `{}`: {note}", models[step.model_index].name);
        }
    }
    models
}

/// Checks `fts_column` is a text column of the table (its span points the error at the file).
fn check_fts_column(pipeline: &Pipeline, layout: &OutputLayout) -> Result<()> {
    let Some(c) = &pipeline.sink().fts_column else {
        return Ok(());
    };
    let ok = layout.schema.field_with_name(c.get_ref()).is_ok_and(|f| {
        matches!(
            f.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
    });
    if !ok {
        return Err(pipeline
            .error(
                c.span(),
                format!(
                    "fts_column `{}` is not a text column of the table",
                    c.get_ref()
                ),
            )
            .with_help("name a text column copied as metadata (see `metadata` in [sink])")
            .into());
    }
    Ok(())
}

/// Refuses a dead-letter file that would overwrite something embedpipe did not write (a source,
/// the pipeline file), pointing the error at `failures` in the file.
async fn check_failures_path(
    pipeline: &Pipeline,
    failures: &Location,
    survey: &SourceFiles,
    stores: Option<&Stores>,
) -> Result<()> {
    let sources: Vec<Location> = survey.files.iter().map(|f| f.location.clone()).collect();
    if let Err(e) =
        crate::sink::failures::check_path(failures, &sources, &pipeline.path, stores).await
    {
        let sink = pipeline.sink();
        let span = sink
            .failures
            .as_ref()
            .map_or(pipeline.file.sink.span(), |f| f.span());
        return Err(pipeline
            .error(span, e.to_string())
            .with_help(
                "point `failures` at a new file, e.g. failures = \"../.embedpipe/failures.jsonl\"",
            )
            .into());
    }
    Ok(())
}

/// The table's schema when it exists (a local database folder not made yet holds none).
async fn existing_schema(target: &Target) -> Result<Option<SchemaRef>> {
    match &target.local_dir {
        Some(dir) if !dir.exists() => Ok(None),
        _ => {
            let conn = sink_table::connect(target).await?;
            sink_table::existing_schema(&conn, &target.table).await
        }
    }
}
