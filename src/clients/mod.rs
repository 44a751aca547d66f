//! Layer 4, clients (above resolve): how remote services are reached — the Bedrock runtime
//! through the real AWS SDK, S3 for media jobs (the SDK), and object storage for data, tables and
//! side files (`store`, through `object_store`) — not what a model's request bodies look like (that is the
//! wire crate's).

pub mod bedrock;
pub mod s3;
pub mod store;
