//! Layer 7, report (above dispatch and jobs): progress while a run goes, and the summary at its
//! end (text or JSON).

mod progress;

pub use progress::Progress;

use crate::dispatch::ModelStats;
use crate::sink::runlog::RunRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What a run did, however it ended. `rows_read == rows_written + rows_skipped + rows_failed`
/// for a run that read its whole source.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run_id: String,
    /// `ok`, `rows_failed` (committed, some rows dead-lettered), `failed` or `interrupted`
    /// (nothing committed but what `rows_committed` says).
    pub status: String,
    /// Why a failed or interrupted run stopped.
    pub error: Option<String>,
    pub pipeline: String,
    pub table: String,
    pub uri: String,
    pub mode: String,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_skipped: u64,
    pub rows_failed: u64,
    /// Table rows this run committed (all of `rows_written` when it succeeded; for a failed
    /// incremental run, the chunks committed before it stopped; else 0).
    pub rows_committed: u64,
    /// Incremental runs with `cleanup = "full"`: table rows deleted (gone from the source).
    pub rows_deleted: u64,
    /// Incremental runs: commits made (chunks of upserts).
    pub commits: u64,
    pub failures_by_kind: BTreeMap<String, u64>,
    /// The dead-letter file, when rows failed.
    pub failures_file: Option<String>,
    pub models: Vec<ModelStats>,
    /// Table rows of a media pipeline (one per segment); 0 otherwise.
    pub segments_written: u64,
    /// Chunked pipelines (`[chunk]`): chunk rows written (new, changed or moved chunks).
    pub chunks_written: u64,
    /// The async route's counters (media pipelines).
    pub jobs: Option<crate::jobs::JobStats>,
    /// The batch inference routes' counters (models with `invoke = "batch"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<crate::jobs::batch::BatchStats>,
    /// Compaction and indexes after the run.
    pub maintenance: Option<crate::sink::maintain::Maintenance>,
    #[serde(serialize_with = "crate::util::ser_secs")]
    pub wall_time: Duration,
    pub rows_per_second: f64,
    /// A sharded run's worker: `I/N`, and the run it belongs to. Its rows are staged, not
    /// committed, until `embedpipe commit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardOf>,
}

/// Which shard of which run a summary describes.
#[derive(Debug, Clone, Serialize)]
pub struct ShardOf {
    pub shard: String,
    pub run: String,
}

/// The run-log record of a run that ended with `s`.
pub fn run_record(
    s: &Summary,
    pipeline_hash: String,
    started_at_micros: i64,
    ended_at_micros: i64,
) -> RunRecord {
    let sum = |f: fn(&ModelStats) -> f64| s.models.iter().map(f).sum::<f64>();
    RunRecord {
        run_id: s.run_id.clone(),
        pipeline_hash,
        pipeline: s.pipeline.clone(),
        mode: s.mode.clone(),
        status: s.status.clone(),
        started_at_micros,
        ended_at_micros,
        rows_read: s.rows_read,
        // A run that stopped wrote only what it committed.
        rows_written: match s.status.as_str() {
            "ok" | "rows_failed" => s.rows_written,
            _ => s.rows_committed,
        },
        rows_skipped: s.rows_skipped,
        rows_failed: s.rows_failed,
        rows_deleted: s.rows_deleted,
        calls: s.models.iter().map(|m| m.calls).sum(),
        input_tokens: s.models.iter().map(|m| m.usage.input_tokens).sum(),
        images: s.models.iter().map(|m| m.usage.images).sum(),
        media_seconds: sum(|m| m.usage.video_seconds + m.usage.audio_seconds),
        cost_usd: sum(|m| m.cost_usd),
        failures: serde_json::to_string(&s.failures_by_kind).unwrap_or_default(),
        error: s.error.clone(),
        versions_removed: s
            .maintenance
            .as_ref()
            .map_or(0, |m| m.pruned.versions_removed),
        bytes_removed: s.maintenance.as_ref().map_or(0, |m| m.pruned.bytes_removed),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_outcome(f)?;
        self.write_rows(f)?;
        self.write_table(f)?;
        self.write_jobs(f)?;
        self.write_batch(f)?;
        for m in &self.models {
            write_model(f, m)?;
        }
        self.write_cost(f)?;
        self.write_failures(f)
    }
}

impl Summary {
    /// The first line: what was written, or how far a run that stopped got.
    fn write_outcome(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status.as_str(), &self.shard) {
            ("ok" | "rows_failed", Some(s)) => writeln!(
                f,
                "staged {} rows for table `{}` in {} as shard {} of run {} (mode {}) in {:.2}s ({:.0} rows/s); nothing is visible until `embedpipe commit {} --run {}` after every shard",
                self.rows_written,
                self.table,
                self.uri,
                s.shard,
                s.run,
                self.mode,
                self.wall_time.as_secs_f64(),
                self.rows_per_second,
                self.pipeline,
                s.run,
            ),
            ("ok" | "rows_failed", None) => writeln!(
                f,
                "wrote {} rows to table `{}` in {} (mode {}) in {:.2}s ({:.0} rows/s)",
                self.rows_written,
                self.table,
                self.uri,
                self.mode,
                self.wall_time.as_secs_f64(),
                self.rows_per_second
            ),
            (status, _) => writeln!(
                f,
                "run {status} after {:.2}s: {} rows committed to table `{}` in {} (mode {})",
                self.wall_time.as_secs_f64(),
                self.rows_committed,
                self.table,
                self.uri,
                self.mode,
            ),
        }
    }

    /// Where every row read went, and (incremental runs) the commits and deletions.
    fn write_rows(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  rows: {} read = {} written + {} skipped + {} failed",
            self.rows_read, self.rows_written, self.rows_skipped, self.rows_failed
        )?;
        if self.chunks_written > 0 {
            writeln!(
                f,
                "  chunks: {} chunk rows written for the {} documents written",
                self.chunks_written, self.rows_written
            )?;
        }
        if self.rows_deleted > 0 || self.commits > 0 {
            writeln!(
                f,
                "  incremental: {} rows upserted in {} commits, {} deleted (gone from the source)",
                self.rows_written, self.commits, self.rows_deleted
            )?;
        }
        Ok(())
    }

    /// The table after the run, when maintenance compacted it, built indexes or pruned.
    fn write_table(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self
            .maintenance
            .as_ref()
            .map(|m| m.pruned)
            .filter(|p| p.versions_removed > 0)
        {
            writeln!(
                f,
                "  retention: {} old versions removed ({:.1} MB in {} files)",
                p.versions_removed,
                p.bytes_removed as f64 / 1e6,
                p.files_removed
            )?;
        }
        let Some(m) = self
            .maintenance
            .as_ref()
            .filter(|m| m.compacted || !m.indexes_created.is_empty())
        else {
            return Ok(());
        };
        writeln!(
            f,
            "  table: {} rows{}{}",
            m.rows,
            if m.compacted {
                format!(", compacted ({} fragments)", m.fragments_before)
            } else {
                String::new()
            },
            if m.indexes_created.is_empty() {
                String::new()
            } else {
                format!(", indexes built: {}", m.indexes_created.join(", "))
            }
        )
    }

    /// The async route's counters (media pipelines).
    fn write_jobs(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(j) = &self.jobs else {
            return Ok(());
        };
        writeln!(
            f,
            "  async jobs: {} submitted, {} resumed, {} completed, {} failed, {} timed out; \
             {} segments written; media files {} uploaded, {} already staged",
            j.submitted,
            j.resumed,
            j.completed,
            j.failed,
            j.timed_out,
            self.segments_written,
            j.uploaded,
            j.already_staged
        )
    }

    /// Each batch route's jobs and records.
    fn write_batch(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.batch {
            writeln!(
                f,
                "  batch `{}`: {} records in jobs ({} submitted, {} resumed, {} completed, {} failed, {} timed out); {} inputs from results, {} record errors, {} below the minimum sent on-demand; {} tokens{} billed at the batch price (${:.6})",
                b.model,
                b.records,
                b.jobs_submitted,
                b.jobs_resumed,
                b.jobs_completed,
                b.jobs_failed,
                b.jobs_timed_out,
                b.results_used,
                b.record_errors,
                b.records_below_minimum,
                b.input_tokens,
                match b.images {
                    0 => String::new(),
                    n => format!(" and {n} images"),
                },
                b.cost_usd
            )?;
        }
        Ok(())
    }

    /// The run's total cost at list prices (batch jobs at the batch price), when it cost
    /// anything.
    fn write_cost(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cost: f64 = self.models.iter().map(|m| m.cost_usd).sum::<f64>()
            + self.batch.iter().map(|b| b.cost_usd).sum::<f64>();
        if cost > 0.0 {
            writeln!(
                f,
                "  estimated cost: ${cost:.6} (list prices; override with [model.prices])"
            )?;
        }
        Ok(())
    }

    /// Failed rows by kind, and where they were dead-lettered (if they were kept).
    fn write_failures(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rows_failed == 0 {
            return Ok(());
        }
        let kinds: Vec<String> = self
            .failures_by_kind
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        match &self.failures_file {
            Some(file) => writeln!(f, "  failed rows ({}) are in {file}", kinds.join(", ")),
            None => writeln!(
                f,
                "  failed rows: {} (not kept: the failures file belongs to the committed version)",
                kinds.join(", ")
            ),
        }
    }
}

/// One model's lines: calls, inputs, billed units and cost; retries and busy time; rates.
fn write_model(f: &mut fmt::Formatter<'_>, m: &ModelStats) -> fmt::Result {
    writeln!(
        f,
        "  model {} ({}): {} calls, {} inputs, {}, ${:.6}",
        m.model,
        m.model_id,
        m.calls,
        m.inputs,
        billed_units(m),
        m.cost_usd,
    )?;
    writeln!(f, "    {}", call_trouble(m))?;
    if m.requests_per_minute > 0.0 {
        writeln!(f, "    {}", rates(m))?;
    }
    Ok(())
}

/// What the model billed: tokens (against `plan`'s estimate), images, queries, media seconds.
fn billed_units(m: &ModelStats) -> String {
    let mut units = vec![format!(
        "{} input tokens{}",
        m.usage.input_tokens,
        if m.usage.tokens_estimated {
            " (estimated)".to_string()
        } else if m.estimated_tokens > 0 {
            // What `plan` estimated for these inputs, against what was billed.
            format!(
                " billed vs ~{} planned ({:+.0}%)",
                m.estimated_tokens,
                (m.usage.input_tokens as f64 / m.estimated_tokens as f64 - 1.0) * 100.0
            )
        } else {
            String::new()
        }
    )];
    if m.usage.images > 0 {
        units.push(format!("{} images", m.usage.images));
    }
    if m.usage.queries > 0 {
        units.push(format!("{} queries", m.usage.queries));
    }
    if m.usage.video_seconds > 0.0 {
        units.push(format!("{:.1} s of video", m.usage.video_seconds));
    }
    if m.usage.audio_seconds > 0.0 {
        units.push(format!("{:.1} s of audio", m.usage.audio_seconds));
    }
    units.join(", ")
}

/// Retries, throttling, failed calls and refused inputs (those that happened), and busy time.
fn call_trouble(m: &ModelStats) -> String {
    let mut extra = Vec::new();
    if m.retries > 0 {
        extra.push(format!("{} retries", m.retries));
    }
    if m.throttled > 0 {
        extra.push(format!("{} throttled", m.throttled));
    }
    if m.failed_calls > 0 {
        extra.push(format!("{} failed calls", m.failed_calls));
    }
    if m.rejected_inputs > 0 {
        extra.push(format!(
            "{} inputs rejected before sending",
            m.rejected_inputs
        ));
    }
    extra.push(format!("{:.2}s busy", m.busy.as_secs_f64()));
    extra.join(", ")
}

/// Latency and achieved rates against the limits, the quota group, and throttling's cut.
fn rates(m: &ModelStats) -> String {
    let limit = |l: Option<u32>| l.map_or(String::new(), |l| format!(" (limit {l})"));
    let mut rates = format!(
        "latency p50 {:.1} ms, p95 {:.1} ms; {:.0} requests/min{}, {:.0} tokens/min{}",
        m.latency_p50_ms,
        m.latency_p95_ms,
        m.requests_per_minute,
        limit(m.limit_requests_per_minute),
        m.tokens_per_minute,
        limit(m.limit_tokens_per_minute),
    );
    if let Some(q) = &m.quota {
        rates.push_str(&format!(", quota group `{q}`"));
    }
    if m.concurrency_lowest < m.concurrency {
        rates.push_str(&format!(
            "; calls in flight cut from {} to {} by throttling",
            m.concurrency, m.concurrency_lowest
        ));
    }
    if let Some(b) = &m.server_budget {
        rates.push_str(&format!("; {}", server_budget(b)));
    }
    rates
}

/// The server's last `x-ratelimit-*` report and the waits it caused.
pub fn server_budget(b: &crate::dispatch::ServerBudgetStats) -> String {
    let part = |left: Option<u64>, limit: Option<u64>, what: &str| {
        left.map(|l| match limit {
            Some(n) => format!("{l} of {n} {what}"),
            None => format!("{l} {what}"),
        })
    };
    let left: Vec<String> = [
        part(b.remaining_requests, b.limit_requests, "requests"),
        part(b.remaining_tokens, b.limit_tokens, "tokens"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut s = format!("server budget left {}", left.join(", "));
    if b.pauses > 0 {
        s.push_str(&format!(
            " ({} sends waited {:.1} s for it)",
            b.pauses,
            b.paused.as_secs_f64()
        ));
    }
    s
}
