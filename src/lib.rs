//! embedpipe: turn datasets into vector search indexes.
//!
//! Data flows one way, as Arrow record batches, through layers that import only from below:
//! 1. [`embedpipe_wire`] (model formats, a crate of its own) and [`util`] (the ground floor);
//! 2. [`config`]: the pipeline file as written;
//! 3. [`resolve`]: settings per component, every default applied once;
//! 4. [`clients`] (Bedrock, S3), [`engines`] (local inference), [`sources`], [`sink`] (the only
//!    module that names LanceDB);
//! 5. [`prepare`]: rows → model inputs;
//! 6. [`dispatch`] (model calls) and [`jobs`] (async invoke);
//! 7. [`report`];
//! 8. [`commands`] (run, validate, plan, search);
//! 9. [`cli`]: arguments and rendering.
//!
//! The Bedrock emulator is a crate of its own (`embedpipe-emulator`), used by the CLI's
//! `--emulator` and the tests, never by the library's layers.

pub mod util;

pub mod config;

pub mod resolve;

pub mod clients;
pub mod engines;
pub mod sink;
pub mod sources;

pub mod prepare;

pub mod dispatch;
pub mod jobs;

pub mod report;

pub mod commands;

pub mod cli;
