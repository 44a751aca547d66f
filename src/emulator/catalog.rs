//! The emulator's own facts about the models it serves: ids, cross-region inference profiles,
//! which id takes which route, output dimensions, image formats, Nova purposes and the body
//! limit. Literal tables written from the reference (`bedrock-embedding-models.md`), not read
//! from the client's registry (`crate::models`): were they shared, a wrong fact would agree with
//! itself and no test could see it.

/// Bedrock's InvokeModel body limit: the `body` blob is at most 25,000,000 bytes (botocore).
pub const MAX_BODY_BYTES: usize = 25_000_000;

/// Nova 2 `embeddingPurpose` values (AWS Nova `embeddings-schema`), sync and async alike.
pub const NOVA_PURPOSES: &[&str] = &[
    "GENERIC_INDEX",
    "GENERIC_RETRIEVAL",
    "TEXT_RETRIEVAL",
    "IMAGE_RETRIEVAL",
    "VIDEO_RETRIEVAL",
    "DOCUMENT_RETRIEVAL",
    "AUDIO_RETRIEVAL",
    "CLASSIFICATION",
    "CLUSTERING",
];

/// Model families: each reads its own request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    TitanTextV1,
    TitanTextV2,
    TitanMultimodal,
    CohereV3,
    CohereV4,
    Nova2,
    Marengo27,
    Marengo30,
}

impl Family {
    /// Output dimensions, the default first.
    pub fn dimensions(self) -> &'static [usize] {
        match self {
            Family::TitanTextV1 => &[1536],
            Family::TitanTextV2 => &[1024, 512, 256],
            Family::TitanMultimodal => &[1024, 384, 256],
            Family::CohereV3 => &[1024],
            Family::CohereV4 => &[1536, 1024, 512, 256],
            Family::Nova2 => &[3072, 1024, 384, 256],
            Family::Marengo27 => &[1024],
            Family::Marengo30 => &[512],
        }
    }

    /// Image encodings accepted inline (names as [`super::wire`] detects them from the bytes).
    /// Titan multimodal and Marengo list none on their pages; PNG and JPEG are what every
    /// family takes.
    pub fn image_formats(self) -> &'static [&'static str] {
        match self {
            Family::TitanTextV1 | Family::TitanTextV2 => &[],
            Family::TitanMultimodal | Family::CohereV3 => &["png", "jpeg"],
            Family::CohereV4 | Family::Nova2 => &["png", "jpeg", "gif", "webp"],
            Family::Marengo27 | Family::Marengo30 => &["png", "jpeg"],
        }
    }
}

/// Which ids InvokeModel answers for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invoke {
    /// The base id, or the base id behind one of the model's profile prefixes.
    BaseOrProfile,
    /// Only a profile id: the base id is for StartAsyncInvoke (Marengo 2.7).
    ProfileOnly,
}

/// One model as the emulator knows it.
#[derive(Debug)]
pub struct Model {
    /// Base id: the StartAsyncInvoke id, and the key of the emulator's counters and quotas.
    pub id: &'static str,
    /// Other spellings InvokeModel answers to.
    pub aliases: &'static [&'static str],
    pub family: Family,
    /// Cross-region inference profile prefixes (`us.` + base id).
    pub profiles: &'static [&'static str],
    pub invoke: Invoke,
    /// StartAsyncInvoke takes it, by its base id only (a profile id is refused).
    pub asynchronous: bool,
}

/// Every model the emulator serves.
pub static MODELS: &[Model] = &[
    Model {
        id: "amazon.titan-embed-text-v1",
        // The legacy id LiteLLM still knows; pipelines written with it keep working.
        aliases: &["amazon.titan-embed-g1-text-02"],
        family: Family::TitanTextV1,
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
    },
    Model {
        id: "amazon.titan-embed-text-v2:0",
        aliases: &[],
        family: Family::TitanTextV2,
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
    },
    Model {
        id: "amazon.titan-embed-image-v1",
        aliases: &[],
        family: Family::TitanMultimodal,
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
    },
    Model {
        id: "cohere.embed-english-v3",
        aliases: &[],
        family: Family::CohereV3,
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
    },
    Model {
        id: "cohere.embed-multilingual-v3",
        aliases: &[],
        family: Family::CohereV3,
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
    },
    Model {
        id: "cohere.embed-v4:0",
        // The id as AWS's v4 page writes it.
        aliases: &["cohere.embed-v4"],
        family: Family::CohereV4,
        profiles: &["us.", "eu.", "global."],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
    },
    Model {
        id: "amazon.nova-2-multimodal-embeddings-v1:0",
        aliases: &[],
        family: Family::Nova2,
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: true,
    },
    Model {
        id: "twelvelabs.marengo-embed-2-7-v1:0",
        aliases: &[],
        family: Family::Marengo27,
        // (A Seoul prefix is unconfirmed: not served.)
        profiles: &["us.", "eu."],
        invoke: Invoke::ProfileOnly,
        asynchronous: true,
    },
    Model {
        id: "twelvelabs.marengo-embed-3-0-v1:0",
        aliases: &[],
        family: Family::Marengo30,
        profiles: &["us.", "eu."],
        invoke: Invoke::BaseOrProfile,
        asynchronous: true,
    },
];

/// An InvokeModel id resolved against [`MODELS`].
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
    for model in MODELS {
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
    MODELS.iter().find(|m| m.asynchronous && m.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            resolve("twelvelabs.marengo-embed-3-0-v1:0")
                .unwrap()
                .model
                .invoke,
            Invoke::BaseOrProfile
        );
        // Dimensions, formats, purposes, the body limit.
        assert_eq!(Family::Marengo30.dimensions(), &[512]);
        assert_eq!(Family::Marengo27.dimensions(), &[1024]);
        assert_eq!(Family::Nova2.dimensions()[0], 3072);
        assert_eq!(Family::CohereV3.image_formats(), &["png", "jpeg"]);
        assert!(Family::CohereV4.image_formats().contains(&"webp"));
        assert_eq!(NOVA_PURPOSES.len(), 9);
        assert!(NOVA_PURPOSES.contains(&"DOCUMENT_RETRIEVAL"));
        assert_eq!(MAX_BODY_BYTES, 25_000_000);
    }
}
