//! Checks that need the data's schema or the sink: columns exist and have usable types, ids can
//! be found, the table can be written in the chosen mode. Runs before any model call.

use crate::config::{did_you_mean, Pipeline, SourceKind, StepInput};
use crate::dispatch::ModelInfo;
use crate::sink::lancedb::{self as lance_sink, Target};
use crate::sink::OutputLayout;
use crate::sources::{self, SourcePlan};
use anyhow::Result;
use arrow::datatypes::{DataType, SchemaRef};
use std::ops::Range;

/// A pipeline checked against its data and sink.
pub struct Checked {
    pub source: SourcePlan,
    /// Columns read from the source.
    pub read_columns: Vec<String>,
    pub id_column: Option<String>,
    pub layout: OutputLayout,
    pub models: Vec<ModelInfo>,
    pub target: Target,
    /// The table's schema when it already exists.
    pub existing: Option<SchemaRef>,
}

fn column_error(
    pipeline: &Pipeline,
    span: Range<usize>,
    col: &str,
    what: &str,
    schema: &SchemaRef,
    file: &str,
) -> anyhow::Error {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut help = String::new();
    if let Some(best) = did_you_mean(col, names.iter().copied()) {
        help.push_str(&format!("did you mean `{best}`? "));
    }
    help.push_str(&format!("columns in {file}: {}", names.join(", ")));
    pipeline
        .error(
            span,
            format!("{what} `{col}` is not a column of the source"),
        )
        .with_help(help)
        .into()
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
pub async fn check(pipeline: &Pipeline) -> Result<Checked> {
    check_run(pipeline, false).await
}

/// As [`check`], for a run: with `reindex` the table is rewritten, so its vector spaces may
/// change.
pub async fn check_run(pipeline: &Pipeline, reindex: bool) -> Result<Checked> {
    let plan = {
        let p = pipeline;
        sources::plan(p)?
    };
    let schema = plan.schema.clone();
    let file = plan.files[0].display.to_string();
    let src = pipeline.source();

    // A column name twice: its rows could not be told apart in the table.
    let mut names = std::collections::HashSet::new();
    if let Some(dup) = schema.fields().iter().find(|f| !names.insert(f.name())) {
        let span = pipeline
            .source_paths()
            .first()
            .map_or(pipeline.file.source.span(), |p| p.span());
        return Err(pipeline
            .error(
                span,
                format!("column `{}` appears twice in {file}", dup.name()),
            )
            .with_help("rename one of them in the file (a CSV header names each column once)")
            .into());
    }

    // Ids.
    if let Some(c) = &src.id_column {
        if schema.field_with_name(c.get_ref()).is_err() {
            return Err(column_error(
                pipeline,
                c.span(),
                c.get_ref(),
                "id_column",
                &schema,
                &file,
            ));
        }
    }
    let id_column = sources::id_column(pipeline, |c| schema.field_with_name(c).is_ok());

    // Step inputs.
    let mut needed: Vec<String> = id_column.iter().cloned().collect();
    for (step, cfg) in pipeline.steps.iter().zip(&pipeline.file.embeds) {
        let cfg = cfg.get_ref();
        let span = cfg
            .column
            .as_ref()
            .or(cfg.text.as_ref())
            .or(cfg.image.as_ref())
            .map_or(step.span.clone(), |s| s.span());
        for col in step.input.columns() {
            let Ok(field) = schema.field_with_name(&col) else {
                return Err(column_error(
                    pipeline,
                    span,
                    &col,
                    "input column",
                    &schema,
                    &file,
                ));
            };
            let is_image = match &step.input {
                StepInput::Image(_) => true,
                StepInput::TextImage(_, i) => *i == col,
                _ => false,
            };
            match &step.input {
                _ if is_image
                    && !matches!(field.data_type(), DataType::Binary | DataType::LargeBinary) =>
                {
                    return Err(pipeline
                        .error(
                            span,
                            format!(
                                "image column `{col}` is {}, not binary image bytes",
                                field.data_type()
                            ),
                        )
                        .into())
                }
                _ if !is_image && !texty(field.data_type()) => {
                    return Err(pipeline
                        .error(
                            span,
                            format!(
                                "text input column `{col}` is {}, which cannot be read as text",
                                field.data_type()
                            ),
                        )
                        .with_help("use `image = ...` for image bytes")
                        .into())
                }
                _ => {}
            }
            if !needed.contains(&col) {
                needed.push(col);
            }
        }
    }

    // Metadata columns.
    let metadata: Vec<String> = match &pipeline.sink().metadata {
        Some(list) => {
            let mut out = Vec::new();
            for m in list {
                let name = m.get_ref();
                if name == "id" {
                    continue;
                }
                if pipeline.has_media_step()
                    && crate::sink::SEGMENT_COLUMNS.contains(&name.as_str())
                {
                    return Err(pipeline
                        .error(
                            m.span(),
                            format!("`{name}` is a column media tables fill per segment"),
                        )
                        .with_help("leave it out of metadata, or rename it in the source")
                        .into());
                }
                if schema.field_with_name(name).is_err() {
                    return Err(column_error(
                        pipeline,
                        m.span(),
                        name,
                        "metadata column",
                        &schema,
                        &file,
                    ));
                }
                out.push(name.clone());
            }
            out
        }
        None => schema
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
                Some(n) != id_column.as_ref()
                    && n != "id"
                    && !crate::sink::RESERVED_COLUMNS.contains(&n.as_str())
                    && !(pipeline.has_media_step()
                        && crate::sink::SEGMENT_COLUMNS.contains(&n.as_str()))
            })
            .collect(),
    };
    // A step's output columns must not land on a copied source column.
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
    for m in &metadata {
        if !needed.contains(m) {
            needed.push(m.clone());
        }
    }

    // Projection.
    if let Some(cols) = &src.columns {
        let listed: Vec<&str> = cols.iter().map(|c| c.get_ref().as_str()).collect();
        for c in cols {
            if schema.field_with_name(c.get_ref()).is_err() {
                return Err(column_error(
                    pipeline,
                    c.span(),
                    c.get_ref(),
                    "column",
                    &schema,
                    &file,
                ));
            }
        }
        if let Some(missing) = needed.iter().find(|n| !listed.contains(&n.as_str())) {
            return Err(pipeline
                .error(
                    cols[0].span(),
                    format!("`columns` leaves out `{missing}`, which the pipeline uses"),
                )
                .with_help(format!("add it: the pipeline reads {}", needed.join(", ")))
                .into());
        }
    }
    let read_columns = match plan.kind {
        SourceKind::Images => plan.column_names(),
        _ => needed,
    };

    // Sink.
    let models = ModelInfo::all(pipeline);
    for step in &pipeline.steps {
        if let Some(note) = models[step.model_index].spec.deprecation {
            tracing::warn!("model `{}`: {note}", models[step.model_index].name);
        }
    }
    let layout = OutputLayout::new(pipeline, &schema, metadata, &models)?;
    if let Some(c) = &pipeline.sink().fts_column {
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
    }
    let target = lance_sink::target(pipeline)?;
    lance_sink::check_reachable(&target)?;
    let failures = lance_sink::failures_path(pipeline, &target);
    let sources: Vec<std::path::PathBuf> = plan.files.iter().map(|f| f.path.clone()).collect();
    if let Err(e) = crate::sink::failures::check_path(&failures, &sources, &pipeline.path) {
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
    let existing = match &target.local_dir {
        Some(dir) if !dir.exists() => None,
        _ => {
            let conn = lance_sink::connect(&target).await?;
            lance_sink::existing_schema(&conn, &target.table).await?
        }
    };
    lance_sink::check_mode(
        if reindex {
            crate::config::WriteMode::Overwrite
        } else {
            pipeline.write_mode()
        },
        &target,
        existing.as_deref(),
        &layout.schema,
    )?;
    Ok(Checked {
        source: plan,
        read_columns,
        id_column,
        layout,
        models,
        target,
        existing,
    })
}
