//! One file per model family: its specs (the registry's data) and its [`Codec`](crate::Codec),
//! the only code that knows the family's JSON and quirks. Nothing outside this folder matches
//! on families.

pub mod cohere;
pub mod local;
pub mod marengo;
pub mod nova;
pub mod openai;
pub mod titan_multimodal;
pub mod titan_text;
