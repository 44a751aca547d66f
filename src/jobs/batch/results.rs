//! Reading a batch job's output: its result lines (joined back by `recordId`) and manifest.

use crate::prepare::Inputs;
use crate::util::FailureKind;
use anyhow::{Context, Result};
use serde::Deserialize;

use super::RecordOutcome;

/// One line of a job's output file.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutputLine {
    record_id: String,
    model_output: Option<serde_json::Value>,
    error: Option<RecordError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordError {
    error_code: Option<serde_json::Value>,
    error_message: Option<String>,
}

/// Lines of one output file (`first_line` lines of it came before them): each record's
/// vector, or the service's error for it.
pub(super) fn parse_output(
    spec: &'static embedpipe_wire::ModelSpec,
    params: &embedpipe_wire::Params,
    normalize: bool,
    body: &[u8],
    first_line: usize,
) -> Result<Vec<(String, RecordOutcome)>> {
    let mut out = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let n = first_line + n;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l: OutputLine = serde_json::from_slice(line)
            .with_context(|| format!("line {} is not a result record", n + 1))?;
        let outcome = match (l.model_output, l.error) {
            (Some(body), None) => {
                let body = serde_json::to_vec(&body)?;
                match embedpipe_wire::parse_response(spec, params, &body, 1) {
                    Ok(mut p) => {
                        let mut v = p.vectors.swap_remove(0);
                        if normalize {
                            embedpipe_wire::l2_normalize(&mut v);
                        }
                        Ok(v)
                    }
                    Err(e) => Err((
                        FailureKind::JobResults,
                        format!("record {}: {e}", l.record_id),
                    )),
                }
            }
            (_, Some(e)) => {
                let code = e.error_code.map(|c| c.to_string()).unwrap_or_default();
                let code = code.trim_matches('"').to_string();
                // The service's own trouble (5xx, throttling) says nothing about the input: it
                // counts towards `max_service_failures` like an on-demand call's.
                let kind = match code.parse::<u16>() {
                    Ok(429) => FailureKind::Call(crate::util::ErrorClass::Throttled),
                    Ok(500..=599) => FailureKind::Call(crate::util::ErrorClass::ServerError),
                    _ => FailureKind::BatchRecord,
                };
                Err((
                    kind,
                    format!(
                        "the batch job answered this record with error {}: {}",
                        code,
                        e.error_message.as_deref().unwrap_or("(no message)")
                    ),
                ))
            }
            (None, None) => Err((
                FailureKind::JobResults,
                format!("record {} has neither modelOutput nor error", l.record_id),
            )),
        };
        out.push((l.record_id, outcome));
    }
    Ok(out)
}

/// The `recordId`s of lines of a job's input file (`first_line` lines came before them).
pub(super) fn record_ids(body: &[u8], first_line: usize) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Id {
        record_id: String,
    }
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(n, l)| {
            serde_json::from_slice::<Id>(l)
                .map(|id| id.record_id)
                .with_context(|| {
                    format!(
                        "line {} is not a record with a recordId",
                        first_line + n + 1
                    )
                })
        })
        .collect()
}

/// The inputs at `positions`, as a step's inputs.
pub(super) fn select(inputs: &Inputs, positions: &[usize]) -> Inputs {
    match inputs {
        Inputs::Text(t) => Inputs::Text(positions.iter().map(|&i| t[i].clone()).collect()),
        Inputs::Image(t) => Inputs::Image(positions.iter().map(|&i| t[i].clone()).collect()),
        Inputs::TextImage(t) => {
            Inputs::TextImage(positions.iter().map(|&i| t[i].clone()).collect())
        }
        Inputs::Media(t) => Inputs::Media(positions.iter().map(|&i| t[i].clone()).collect()),
    }
}
