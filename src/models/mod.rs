//! The model registry: what each embedding model accepts and produces, one file per family.
//!
//! Adding a model family means one file here and one line in [`registry`].

pub mod local_minilm;

use crate::config::Provider;

/// Kinds of model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    Text,
    Image,
    Video,
    Audio,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Video => "video",
            Modality::Audio => "audio",
        }
    }
}

/// Static facts about one model.
#[derive(Debug)]
pub struct ModelSpec {
    /// Canonical id, as written in pipeline files.
    pub id: &'static str,
    /// Other accepted spellings of the id.
    pub aliases: &'static [&'static str],
    pub provider: Provider,
    pub modalities: &'static [Modality],
    /// Output dimensions the model can produce; the first is the default.
    pub dimensions: &'static [usize],
    /// Largest number of inputs in one call.
    pub max_inputs_per_call: usize,
    /// Default inputs per call.
    pub default_batch_size: usize,
    /// Tokens per input the model reads; longer inputs are truncated.
    pub max_input_tokens: usize,
    /// Whether the model's vectors are unit length by default.
    pub normalized: bool,
}

impl ModelSpec {
    pub fn default_dimension(&self) -> usize {
        self.dimensions[0]
    }
}

/// Every model embedpipe knows.
pub fn registry() -> &'static [ModelSpec] {
    static REGISTRY: [ModelSpec; 1] = [local_minilm::SPEC];
    &REGISTRY
}

/// Finds a model by id or alias (case-insensitive).
pub fn lookup(id: &str) -> Option<&'static ModelSpec> {
    registry().iter().find(|s| {
        s.id.eq_ignore_ascii_case(id) || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_id_and_alias() {
        assert_eq!(
            lookup("sentence-transformers/all-MiniLM-L6-v2").unwrap().id,
            local_minilm::SPEC.id
        );
        assert_eq!(
            lookup("all-minilm-l6-v2").unwrap().id,
            local_minilm::SPEC.id
        );
        assert!(lookup("nope").is_none());
    }

    #[test]
    fn registry_entries_are_consistent() {
        for s in registry() {
            assert!(!s.dimensions.is_empty(), "{}", s.id);
            assert!(s.default_batch_size <= s.max_inputs_per_call, "{}", s.id);
            assert!(!s.modalities.is_empty(), "{}", s.id);
        }
    }
}
