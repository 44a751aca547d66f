//! What can be configured, at start or at runtime (`PUT /_emulator/config`): latency, faults,
//! quotas, access, async jobs, batch inference jobs, replay, and the OpenAI-compatible side's own
//! knobs. Kept apart from the server so the CLI and the tests can build and parse settings
//! without reading the server's code.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Simulated service latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Latency {
    #[default]
    None,
    Fixed {
        ms: f64,
    },
    Uniform {
        min_ms: f64,
        max_ms: f64,
    },
    Normal {
        mean_ms: f64,
        sd_ms: f64,
    },
}

impl Latency {
    /// Parses `50`, `20..80` (uniform) or `normal:50,10` (milliseconds).
    pub fn parse(s: &str) -> Result<Self> {
        let num = |x: &str| -> Result<f64> {
            let v: f64 = x
                .trim()
                .trim_end_matches("ms")
                .parse()
                .with_context(|| format!("`{x}` is not a number of milliseconds"))?;
            if !(v >= 0.0 && v.is_finite()) {
                bail!("latency must be zero or positive");
            }
            Ok(v)
        };
        if let Some(rest) = s.strip_prefix("normal:") {
            let (m, sd) = rest
                .split_once(',')
                .context("normal latency is `normal:MEAN,SD`")?;
            return Ok(Latency::Normal {
                mean_ms: num(m)?,
                sd_ms: num(sd)?,
            });
        }
        if let Some((a, b)) = s.split_once("..") {
            let (min_ms, max_ms) = (num(a)?, num(b)?);
            if min_ms > max_ms {
                bail!("uniform latency `{s}`: the minimum is above the maximum");
            }
            return Ok(Latency::Uniform { min_ms, max_ms });
        }
        let ms = num(s)?;
        Ok(if ms == 0.0 {
            Latency::None
        } else {
            Latency::Fixed { ms }
        })
    }

    /// One draw of the latency.
    pub(crate) fn sample(&self) -> Duration {
        let ms = match *self {
            Latency::None => 0.0,
            Latency::Fixed { ms } => ms,
            Latency::Uniform { min_ms, max_ms } => min_ms + (max_ms - min_ms) * fastrand::f64(),
            Latency::Normal { mean_ms, sd_ms } => {
                // Box-Muller.
                let (u1, u2) = (fastrand::f64().max(1e-12), fastrand::f64());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mean_ms + sd_ms * z).max(0.0)
            }
        };
        Duration::from_secs_f64(ms / 1000.0)
    }
}

/// Fault injection rates (0..1), drawn independently per request in this order. The OpenAI-compatible
/// endpoint draws the same rates and answers in its own wire form (429 `rate_limit_exceeded`,
/// 500/503, 504, TEI's 503 `Overloaded`, a cut body, a dropped connection).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// 429 ThrottlingException (besides quota throttling).
    pub throttle: f64,
    /// 500 InternalServerException / 503 ServiceUnavailableException.
    pub server_error: f64,
    /// 408 ModelTimeoutException.
    pub model_timeout: f64,
    /// 429 ModelNotReadyException.
    pub not_ready: f64,
    /// 200 with a truncated JSON body.
    pub malformed: f64,
    /// The connection is dropped without an answer.
    pub reset: f64,
}

/// Per-model quotas (per minute, sliding window; the OpenAI-compatible side measures them over
/// [`Settings::quota_window_ms`] instead, so tests need not wait a minute).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// Everything configurable, changeable at runtime through `PUT /_emulator/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub latency: Latency,
    pub faults: Faults,
    /// Quota applied to every model without its own entry.
    pub quota: Quota,
    /// Quotas per model id (base id; profiles share their model's quota).
    pub model_quotas: BTreeMap<String, Quota>,
    /// Only this access key id is accepted (default: any well-formed SigV4 request).
    pub access_key_id: Option<String>,
    /// Models the caller has no access to (403 AccessDeniedException).
    pub denied_models: Vec<String>,
    /// Text inputs containing this string are refused with ValidationException (OpenAI side: the
    /// whole request is refused with a 400 naming the input).
    pub poison: Option<String>,
    /// How long an async-invoke job runs before its results are written (ms).
    pub async_job_ms: u64,
    /// Share (0..1) of async-invoke jobs that end `Failed` (drawn per job).
    pub async_failure_rate: f64,
    /// The S3-compatible server async and batch jobs read inputs from and write results to.
    pub s3_endpoint: Option<String>,
    /// How long after its submission a batch inference job finishes (ms). Jobs read the current
    /// value while they wait, so a test can hold them in progress with a large value and release
    /// them by lowering it.
    pub batch_job_ms: u64,
    /// Fewest records a batch job may have: fewer and it ends `Failed` at validation (AWS's
    /// quota varies by model; 100 is the smallest quoted).
    pub batch_min_records: u64,
    /// Most records a batch job may have: more and it ends `Failed` at validation.
    pub batch_max_records: u64,
    /// Batch jobs per model that may be unfinished at once: one more create is refused with
    /// `ServiceQuotaExceededException`.
    pub batch_max_jobs_in_progress: u64,
    /// Share (0..1) of batch records answered with an error line (500), drawn per record.
    pub batch_record_failure: f64,
    /// The next this many batch jobs created end `Failed` (counted down as jobs take them):
    /// a deterministic job failure for tests.
    pub batch_fail_jobs: u32,
    /// Share (0..1) of batch jobs that end `Failed` (drawn per job).
    pub batch_job_failure: f64,
    /// While set, every unfinished batch job ends `Expired` (no output), as a job does that
    /// outlives its timeout.
    pub batch_expire: bool,
    /// Share (0..1) of a batch job's records left unprocessed (drawn per record): the job ends
    /// `PartiallyCompleted`, as one does that could not process every record in time.
    pub batch_unprocessed: f64,
    /// Answer each request with the answer of the first request of its shape (model, number of
    /// inputs, parameters): inputs are read and vectors and JSON made only once per shape, and
    /// repeats are neither validated nor embedded again. A nearly free service, for measuring
    /// the client's own speed; never for checking what the client sends.
    pub replay: bool,
    /// OpenAI side: only `Authorization: Bearer <this>` is accepted (default: no key needed).
    pub openai_api_key: Option<String>,
    /// OpenAI side: bodies above this many bytes are refused with 413 (TEI's payload limit).
    pub openai_max_body_bytes: u64,
    /// OpenAI side: the `Retry-After` (seconds) sent with 429 and 503 answers (default: none).
    pub openai_retry_after_secs: Option<f64>,
    /// OpenAI side: the value of this request header is kept in the counters (lets a test check
    /// that a header the client took from its environment arrived).
    pub openai_echo_header: Option<String>,
    /// OpenAI side: `data` comes back in reverse index order, so clients must sort by `index`.
    pub openai_shuffle: bool,
    /// OpenAI side: the span of the quota window in ms (default 60,000: a minute); short windows
    /// keep quota tests fast. Bedrock's window stays a minute.
    pub quota_window_ms: Option<u64>,
}

/// The OpenAI side's default body limit: TEI's default payload limit.
const OPENAI_MAX_BODY_BYTES: u64 = 2_000_000;

impl Default for Settings {
    fn default() -> Self {
        Self {
            latency: Latency::default(),
            faults: Faults::default(),
            quota: Quota::default(),
            model_quotas: BTreeMap::new(),
            access_key_id: None,
            denied_models: Vec::new(),
            poison: None,
            async_job_ms: 0,
            async_failure_rate: 0.0,
            s3_endpoint: None,
            batch_job_ms: 300,
            batch_min_records: 100,
            batch_max_records: 50_000,
            batch_max_jobs_in_progress: 10,
            batch_record_failure: 0.0,
            batch_fail_jobs: 0,
            batch_job_failure: 0.0,
            batch_expire: false,
            batch_unprocessed: 0.0,
            replay: false,
            openai_api_key: None,
            openai_max_body_bytes: OPENAI_MAX_BODY_BYTES,
            openai_retry_after_secs: None,
            openai_echo_header: None,
            openai_shuffle: false,
            quota_window_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_forms() {
        assert_eq!(Latency::parse("0").unwrap(), Latency::None);
        assert_eq!(Latency::parse("50").unwrap(), Latency::Fixed { ms: 50.0 });
        assert_eq!(
            Latency::parse("20..80").unwrap(),
            Latency::Uniform {
                min_ms: 20.0,
                max_ms: 80.0
            }
        );
        assert_eq!(
            Latency::parse("normal:50,10").unwrap(),
            Latency::Normal {
                mean_ms: 50.0,
                sd_ms: 10.0
            }
        );
        assert!(Latency::parse("80..20").is_err());
        assert!(Latency::parse("fast").is_err());
    }
}
