//! A Bedrock Runtime emulator: `POST /model/{modelId}/invoke` for every embedding model in its
//! [`catalog`], speaking Bedrock's wire protocol (restJson, `x-amzn-ErrorType` errors), so tests,
//! benchmarks and newcomers can run Bedrock pipelines with no AWS account.
//!
//! It shares no facts with the client: its facts (ids, profiles, routes, dimensions, formats, the
//! body limit) are its own tables, looked up through [`catalog`] (each model family's rows live in
//! that family's file, next to its service), and the request validation and response bodies in
//! [`wire`] (one file per model family) are written from the reference on their own. It
//! depends on no part of the pipeline, so neither side can borrow the other's mistakes.
//! Configurable latency, quotas (requests and tokens per minute per model → 429
//! `ThrottlingException`) and fault injection; counts what it received (`GET /_emulator/stats`).
//!
//! It also serves an OpenAI-compatible embeddings endpoint (`POST /v1/embeddings`,
//! `GET /v1/models`, bearer auth) for a handful of models with the limits and quirks of the
//! servers that speak that protocol (OpenAI, Ollama, vLLM, TEI, a LiteLLM route), with the same
//! latency, fault and quota settings in OpenAI's wire form, so the client's OpenAI-compatible
//! provider can be tested without any of them.
//!
//! Batch inference, on Bedrock's control-plane paths (signed for `bedrock` like the rest):
//! `POST /model-invocation-job` (CreateModelInvocationJob), `GET /model-invocation-job/{id}`,
//! `GET /model-invocation-jobs` and `POST /model-invocation-job/{id}/stop`, for Titan Text v2
//! and Nova 2. Jobs read JSONL records from the local S3 server and write `<file>.out` lines
//! (shuffled) and `manifest.json.out`, each record answered as InvokeModel would; the `batch_*`
//! settings hold jobs in progress, fail or expire them, and set the record limits ([`batch`]).
//!
//! Control endpoints: `GET /_emulator/stats`, `POST /_emulator/reset` (zero the counters),
//! `PUT /_emulator/config` (JSON, any subset of [`Settings`]).

pub mod async_invoke;
mod auth;
pub mod batch;
pub mod catalog;
mod control;
mod families;
mod invoke;
mod json;
mod openai;
pub mod s3;
mod s3_client;
mod server;
mod settings;
mod stats;
mod timer;
pub mod vectors;
pub mod wire;

pub use batch::BatchCounters;
pub use server::Emulator;
pub use settings::{Faults, Latency, Quota, Settings};
pub use stats::{ModelCounters, OpenAiCounters, Stats};

/// The dummy credentials the emulator's S3 side accepts and its async jobs sign with (not
/// secrets: they open nothing but local test servers). Clients keep their own copies.
pub const ACCESS_KEY: &str = "EMULATOR";
pub const SECRET_KEY: &str = "emulator-secret";
