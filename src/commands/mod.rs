//! Layer 8, commands (above report): `run`, `validate`, `plan`, `search`, `runs`, `jobs` — each
//! composes the layers below for one thing a user asks; the CLI only parses arguments and
//! renders results.

pub mod commit;
pub mod jobs;
pub mod plan;
pub mod run;
pub mod runs;
pub mod search;
pub mod validate;
