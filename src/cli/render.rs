//! What the CLI prints: human text on stdout, `--json` documents, and errors on stderr. Every
//! line and JSON key here is part of the interface (scripts and tests read them).

use crate::commands::jobs::Listing;
use crate::commands::plan::Estimate;
use crate::commands::search::Hit;
use crate::commands::validate::Checked;
use crate::config::{ConfigError, Pipeline, StepInput};
use crate::report::Summary;
use crate::sink::runlog::RunRecord;
use embedpipe_wire::ModelSpec;
use serde_json::{json, Value};
use std::path::Path;

/// Prints an error the way users read it best: config errors with their snippet.
pub(super) fn report_error(e: &anyhow::Error) {
    if let Some(ce) = e.downcast_ref::<ConfigError>() {
        eprint!("error: {ce}");
    } else {
        eprintln!(
            "error: {}",
            crate::sink::failures::scrub_internal_paths(&format!("{e:#}"))
        );
    }
}

/// A `--json` document on stdout, pretty-printed.
pub(super) fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("json"));
}

// ---- validate ----

/// `validate --json`. Built as `serde_json::Value`s section by section, so the keys come out in
/// the same order as they always have, whichever map serde_json is built with.
pub(super) fn validate_json(file: &Path, p: &Pipeline, c: &Checked) -> Value {
    let mut v = json!({
        "ok": true,
        "pipeline": file.display().to_string(),
        "source": validate_source_json(c),
        "steps": validate_steps_json(p, c),
        "sink": validate_sink_json(p, c),
        "output_columns": validate_output_columns(c),
    });
    if let Some(chunk) = &c.settings.chunk {
        v["chunk"] = json!({
            "strategy": chunk.strategy.as_str(),
            "max_tokens": chunk.max_tokens,
            "overlap_tokens": chunk.overlap_tokens,
        });
    }
    v
}

fn validate_source_json(c: &Checked) -> Value {
    json!({
        "files": c.source.files.iter().map(|f| f.display.to_string()).collect::<Vec<_>>(),
        "rows": c.source.total_rows(),
        "columns_read": c.read_columns,
        "id_column": c.id_column,
    })
}

fn validate_steps_json(p: &Pipeline, c: &Checked) -> Vec<Value> {
    p.steps
        .iter()
        .map(|s| {
            let m = &c.models[s.model_index];
            json!({
                "step": s.name,
                "vector": s.vector,
                "model": m.name,
                "model_id": m.model_id(),
                "dimension": m.dimension,
            })
        })
        .collect()
}

fn validate_sink_json(p: &Pipeline, c: &Checked) -> Value {
    json!({
        "uri": c.target.uri,
        "table": c.target.table,
        "mode": p.write_mode().as_str(),
        "table_exists": c.existing.is_some(),
    })
}

fn validate_output_columns(c: &Checked) -> Vec<String> {
    c.layout
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// `validate` without `--json`.
pub(super) fn print_validate(file: &Path, p: &Pipeline, c: &Checked) {
    println!("{}: ok", file.display());
    println!(
        "  source: {} file(s), {} rows",
        c.source.files.len(),
        c.source.total_rows().map_or("?".into(), |r| r.to_string())
    );
    if let Some(chunk) = &c.settings.chunk {
        println!(
            "  chunk: {} from {}, up to {} tokens per model, {} tokens of overlap",
            chunk.strategy.as_str(),
            describe_input(&chunk.input),
            chunk.max_tokens,
            chunk.overlap_tokens
        );
    }
    for s in &p.steps {
        let m = &c.models[s.model_index];
        println!(
            "  step {}: {} -> `{}` ({}, {}-d)",
            s.name,
            describe_input(&s.input),
            s.vector,
            m.model_id(),
            m.dimension
        );
    }
    println!(
        "  sink: table `{}` in {} (mode {}, table {})",
        c.target.table,
        c.target.uri,
        p.write_mode().as_str(),
        if c.existing.is_some() {
            "exists"
        } else {
            "will be created"
        }
    );
}

fn describe_input(i: &StepInput) -> String {
    match i {
        StepInput::Column(c) => format!("text column `{c}`"),
        StepInput::Template(t) => format!("template over `{}`", t.columns().join("`, `")),
        StepInput::Image(c) => format!("image column `{c}`"),
        StepInput::TextImage(t, i) => format!(
            "template over `{}` with image column `{i}`",
            t.columns().join("`, `")
        ),
        StepInput::Media(c, _) => format!("video/audio column `{c}` (async jobs)"),
    }
}

// ---- run ----

/// What a stopped run left in the table.
pub(super) fn committed_note(s: &Summary) -> String {
    if s.rows_committed == 0 {
        "nothing was committed to the table".to_string()
    } else {
        format!(
            "{} rows were committed in {} commits before it stopped (a new run skips them)",
            s.rows_committed, s.commits
        )
    }
}

/// After a run that wrote rows: how to search them.
pub(super) fn print_search_hint(file: &Path) {
    println!(
        "search it: embedpipe search {} \"your query\"",
        file.display()
    );
}

// ---- search ----

pub(super) fn print_hits(hits: &[Hit]) {
    if hits.is_empty() {
        println!("no results");
        return;
    }
    for h in hits {
        let score = match h.relevance {
            Some(r) => format!("score {r:.4}"),
            None => format!("{:.4}", h.distance),
        };
        match chunk_hit(h) {
            Some((place, text, rest)) => {
                println!("{:>3}. {score}  {}  {place}", h.rank, h.id);
                if !rest.is_empty() {
                    println!("     {}", rest.join("  "));
                }
                println!("     \"{text}\"");
            }
            None => {
                let fields: Vec<String> = h.fields.iter().map(|(k, v)| hit_field(k, v)).collect();
                println!("{:>3}. {score}  {}  {}", h.rank, h.id, fields.join("  "));
            }
        }
    }
}

/// Characters of a chunk's text shown on a terminal (`--json` has all of it).
const CHUNK_TEXT_SHOWN: usize = 240;

/// A hit of a chunked table: where it sits (document, offsets, page, heading), its text cut
/// for a terminal, and its other fields. `None` for other tables.
fn chunk_hit(h: &Hit) -> Option<(String, String, Vec<String>)> {
    let text = h.fields.get("text")?.as_str()?;
    h.fields.get("start_char")?;
    let get = |k: &str| match h.fields.get(k) {
        Some(Value::Null) | None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => Some(v.to_string()),
    };
    let mut place = Vec::new();
    if let Some(d) = get("doc_id") {
        place.push(format!("doc {d}"));
    }
    if let Some(p) = get("page") {
        place.push(format!("page {p}"));
    }
    if let (Some(a), Some(b)) = (get("start_char"), get("end_char")) {
        place.push(format!("chars {a}..{b}"));
    }
    if let (Some(i), Some(n)) = (get("chunk_index"), get("chunk_count")) {
        place.push(format!(
            "chunk {}/{n}",
            i.parse::<u64>().map_or(i.clone(), |i| (i + 1).to_string())
        ));
    }
    if let Some(s) = get("heading") {
        place.push(format!("§ {s}"));
    }
    let placed = [
        "text",
        "doc_id",
        "page",
        "start_char",
        "end_char",
        "chunk_index",
        "chunk_count",
        "heading",
    ];
    let rest = h
        .fields
        .iter()
        .filter(|(k, _)| !placed.contains(&k.as_str()))
        .map(|(k, v)| hit_field(k, v))
        .collect();
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut shown: String = flat.chars().take(CHUNK_TEXT_SHOWN).collect();
    if shown.len() < flat.len() {
        shown.push('…');
    }
    Some((place.join("  "), shown, rest))
}

/// `name=value` on one line, the value cut at 80 characters.
fn hit_field(k: &str, v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let s: String = s.replace('\n', " ");
    let short: String = s.chars().take(80).collect();
    if short.len() < s.len() {
        format!("{k}={short}…")
    } else {
        format!("{k}={short}")
    }
}

// ---- plan ----

pub(super) fn print_plan(e: &Estimate) {
    println!(
        "plan for table `{}` (mode {}): {} rows read: {} to embed, {} unchanged, {} rejected before any call{}",
        e.table,
        e.mode,
        e.rows_read,
        e.rows_to_embed,
        e.rows_to_skip,
        e.rows_rejected,
        if e.rows_to_delete > 0 {
            format!(", {} to delete", e.rows_to_delete)
        } else {
            String::new()
        }
    );
    if let Some(rows) = &e.rows_per_shard {
        let shown: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i}: {n}"))
            .collect();
        println!("  rows per shard: {}", shown.join(", "));
    }
    if let Some(c) = &e.chunks {
        println!(
            "  chunks: {} in all: {} to embed, {} reused from the table (no call), {} unchanged, {} stale to delete",
            c.chunks, c.to_embed, c.to_reuse, c.unchanged, c.to_delete
        );
    }
    for m in &e.models {
        let mut units = vec![format!("~{} input tokens", m.input_tokens)];
        if m.images > 0 {
            units.push(format!("{} images", m.images));
        }
        if m.queries > 0 {
            units.push(format!("{} queries", m.queries));
        }
        if m.media_files > 0 {
            units.push(format!(
                "{} media files (async jobs; billed per second)",
                m.media_files
            ));
        }
        let time = match m.minutes_at_quota {
            Some(t) => format!(", ≥ {t:.1} min at the configured quota"),
            None => String::new(),
        };
        println!(
            "  model {} ({}): {} inputs, {}{} calls, {}{}, ~${:.6}",
            m.model,
            m.model_id,
            m.inputs,
            if m.calls_exact { "" } else { "≥ " },
            m.calls,
            units.join(", "),
            time,
            m.cost_usd
        );
        if let Some(b) = &m.batch {
            println!(
                "    batch inference: {} jobs holding {} records{}; ~${:.6} at the batch price vs ~${:.6} on-demand",
                b.jobs,
                b.records_in_jobs,
                if b.records_on_demand > 0 {
                    format!(", {} below the minimum records per job sent on-demand", b.records_on_demand)
                } else {
                    String::new()
                },
                m.cost_usd,
                b.on_demand_cost_usd
            );
        }
    }
    println!(
        "  estimated cost: ~${:.6} (list prices; tokens estimated at ~4 characters each)",
        e.cost_usd
    );
}

// ---- runs ----

pub(super) fn print_commit(o: &crate::commands::commit::CommitOutcome) {
    let version = o
        .version
        .map(|v| format!(" as version {v}"))
        .unwrap_or_default();
    match o.committed_now {
        true => println!(
            "committed run {} ({} shards, mode {}) to table `{}` in {}{version} in {:.2}s",
            o.run_id, o.shards, o.mode, o.table, o.uri, o.commit_secs
        ),
        false => println!(
            "run {} was committed before{version}; nothing to do",
            o.run_id
        ),
    }
    println!(
        "  rows: {} read = {} written + {} skipped + {} failed; {} table rows, {} deleted",
        o.rows_read, o.rows_written, o.rows_skipped, o.rows_failed, o.table_rows, o.rows_deleted
    );
    println!("  calls: {}, cost ${:.6}", o.calls, o.cost_usd);
    if let Some(f) = &o.failures_file {
        println!("  failures: {f}");
    }
}

/// Sharded runs, shard by shard.
pub(super) fn print_sharded_runs(runs: &[crate::commands::runs::ShardedRun]) {
    for r in runs {
        println!(
            "sharded run {}: {} ({} shards, mode {})",
            r.run_id, r.status, r.shards, r.mode
        );
        println!(
            "  {:>5} {:<12} {:>8} {:>8} {:>7} {:>7} {:>9} {:>10}",
            "SHARD", "STATUS", "READ", "WRITTEN", "FAILED", "CALLS", "SECONDS", "COST"
        );
        for s in &r.shard_status {
            println!(
                "  {:>5} {:<12} {:>8} {:>8} {:>7} {:>7} {:>9} {:>10.6}{}",
                s.shard,
                s.status,
                s.rows_read,
                s.rows_written,
                s.rows_failed,
                s.calls,
                s.wall_secs.map_or("-".into(), |w| format!("{w:.1}")),
                s.cost_usd,
                s.error
                    .as_deref()
                    .map(|e| format!("  {e}"))
                    .unwrap_or_default(),
            );
        }
        if let Some(c) = &r.committed {
            let version = c
                .version
                .map(|v| format!(" version {v}"))
                .unwrap_or_default();
            println!(
                "  committed{version}: {} rows written, {} table rows, cost ${:.6}",
                c.rows_written, c.table_rows, c.cost_usd
            );
        }
    }
}

pub(super) fn print_runs(runs: &[RunRecord]) {
    if runs.is_empty() {
        println!("no runs recorded yet");
        return;
    }
    println!(
        "{:<20} {:>8} {:<12} {:<12} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>10}  PIPELINE",
        "STARTED (UTC)",
        "SECONDS",
        "MODE",
        "STATUS",
        "READ",
        "WRITTEN",
        "SKIPPED",
        "FAILED",
        "DELETED",
        "CALLS",
        "COST"
    );
    for r in runs {
        print_run(r);
    }
}

fn print_run(r: &RunRecord) {
    let started = aws_smithy_types::DateTime::from_millis(r.started_at_micros / 1000)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default();
    println!(
        "{:<20} {:>8.1} {:<12} {:<12} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>10.6}  {}",
        started.get(..19).unwrap_or(&started),
        (r.ended_at_micros - r.started_at_micros) as f64 / 1e6,
        r.mode,
        r.status,
        r.rows_read,
        r.rows_written,
        r.rows_skipped,
        r.rows_failed,
        r.rows_deleted,
        r.calls,
        r.cost_usd,
        &r.pipeline_hash[..8.min(r.pipeline_hash.len())],
    );
    if let Some(e) = &r.error {
        println!("    {e}");
    }
}

// ---- jobs ----

pub(super) fn print_jobs(listing: &Listing) {
    if listing.jobs.is_empty() {
        println!("no jobs recorded in {}", listing.location);
        return;
    }
    println!(
        "{:<12} {:>8}  {:<28} {:<40} ARN",
        "STATUS", "AGE", "MODEL", "INPUT"
    );
    for j in &listing.jobs {
        println!(
            "{:<12} {:>8}  {:<28} {:<40} {}",
            j.status.as_str(),
            short_age(listing.age_seconds(j)),
            j.model,
            job_input(j),
            j.arn.as_deref().unwrap_or("-")
        );
        if let Some(f) = &j.failure {
            println!("{:<12} {:>8}  {f}", "", "");
        }
    }
}

/// An async job's input; a batch job's records, and (finished) its manifest's counts.
fn job_input(j: &crate::jobs::ledger::JobRecord) -> String {
    match &j.counts {
        Some(c) => format!(
            "batch: {} records, {} processed, {} failed",
            c.total_record_count, c.processed_record_count, c.error_record_count
        ),
        None if j.modality == "batch" => format!("batch: {}", j.input),
        None => j.input.clone(),
    }
}

/// `42s`, `17m`, `5h`, `3d`.
fn short_age(age: f64) -> String {
    if age < 120.0 {
        format!("{age:.0}s")
    } else if age < 7200.0 {
        format!("{:.0}m", age / 60.0)
    } else if age < 172_800.0 {
        format!("{:.0}h", age / 3600.0)
    } else {
        format!("{:.0}d", age / 86400.0)
    }
}

// ---- models ----

/// `models list`: one line per known model.
pub(super) fn print_models<'a>(specs: impl IntoIterator<Item = &'a ModelSpec>) {
    for s in specs {
        let dims: Vec<String> = s.dimensions.iter().map(|d| d.to_string()).collect();
        let mods: Vec<&str> = s.modalities.iter().map(|m| m.as_str()).collect();
        println!(
            "{:<45} {:<6} dims {:<12} inputs {}",
            s.id,
            format!("{:?}", s.provider).to_lowercase(),
            dims.join("/"),
            mods.join("+")
        );
    }
}
