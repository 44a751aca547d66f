//! Layer 5, prepare (above sources and sink, below dispatch and jobs): a source row → the model
//! inputs of each step (templates, images, media references), each with its content hash, and
//! the checks on an input that need decoding the wire layer does not do.

pub mod chunk;
pub mod chunked;
pub mod image_check;
mod inputs;

pub use inputs::{prepare, Inputs, MediaInput, Prepared};
