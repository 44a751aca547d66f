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

/// The chunk text column of a chunked table (`[chunk]`): what the embed steps read.
pub const CHUNK_TEXT: &str = "text";
/// The document id column of a chunked table.
pub const CHUNK_DOC_ID: &str = "doc_id";
/// The markdown heading path column (`strategy = "markdown"`).
pub const CHUNK_HEADING: &str = "heading";
/// The page column (documents with pages: PDF).
pub const CHUNK_PAGE: &str = "page";
/// Character offsets of each page of a document (the documents source's PDF rows).
pub const PAGE_STARTS: &str = "page_starts";
/// Columns every chunked table has, in table order (then `heading`, `page` where they apply,
/// then `text`). A chunk's id is `<row id>#<chunk_index>`.
pub const CHUNK_COLUMNS: &[&str] = &[
    CHUNK_DOC_ID,
    "chunk_index",
    "chunk_count",
    "start_char",
    "end_char",
];

/// The document id of a chunk id (`<row id>#<chunk index>`); row ids may hold `#` themselves.
pub fn chunk_doc_id(chunk_id: &str) -> &str {
    chunk_id.rsplit_once('#').map_or(chunk_id, |(doc, _)| doc)
}

/// Output columns of a step: the vector, the model name and the content hash.
pub fn step_columns(vector: &str) -> [String; 3] {
    [
        vector.to_string(),
        format!("{vector}_model"),
        format!("{vector}_hash"),
    ]
}
