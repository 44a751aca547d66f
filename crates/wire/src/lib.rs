//! embedpipe's model-format layer: what each embedding model accepts and produces, and how its
//! JSON looks on the wire. Pure data and transformations: no I/O, no runtime, no SDK.
//!
//! Models know JSON, not HTTP: a family's [`Codec`] turns typed [`Input`]s and [`Params`] into an
//! InvokeModel body and parses the answer into vectors and [`Usage`]; the pipeline's providers
//! move the bytes. Every quirk of a family is a [`Codec`] method or data on its [`ModelSpec`], so
//! nothing outside [`families`] names a family.
//!
//! Adding a model family = one file in [`families`], one registry line in [`registry()`] (plus
//! one emulator family file).

mod codec;
pub mod families;
mod floats;
mod json;
mod registry;
mod spec;
mod vocab;

pub use codec::{
    billed_usage, build_async, build_request, estimate_tokens, l2_normalize, parse_response,
    preflight, unknown_pixels, usage, AsyncResults, Codec,
};
pub use json::snippet;
pub use registry::{lookup, registry, resolve, Resolved};
pub use spec::{
    media_formats, AsyncLimits, Limits, ModelSpec, ParamSpec, Params, Routes, SegmentSeconds,
    DEFAULT_MAX_IMAGE_SIDE, EMBEDDING_TYPES, MAX_BODY_BYTES,
};
pub use vocab::{
    Image, ImageFormat, Input, MediaRef, Modality, ParseError, Parsed, Prices, ProviderKind,
    Rejection, Segment, Truncate, Usage, WireError,
};
