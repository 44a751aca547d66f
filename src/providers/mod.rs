//! Providers run model calls: they know how to reach a model (in-process, HTTP/SDK), not what
//! its request bodies look like.

pub mod bedrock;
pub mod local;
pub mod s3;
