//! embedpipe: turn datasets into vector search indexes.
//!
//! Data flows one way, as Arrow record batches:
//! [`config`] → [`sources`] → [`plan`] → [`dispatch`] (→ [`providers`], using [`models`]) →
//! [`sink`], with [`report`] on the side. [`run`], [`validate`] and [`search`] drive it;
//! [`cli`] is the command line. [`emulator`] is a Bedrock stand-in for tests and newcomers; it
//! shares the registry's facts but none of the client paths.

pub mod cli;
pub mod config;
pub mod dispatch;
pub mod emulator;
pub mod jobs;
pub mod models;
pub mod plan;
pub mod providers;
pub mod report;
pub mod run;
pub mod search;
pub mod sink;
pub mod sources;
pub mod validate;
