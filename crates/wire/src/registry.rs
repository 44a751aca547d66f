//! The model registry: every model embedpipe knows, and resolving the ids pipeline files write
//! (aliases, cross-region inference profiles) to their spec. One line per model.

use crate::families::{cohere, local, marengo, nova, openai, titan_multimodal, titan_text};
use crate::spec::ModelSpec;

/// Every model embedpipe knows.
pub fn registry() -> &'static [ModelSpec] {
    static REGISTRY: [ModelSpec; 15] = [
        local::SPEC,
        local::PARAPHRASE_MULTILINGUAL,
        local::MULTILINGUAL_E5_SMALL,
        local::BGE_SMALL_EN,
        local::CUSTOM,
        titan_text::V1,
        titan_text::V2,
        titan_multimodal::SPEC,
        cohere::V3_ENGLISH,
        cohere::V3_MULTILINGUAL,
        cohere::V4,
        nova::SPEC,
        marengo::V2_7,
        marengo::V3_0,
        openai::SPEC,
    ];
    &REGISTRY
}

/// A model id as written, resolved against the registry.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub spec: &'static ModelSpec,
    /// The inference-profile prefix (`us.`), if the id carried one.
    pub profile: Option<&'static str>,
}

/// Finds a model by id, alias or profile id (`us.cohere.embed-v4:0`), case-insensitively.
pub fn resolve(id: &str) -> Option<Resolved> {
    let matches = |s: &ModelSpec, id: &str| {
        s.id.eq_ignore_ascii_case(id) || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(id))
    };
    for s in registry() {
        if matches(s, id) {
            return Some(Resolved {
                spec: s,
                profile: None,
            });
        }
        for p in s.profiles {
            if id.len() > p.len()
                && id[..p.len()].eq_ignore_ascii_case(p)
                && matches(s, &id[p.len()..])
            {
                return Some(Resolved {
                    spec: s,
                    profile: Some(p),
                });
            }
        }
    }
    None
}

/// Finds a model by id or alias (case-insensitive), with or without a profile prefix.
pub fn lookup(id: &str) -> Option<&'static ModelSpec> {
    resolve(id).map(|r| r.spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Modality;

    #[test]
    fn lookup_by_id_alias_and_profile() {
        assert_eq!(
            lookup("sentence-transformers/all-MiniLM-L6-v2").unwrap().id,
            local::SPEC.id
        );
        assert_eq!(lookup("all-minilm-l6-v2").unwrap().id, local::SPEC.id);
        let r = resolve("us.cohere.embed-v4:0").unwrap();
        assert_eq!(r.spec.id, "cohere.embed-v4:0");
        assert_eq!(r.profile, Some("us."));
        assert!(resolve("xx.cohere.embed-v4:0").is_none());
        // Titan has no profiles.
        assert!(resolve("us.amazon.titan-embed-text-v2:0").is_none());
        assert!(lookup("nope").is_none());
    }

    #[test]
    fn registry_entries_are_consistent() {
        let mut ids = std::collections::HashSet::new();
        for s in registry() {
            assert!(ids.insert(s.id), "duplicate {}", s.id);
            assert!(!s.dimensions.is_empty(), "{}", s.id);
            assert!(s.default_batch_size <= s.max_inputs_per_call, "{}", s.id);
            assert!(!s.modalities.is_empty(), "{}", s.id);
            if s.modalities.contains(&Modality::Image) {
                assert!(!s.limits.image_formats.is_empty(), "{}", s.id);
            }
        }
    }
}
