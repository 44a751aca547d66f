//! `commit` and `runs`: the history of a pipeline's table, and the commit of a sharded run.

use super::{emulator, load, render, EmulatorFlags, EXIT_FAILED, EXIT_INVALID, EXIT_OK};
use render::report_error;
use std::path::Path;

/// `commit`: exit 0 committed (or committed before; failed rows are in the outcome and the
/// failures file), 2 refused (table unchanged), 1 failed midway (run it again).
pub(super) async fn commit_command(
    file: &Path,
    run: &str,
    json: bool,
    allow_empty: bool,
    emu: &EmulatorFlags,
) -> i32 {
    use crate::commands::commit::CommitError;
    let p = match load(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (_emu, overrides) = match emulator::overrides(emu, Some(&p)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    match crate::commands::commit::commit(&p, run, &overrides, allow_empty).await {
        Ok(o) => {
            if json {
                render::print_json(&o);
            } else {
                render::print_commit(&o);
            }
            EXIT_OK
        }
        Err(CommitError::Refused(e)) => {
            report_error(&e);
            EXIT_INVALID
        }
        Err(CommitError::Failed(e)) => {
            report_error(&e);
            eprintln!("the commit stopped midway: run the same commit again to finish it (nothing is committed twice)");
            EXIT_FAILED
        }
    }
}

pub(super) async fn runs_command(
    file: &Path,
    json: bool,
    n: usize,
    run_id: Option<&str>,
    emu: &EmulatorFlags,
) -> i32 {
    let p = match load(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (_emu, overrides) = match emulator::overrides(emu, Some(&p)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Some(id) = run_id {
        return match crate::commands::runs::sharded(&p, &overrides, Some(id)).await {
            Ok(runs) => {
                match json {
                    true => render::print_json(&runs[0]),
                    false => render::print_sharded_runs(&runs),
                }
                EXIT_OK
            }
            Err(e) => {
                report_error(&e);
                EXIT_FAILED
            }
        };
    }
    match crate::commands::runs::recent(&p, n, &overrides).await {
        Ok(runs) => {
            if json {
                render::print_json(&runs);
            } else {
                render::print_runs(&runs);
                // Sharded runs not committed yet are not in the run log: show them too.
                if let Ok(sharded) = crate::commands::runs::sharded(&p, &overrides, None).await {
                    let open: Vec<_> = sharded
                        .into_iter()
                        .filter(|r| r.committed.is_none())
                        .collect();
                    if !open.is_empty() {
                        println!();
                        render::print_sharded_runs(&open);
                    }
                }
            }
            EXIT_OK
        }
        Err(e) => {
            report_error(&e);
            EXIT_FAILED
        }
    }
}
