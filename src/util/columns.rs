//! Ground floor: the names of the columns and tables embedpipe writes itself, which the
//! pipeline file may not take for its own (config checks them; the sink writes them).

/// The run log of table `t` is the table `t_runs` next to it; user tables may not end so.
pub const RUN_LOG_SUFFIX: &str = "_runs";

/// Columns embedpipe writes itself (besides per-step columns).
pub const RESERVED_COLUMNS: &[&str] = &["id", "embedded_at"];

/// Columns of a media pipeline's table: one row per segment.
pub const SEGMENT_COLUMNS: &[&str] = &[
    "segment_index",
    "start_sec",
    "end_sec",
    "start_char",
    "end_char",
    "modality",
    "embedding_option",
];

/// Output columns of a step: the vector, the model name and the content hash.
pub fn step_columns(vector: &str) -> [String; 3] {
    [
        vector.to_string(),
        format!("{vector}_model"),
        format!("{vector}_hash"),
    ]
}
