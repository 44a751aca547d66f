//! Layer 1, util (the ground floor of the pipeline crate, beside the wire crate): small pieces every layer may use — CPU work off the
//! runtime, the retry policy and error classes of calls, why a row failed, the content hash, S3
//! URIs and local-or-S3 locations. It imports nothing from the crate.

pub mod columns;
mod cpu;
pub mod failure;
mod hash;
mod location;
pub mod retry;
mod s3uri;
mod shard;
pub mod tokens;

pub use cpu::cpu;
pub use failure::{FailureKind, RowFailure};
pub use hash::content_hash;
pub use location::{describe_secs, is_url, parse_duration, Location};
pub use retry::{Attempts, ErrorClass, RetryPolicy};
pub use s3uri::S3Uri;
pub use shard::{balanced, shard_of, Shard, MAX_SHARDS};

/// Durations in reports: seconds, to the millisecond.
pub fn ser_secs<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}
