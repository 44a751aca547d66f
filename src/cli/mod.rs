//! Layer 9, cli (top): arguments and rendering only; each subcommand loads the pipeline, calls
//! one function of [`crate::commands`] (or `embedpipe_emulator`, or the local model), renders
//! the result (module `render`) and picks the exit code.
//!
//! Subcommands: `validate`, `run`, `commit`, `search`, `plan`, `runs`, `jobs`, `emulator`,
//! `models`.
//!
//! Exit codes: 0 success; 1 the run failed midway (nothing committed); 2 invalid command line,
//! pipeline file, input data, sink or missing model (found before any model call; nothing
//! written); 3 the run completed but some rows failed (see the failures file); 130 interrupted.

mod emulator;
mod logging;
mod models;
mod render;
mod runs;

pub use emulator::EmulatorGuard;

use crate::commands::run::{RunError, RunOptions, Signal};
use crate::commands::search::SearchOptions;
use crate::config::{ConfigError, Pipeline};
use clap::{Parser, Subcommand, ValueEnum};
use render::report_error;
use runs::{commit_command, runs_command};
use std::path::{Path, PathBuf};
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
the failures file; a shard worker exits 0); 130 interrupted (Ctrl-C); 143 stopped by SIGTERM. \
`commit`: 0 committed, 1 failed midway (run it again), 2 refused (table unchanged).";

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
        #[command(flatten)]
        emu: EmulatorFlags,
    },
    /// Run a pipeline: read, embed, write the table.
    Run {
        file: PathBuf,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        emu: EmulatorFlags,
        /// Embed every row again and rewrite the table: needed when a step's model, dimension
        /// or parameters changed on an existing table.
        #[arg(long)]
        reindex: bool,
        /// Let `mode = "overwrite"` replace a table that has rows with an empty one (refused
        /// otherwise: an empty source must not erase an index by accident).
        #[arg(long)]
        allow_empty: bool,
        /// Run as shard I of N of a sharded run: read only this shard's rows and stage them
        /// for `embedpipe commit` (nothing is visible in the table until then).
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// The run has N shards; this worker's index comes from JOB_COMPLETION_INDEX
        /// (Kubernetes Indexed Job) or AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job).
        /// Default: EMBEDPIPE_SHARDS.
        #[arg(long, value_name = "N")]
        shards: Option<u32>,
        /// The run id every worker of a sharded run shares. Default: EMBEDPIPE_RUN_ID, else the
        /// Kubernetes Job's name (EMBEDPIPE_JOB_NAME) or the AWS Batch array job's id.
        #[arg(long = "run", value_name = "RUN_ID")]
        run_id: Option<String>,
    },
    /// Commit a sharded run: every shard's staged rows become one table version, once all
    /// shards reported (refused, naming them, when one is missing or failed).
    Commit {
        file: PathBuf,
        /// The run to commit (default: EMBEDPIPE_RUN_ID).
        #[arg(long = "run", value_name = "RUN_ID")]
        run_id: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        /// Let an overwrite run that staged no rows replace a table that has rows.
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        emu: EmulatorFlags,
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
        #[command(flatten)]
        emu: EmulatorFlags,
        /// Only rows matching this SQL predicate on the table's columns, e.g. "year > 2020".
        #[arg(long)]
        filter: Option<String>,
        /// Vector and full-text search together (needs `fts_column` in [sink]).
        #[arg(long)]
        hybrid: bool,
        /// Chunked tables: at most N chunks per document (`--per-doc 1`: the best chunk of
        /// each of the k best documents).
        #[arg(long, value_name = "N")]
        per_doc: Option<usize>,
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
        /// Also count the source rows each of N shards would read (`run --shard I/N`).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=crate::util::MAX_SHARDS as i64))]
        shards: Option<u32>,
        #[command(flatten)]
        emu: EmulatorFlags,
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
        /// Show one sharded run, shard by shard (while it runs and after its commit).
        #[arg(long = "run", value_name = "RUN_ID")]
        run_id: Option<String>,
        #[command(flatten)]
        emu: EmulatorFlags,
    },
    /// List the async jobs (video/audio) of a pipeline's table, from its job ledger.
    Jobs {
        file: PathBuf,
        /// Print the jobs as JSON.
        #[arg(long)]
        json: bool,
        /// Stop the batch inference jobs still running (a backfill given up): records not yet
        /// processed are not billed, and the next run submits them again.
        #[arg(long)]
        stop: bool,
        #[command(flatten)]
        emu: EmulatorFlags,
    },
    /// Serve a Bedrock Runtime emulator on loopback (no AWS account needed), with an
    /// OpenAI-compatible `POST /v1/embeddings` beside it.
    ///
    /// Point pipelines at it with `endpoint_url = "http://127.0.0.1:PORT"` in [[model]] or
    /// AWS_ENDPOINT_URL_BEDROCK_RUNTIME (it accepts any well-formed SigV4 credentials), and
    /// OpenAI-compatible models with `base_url = "http://127.0.0.1:PORT/v1"`.
    Emulator(EmulatorArgs),
    /// Manage local model weights.
    Models {
        #[command(subcommand)]
        action: models::ModelsAction,
    },
}

/// `--emulator` and what it serves.
#[derive(clap::Args, Debug, Clone, Default)]
struct EmulatorFlags {
    /// Send Bedrock and OpenAI-compatible calls to an in-process emulator, and the pipeline's S3
    /// requests to a local S3 server (a folder in the temp directory): no AWS account needed.
    #[arg(long)]
    emulator: bool,
    /// With --emulator: serve a local folder as an S3 bucket, NAME=FOLDER (repeatable), e.g.
    /// `--emulator-bucket embedpipe-sample=sample_data` for a pipeline reading s3://embedpipe-sample/.
    #[arg(long, value_name = "NAME=FOLDER", requires = "emulator")]
    emulator_bucket: Vec<String>,
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
    logging::init(cli.log_format, cli.verbose, cli.quiet);
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

/// One subcommand → its handler.
async fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Validate { file, json, emu } => validate_command(&file, json, &emu).await,
        Command::Run {
            file,
            json,
            emu,
            reindex,
            allow_empty,
            shard,
            shards,
            run_id,
        } => {
            let env = |k: &str| std::env::var(k).ok();
            let shard = match crate::resolve::sharding::shard_run(
                shard.as_deref(),
                shards,
                run_id.as_deref(),
                &env,
            ) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_INVALID;
                }
            };
            let opts = RunOptions {
                progress: !cli.quiet && !json,
                overrides: Default::default(),
                reindex,
                allow_empty,
                shard,
            };
            run_command(&file, opts, json, &emu, cli.quiet).await
        }
        Command::Commit {
            file,
            run_id,
            json,
            allow_empty,
            emu,
        } => {
            let run = run_id.or_else(|| {
                std::env::var(crate::resolve::sharding::RUN_ID_ENV)
                    .ok()
                    .filter(|s| !s.is_empty())
            });
            let Some(run) = run else {
                eprintln!("error: commit needs the run id: --run RUN_ID (or EMBEDPIPE_RUN_ID)");
                return EXIT_INVALID;
            };
            commit_command(&file, &run, json, allow_empty, &emu).await
        }
        Command::Search {
            file,
            query,
            k,
            step,
            columns,
            json,
            emu,
            filter,
            hybrid,
            per_doc,
        } => {
            let opts = SearchOptions {
                query,
                k,
                step,
                columns,
                overrides: Default::default(),
                filter,
                hybrid,
                per_doc,
            };
            search_command(&file, opts, json, &emu).await
        }
        Command::Emulator(args) => emulator::serve(args).await,
        Command::Models { action } => models::models_command(action),
        Command::Plan {
            file,
            json,
            reindex,
            shards,
            emu,
        } => plan_command(&file, json, reindex, shards, &emu).await,
        Command::Runs {
            file,
            json,
            n,
            run_id,
            emu,
        } => runs_command(&file, json, n, run_id.as_deref(), &emu).await,
        Command::Jobs {
            file,
            json,
            stop,
            emu,
        } => jobs_command(&file, json, stop, &emu).await,
    }
}

/// Loads the pipeline file; on error prints it and gives the exit code.
fn load(file: &Path) -> Result<Arc<Pipeline>, i32> {
    crate::resolve::load(file).map(Arc::new).map_err(|e| {
        eprint!("error: {e}");
        EXIT_INVALID
    })
}

async fn validate_command(file: &Path, json: bool, emu: &EmulatorFlags) -> i32 {
    let p = match load(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (_emu, overrides) = match emulator::overrides(emu, Some(&p)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    match crate::commands::validate::check(&p, &overrides).await {
        Ok(c) => {
            if json {
                render::print_json(&render::validate_json(file, &p, &c));
            } else {
                render::print_validate(file, &p, &c);
            }
            EXIT_OK
        }
        Err(e) => {
            report_error(&e);
            EXIT_INVALID
        }
    }
}

/// `run`: `opts.overrides` is filled in here when `--emulator` starts one.
async fn run_command(
    file: &Path,
    mut opts: RunOptions,
    json: bool,
    emu: &EmulatorFlags,
    quiet: bool,
) -> i32 {
    let p = match load(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // `_emu` keeps the emulator serving until the run is over.
    let (_emu, overrides) = match emulator::overrides(emu, Some(&p)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    opts.overrides = overrides;
    let result = crate::commands::run::run(p, opts).await;
    // Whatever ended the run, say what it did (calls, cost, rows committed).
    let summary = match &result {
        Ok(s) => Some(s),
        Err(e) => e.summary(),
    };
    if let Some(summary) = summary {
        if json {
            render::print_json(summary);
        } else if !quiet || result.is_err() {
            print!("{summary}");
        }
    }
    match &result {
        Ok(summary) => {
            if !json && !quiet && summary.rows_written > 0 {
                render::print_search_hint(file);
            }
            // A worker of a sharded run that staged its part succeeded: its failed rows are
            // in its summary and reach the failures file at the commit. (Exit 3 would make
            // Kubernetes and Batch run the finished shard again, paying for it twice.)
            if summary.rows_failed > 0 && summary.shard.is_none() {
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
            eprintln!("{}", render::committed_note(s));
            EXIT_FAILED
        }
        Err(RunError::Interrupted(sig, s)) => {
            eprintln!(
                "interrupted ({}); {}",
                sig.name(),
                render::committed_note(s)
            );
            match sig {
                Signal::Interrupt => EXIT_INTERRUPTED,
                Signal::Terminate => EXIT_TERMINATED,
            }
        }
    }
}

/// `search`: `opts.overrides` is filled in here when `--emulator` starts one.
async fn search_command(
    file: &Path,
    mut opts: SearchOptions,
    json: bool,
    emu: &EmulatorFlags,
) -> i32 {
    let p = match load(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // `_emu` keeps the emulator serving until the search is over.
    let (_emu, overrides) = match emulator::overrides(emu, Some(&p)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    opts.overrides = overrides;
    match crate::commands::search::search(p, opts).await {
        Ok(hits) => {
            if json {
                render::print_json(&hits);
            } else {
                render::print_hits(&hits);
            }
            EXIT_OK
        }
        Err(e) => {
            report_error(&e);
            if e.is::<crate::commands::search::InvalidSearch>() || e.is::<ConfigError>() {
                EXIT_INVALID
            } else {
                EXIT_FAILED
            }
        }
    }
}

async fn plan_command(
    file: &Path,
    json: bool,
    reindex: bool,
    shards: Option<u32>,
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
    match crate::commands::plan::estimate_sharded(&p, reindex, &overrides, shards).await {
        Ok(e) if json => {
            render::print_json(&e);
            EXIT_OK
        }
        Ok(e) => {
            render::print_plan(&e);
            EXIT_OK
        }
        Err(e) => {
            report_error(&e);
            EXIT_INVALID
        }
    }
}

async fn jobs_command(file: &Path, json: bool, stop: bool, emu: &EmulatorFlags) -> i32 {
    let p = match load(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (_emu, overrides) = match emulator::overrides(emu, Some(&p)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if stop {
        return match crate::commands::jobs::stop_batch_jobs(&p, &overrides).await {
            Ok(stopped) if json => {
                render::print_json(&stopped);
                EXIT_OK
            }
            Ok(stopped) => {
                for s in &stopped {
                    println!("{} {}: {}", s.model, s.arn, s.status);
                }
                let n = stopped.iter().filter(|s| s.status == "stopped").count();
                println!("{n} batch jobs stopped");
                EXIT_OK
            }
            Err(e) => {
                report_error(&e);
                EXIT_FAILED
            }
        };
    }
    let listing = match crate::commands::jobs::list(&p, &overrides).await {
        Ok(l) => l,
        Err(e) => {
            report_error(&e);
            return EXIT_INVALID;
        }
    };
    if json {
        render::print_json(&listing.jobs);
    } else {
        render::print_jobs(&listing);
    }
    EXIT_OK
}
