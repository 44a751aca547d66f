//! Layer 4, clients (above resolve): how remote services are reached — the Bedrock runtime
//! through the real AWS SDK, and S3 — not what a model's request bodies look like (that is the
//! wire crate's).

pub mod bedrock;
pub mod s3;
