//! Layer 4, engines (above resolve, beside clients): local inference on ONNX Runtime. An engine
//! embeds in-process (on blocking threads, never on the async runtime) what a Bedrock client
//! would send over the wire; its models' registry facts stay in `embedpipe_wire`.

pub mod catalogue;
pub mod export;
pub mod files;
pub mod hub;
pub mod local;
pub mod onnx;
pub mod pypi;
pub mod runtime;
