//! One file per model family: its catalog rows (`MODELS`: ids, profiles, routes, dimensions,
//! formats), what its InvokeModel body may hold and the answer it gets, and, for families with an
//! async route, what StartAsyncInvoke accepts and the result files a job writes. Each row points
//! at its family's [`Service`] (one per version of the family's format); `catalog::FAMILIES`
//! lists the files' `MODELS`.
//!
//! Adding a family: a new file here with its `MODELS` and its `Service` const(s), its `mod` line
//! below, and its `MODELS` in `catalog::FAMILIES`. Nothing else names the family.

pub(crate) mod cohere;
pub(crate) mod common;
pub(crate) mod marengo;
pub(crate) mod nova;
pub(crate) mod titan_multimodal;
pub(crate) mod titan_text;

use crate::async_invoke::{Finished, Task};
use crate::catalog::Model;
use crate::s3_client::S3Uri;
use crate::wire::{Accepted, ApiError};
use common::Obj;
use serde_json::Value;

/// InvokeModel: reads a body (a JSON object) for `model`, with the configured poison string,
/// and builds the answer.
pub(crate) type InvokeFn = fn(&Model, &Obj, Option<&str>) -> Result<Accepted, ApiError>;

/// StartAsyncInvoke: checks a job's `modelInput` for `model` at submit and says what the job
/// must do.
pub(crate) type TaskFn = fn(&'static Model, &Value) -> Result<Task, ApiError>;

/// The result files of a finished job: (where, content).
pub(crate) type ResultsFn = fn(&Finished<'_>) -> Vec<(S3Uri, Vec<u8>)>;

/// A family's side of the service (for one version of its format), as its catalog rows point at
/// it.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) invoke: InvokeFn,
    /// `None`: the family has no async route.
    pub(crate) async_route: Option<AsyncRoute>,
}

/// A family's StartAsyncInvoke side.
#[derive(Debug)]
pub(crate) struct AsyncRoute {
    pub(crate) task: TaskFn,
    pub(crate) results: ResultsFn,
}
