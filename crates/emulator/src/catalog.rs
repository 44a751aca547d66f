//! The emulator's own facts about the models it serves: ids, cross-region inference profiles,
//! which id takes which route, output dimensions, image formats and the body limit. Literal
//! tables written from the reference (`bedrock-embedding-models.md`), not read from the client's
//! registry (the `embedpipe-wire` crate): were they shared, a wrong fact would agree with itself and no
//! test could see it.
//!
//! This module holds the types, the lookups and `FAMILIES`; each family's rows (`MODELS`) live
//! in its own file under `families/`, next to the service that reads its bodies.

use crate::families::{cohere, marengo, nova, titan_multimodal, titan_text, Service};

/// Bedrock's InvokeModel body limit: the `body` blob is at most 25,000,000 bytes (botocore).
pub const MAX_BODY_BYTES: usize = 25_000_000;

/// Which ids InvokeModel answers for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invoke {
    /// The base id, or the base id behind one of the model's profile prefixes.
    BaseOrProfile,
    /// Only a profile id: the base id is for StartAsyncInvoke (Marengo 2.7).
    ProfileOnly,
}

/// One model as the emulator knows it: a row of its family file's `MODELS`.
#[derive(Debug)]
pub struct Model {
    /// Base id: the StartAsyncInvoke id, and the key of the emulator's counters and quotas.
    pub id: &'static str,
    /// Other spellings InvokeModel answers to.
    pub aliases: &'static [&'static str],
    /// Cross-region inference profile prefixes (`us.` + base id).
    pub profiles: &'static [&'static str],
    pub invoke: Invoke,
    /// StartAsyncInvoke takes it, by its base id only (a profile id is refused).
    pub asynchronous: bool,
    /// CreateModelInvocationJob takes it (batch inference), by its base id.
    pub batch: bool,
    /// Output dimensions, the default first.
    pub dimensions: &'static [usize],
    /// Image encodings accepted inline (names as the emulator detects them from the bytes).
    pub image_formats: &'static [&'static str],
    /// What reads its bodies (and runs its jobs): its family file's functions, bound to the
    /// model's version of the format.
    pub(crate) service: &'static Service,
}

/// Every family file's rows, one line per family, in the order lookups try them.
static FAMILIES: &[&[Model]] = &[
    titan_text::MODELS,
    titan_multimodal::MODELS,
    cohere::MODELS,
    nova::MODELS,
    marengo::MODELS,
];

/// Every model the emulator serves, family by family in `FAMILIES` order.
pub fn models() -> impl Iterator<Item = &'static Model> {
    FAMILIES.iter().flat_map(|models| models.iter())
}

/// An InvokeModel id resolved against [`models`].
#[derive(Debug, Clone, Copy)]
pub struct Called {
    pub model: &'static Model,
    /// The profile prefix the id carried (`us.`), if any.
    pub profile: Option<&'static str>,
}

/// The model an InvokeModel id names: its base id or an alias, bare or behind one of the model's
/// profile prefixes (case-insensitive).
pub fn resolve(id: &str) -> Option<Called> {
    let names = |m: &Model, s: &str| {
        m.id.eq_ignore_ascii_case(s) || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(s))
    };
    for model in models() {
        if names(model, id) {
            return Some(Called {
                model,
                profile: None,
            });
        }
        for &p in model.profiles {
            // (`get`: an id is any text, and a prefix length may fall inside a character.)
            let (Some(head), Some(rest)) = (id.get(..p.len()), id.get(p.len()..)) else {
                continue;
            };
            if !rest.is_empty() && head.eq_ignore_ascii_case(p) && names(model, rest) {
                return Some(Called {
                    model,
                    profile: Some(p),
                });
            }
        }
    }
    None
}

/// The model a StartAsyncInvoke `modelId` names: exactly a base id with an async route.
pub fn asynchronous(id: &str) -> Option<&'static Model> {
    models().find(|m| m.asynchronous && m.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model a base id names.
    fn model(id: &str) -> &'static Model {
        resolve(id)
            .unwrap_or_else(|| panic!("{id} is not in the catalog"))
            .model
    }

    #[test]
    fn tables_match_the_reference() {
        // Profiles: Cohere v4 has us./eu./global., Titan and Nova none.
        let c = resolve("us.cohere.embed-v4:0").unwrap();
        assert_eq!((c.model.id, c.profile), ("cohere.embed-v4:0", Some("us.")));
        assert_eq!(
            resolve("global.cohere.embed-v4:0").unwrap().profile,
            Some("global.")
        );
        assert_eq!(
            resolve("cohere.embed-v4").unwrap().model.id,
            "cohere.embed-v4:0"
        );
        for refused in [
            "apac.cohere.embed-v4:0",
            "us.amazon.titan-embed-text-v2:0",
            "us.amazon.nova-2-multimodal-embeddings-v1:0",
            "us.",
            "aaé.cohere.embed-v4:0",
            "sentence-transformers/all-MiniLM-L6-v2",
        ] {
            assert!(resolve(refused).is_none(), "{refused}");
        }
        // Routes: Marengo 2.7 InvokeModel by profile only, async by base id only.
        let m27 = resolve("eu.twelvelabs.marengo-embed-2-7-v1:0").unwrap();
        assert_eq!(m27.model.invoke, Invoke::ProfileOnly);
        assert!(asynchronous("twelvelabs.marengo-embed-2-7-v1:0").is_some());
        assert!(asynchronous("us.twelvelabs.marengo-embed-2-7-v1:0").is_none());
        assert!(asynchronous("amazon.nova-2-multimodal-embeddings-v1:0").is_some());
        assert!(asynchronous("cohere.embed-v4:0").is_none());
        assert!(asynchronous("amazon.titan-embed-text-v2:0").is_none());
        assert_eq!(
            model("twelvelabs.marengo-embed-3-0-v1:0").invoke,
            Invoke::BaseOrProfile
        );
        // Dimensions, formats, the body limit.
        assert_eq!(
            model("twelvelabs.marengo-embed-3-0-v1:0").dimensions,
            &[512]
        );
        assert_eq!(
            model("twelvelabs.marengo-embed-2-7-v1:0").dimensions,
            &[1024]
        );
        assert_eq!(
            model("amazon.nova-2-multimodal-embeddings-v1:0").dimensions[0],
            3072
        );
        assert_eq!(
            model("cohere.embed-english-v3").image_formats,
            &["png", "jpeg"]
        );
        assert!(model("cohere.embed-v4:0").image_formats.contains(&"webp"));
        assert_eq!(MAX_BODY_BYTES, 25_000_000);
    }

    #[test]
    fn every_model_is_listed_once_in_catalog_order() {
        let ids: Vec<&str> = models().map(|m| m.id).collect();
        assert_eq!(
            ids,
            [
                "amazon.titan-embed-text-v1",
                "amazon.titan-embed-text-v2:0",
                "amazon.titan-embed-image-v1",
                "cohere.embed-english-v3",
                "cohere.embed-multilingual-v3",
                "cohere.embed-v4:0",
                "amazon.nova-2-multimodal-embeddings-v1:0",
                "twelvelabs.marengo-embed-2-7-v1:0",
                "twelvelabs.marengo-embed-3-0-v1:0",
            ]
        );
        // An async model has an async route to run its jobs.
        for m in models() {
            assert_eq!(m.asynchronous, m.service.async_route.is_some(), "{}", m.id);
        }
        // Batch inference: Titan Text v2 and Nova 2 only.
        let batch: Vec<&str> = models().filter(|m| m.batch).map(|m| m.id).collect();
        assert_eq!(
            batch,
            [
                "amazon.titan-embed-text-v2:0",
                "amazon.nova-2-multimodal-embeddings-v1:0"
            ]
        );
    }
}
