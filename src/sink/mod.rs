//! Layer 4, sink (above resolve): the only module that names LanceDB — the table (schema,
//! streaming writes, incremental upserts, maintenance, run log, search queries) and the
//! dead-letter file. It takes its settings from `crate::resolve` (`SinkSettings`, `Target`,
//! `ModelSettings`), never the whole pipeline.

pub mod failures;
pub mod incremental;
pub mod maintain;
pub mod retention;
pub mod runlog;
pub mod runstage;
pub mod search;
pub mod staged;
pub mod table;

pub use crate::resolve::Target;
pub use table::Database;

use crate::config::{Step, StepInput};
use crate::resolve::ModelSettings;
pub use crate::util::columns::{step_columns, RESERVED_COLUMNS, RUN_LOG_SUFFIX, SEGMENT_COLUMNS};
use anyhow::{bail, Result};
use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Float64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::collections::HashMap;
use std::sync::Arc;

/// Per-segment values of the rows being assembled (media pipelines).
#[derive(Debug, Default)]
pub struct SegmentColumns {
    pub index: Vec<u32>,
    /// Seconds (video, audio) — null for text.
    pub start_sec: Vec<Option<f64>>,
    pub end_sec: Vec<Option<f64>>,
    /// Character positions (long text, end exclusive) — null for video and audio.
    pub start_char: Vec<Option<u64>>,
    pub end_char: Vec<Option<u64>>,
    pub modality: Vec<String>,
    pub embedding_option: Vec<String>,
}

/// Schema-level metadata key describing the pipeline's vector columns.
pub const META_KEY: &str = "embedpipe";
/// Field-level metadata keys on each vector column.
pub const FIELD_MODEL: &str = "embedpipe.model";
pub const FIELD_MODEL_ID: &str = "embedpipe.model_id";
pub const FIELD_DIMENSION: &str = "embedpipe.dimension";
pub const FIELD_PARAMS: &str = "embedpipe.params";

/// The columns of the output table, and how to fill them.
#[derive(Debug, Clone)]
pub struct OutputLayout {
    pub schema: SchemaRef,
    /// Source columns copied as metadata.
    pub metadata: Vec<String>,
    steps: Vec<(Step, usize, String)>,
    segments: bool,
}

impl OutputLayout {
    /// Builds the output schema from the pipeline's steps (in file order), the source schema and
    /// the models (indexed like the file's `[[model]]` tables).
    pub fn new(
        steps: &[Step],
        source: &Schema,
        metadata: Vec<String>,
        models: &[ModelSettings],
    ) -> Result<Self> {
        let mut fields = vec![Field::new("id", DataType::Utf8, false)];
        for m in &metadata {
            let f = source.field_with_name(m)?;
            fields.push(Field::new(m, f.data_type().clone(), true));
        }
        let segments = steps
            .iter()
            .any(|s| matches!(s.input, StepInput::Media(..)));
        if segments {
            fields.push(Field::new("segment_index", DataType::UInt32, false));
            fields.push(Field::new("start_sec", DataType::Float64, true));
            fields.push(Field::new("end_sec", DataType::Float64, true));
            fields.push(Field::new("start_char", DataType::UInt64, true));
            fields.push(Field::new("end_char", DataType::UInt64, true));
            fields.push(Field::new("modality", DataType::Utf8, false));
            fields.push(Field::new("embedding_option", DataType::Utf8, false));
        }
        let mut steps_meta = Vec::new();
        let mut layout_steps = Vec::new();
        for step in steps {
            let h = &models[step.model_index];
            // Every parameter that shapes the vector space (the model fingerprint).
            let params: serde_json::Value = serde_json::from_str(&h.fingerprint)
                .unwrap_or_else(|_| serde_json::json!({ "normalize": h.normalize }));
            let field_meta = HashMap::from([
                (FIELD_MODEL.to_string(), h.name.clone()),
                (FIELD_MODEL_ID.to_string(), h.model_id().to_string()),
                (FIELD_DIMENSION.to_string(), h.dimension.to_string()),
                (FIELD_PARAMS.to_string(), params.to_string()),
            ]);
            let [v, vm, vh] = step_columns(&step.vector);
            fields.push(
                Field::new(
                    &v,
                    DataType::FixedSizeList(
                        Arc::new(Field::new("item", DataType::Float32, true)),
                        h.dimension as i32,
                    ),
                    false,
                )
                .with_metadata(field_meta),
            );
            fields.push(Field::new(vm, DataType::Utf8, false));
            fields.push(Field::new(vh, DataType::Utf8, false));
            steps_meta.push(serde_json::json!({
                "step": step.name, "vector": step.vector, "model": h.name, "model_id": h.model_id(),
                "dimension": h.dimension, "params": params, "fingerprint": h.fingerprint,
            }));
            layout_steps.push((step.clone(), h.dimension, h.name.clone()));
        }
        fields.push(Field::new(
            "embedded_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ));
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            if !seen.insert(f.name().clone()) {
                bail!("output column `{}` appears twice: rename the source column or the step's `vector`", f.name());
            }
        }
        let meta = serde_json::json!({ "version": 1, "steps": steps_meta });
        let schema = Schema::new(fields)
            .with_metadata(HashMap::from([(META_KEY.to_string(), meta.to_string())]));
        Ok(Self {
            schema: Arc::new(schema),
            metadata,
            steps: layout_steps,
            segments,
        })
    }

    /// Assembles output rows: `keep` picks rows of `batch` (a row repeats once per segment in
    /// media pipelines, with `segments` holding their values); `vectors[s]` holds step `s`'s
    /// vectors (row-major, one per output row) and `hashes[s]` its content hashes.
    #[allow(clippy::too_many_arguments)]
    pub fn assemble(
        &self,
        batch: &RecordBatch,
        ids: &StringArray,
        keep: &[u32],
        vectors: Vec<Vec<f32>>,
        hashes: Vec<Vec<String>>,
        segments: Option<SegmentColumns>,
        now_micros: i64,
    ) -> Result<RecordBatch> {
        let idx = UInt32Array::from(keep.to_vec());
        let n = keep.len();
        let mut cols: Vec<ArrayRef> = vec![arrow::compute::take(ids, &idx, None)?];
        for m in &self.metadata {
            cols.push(arrow::compute::take(
                batch
                    .column_by_name(m)
                    .expect("metadata column is projected"),
                &idx,
                None,
            )?);
        }
        match (self.segments, segments) {
            (true, Some(s)) => {
                cols.push(Arc::new(UInt32Array::from(s.index)));
                cols.push(Arc::new(Float64Array::from(s.start_sec)));
                cols.push(Arc::new(Float64Array::from(s.end_sec)));
                cols.push(Arc::new(UInt64Array::from(s.start_char)));
                cols.push(Arc::new(UInt64Array::from(s.end_char)));
                cols.push(Arc::new(StringArray::from(s.modality)));
                cols.push(Arc::new(StringArray::from(s.embedding_option)));
            }
            (false, None) => {}
            _ => bail!("segment columns given to a table without them, or missing"),
        }
        for (((step, dim, model), v), h) in self.steps.iter().zip(vectors).zip(hashes) {
            debug_assert_eq!(v.len(), n * dim, "step {}", step.name);
            let values = Arc::new(Float32Array::from(v));
            let item = Arc::new(Field::new("item", DataType::Float32, true));
            cols.push(Arc::new(FixedSizeListArray::try_new(
                item,
                *dim as i32,
                values,
                None,
            )?));
            cols.push(Arc::new(StringArray::from_iter_values(
                std::iter::repeat_n(model.as_str(), n),
            )));
            cols.push(Arc::new(StringArray::from(h)));
        }
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(vec![now_micros; n]).with_timezone("UTC"),
        ));
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}
