//! Layer 4, engines (above resolve, beside clients): local inference. An engine embeds in-process
//! (on rayon, never on the async runtime) what a Bedrock client would send over the wire; its
//! model's registry facts stay in `embedpipe_wire`.

pub mod local;
pub mod minilm;
