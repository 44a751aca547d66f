//! The Bedrock emulator from the command line: `--emulator` (an in-process emulator, plus a
//! local S3 server for pipelines with async jobs, living as long as the command) and the
//! `emulator` subcommand (serve one on a port until Ctrl-C).

use super::render::report_error;
use super::{EmulatorArgs, EmulatorFlags, EXIT_FAILED, EXIT_INVALID, EXIT_OK};
use crate::config::Pipeline;
use crate::resolve::{ModelSettings, Overrides};
use crate::util::S3Uri;
use embedpipe_emulator::s3::LocalS3;
use embedpipe_emulator::{Emulator, Latency, Settings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What `--emulator` started; it all lives as long as this value.
pub struct EmulatorGuard {
    _bedrock: Option<Emulator>,
    _s3: Option<LocalS3>,
}

/// Starts an in-process Bedrock emulator for `--emulator` — and, for pipelines with async jobs,
/// a local S3 server (a folder in the temp directory) for staging and results. Without
/// `--emulator`, starts nothing and overrides nothing. On error, prints it and gives the exit
/// code.
pub(super) async fn overrides(
    flags: &EmulatorFlags,
    pipeline: Option<&Pipeline>,
) -> Result<(EmulatorGuard, Overrides), i32> {
    let mut guard = EmulatorGuard {
        _bedrock: None,
        _s3: None,
    };
    if !flags.emulator {
        return Ok((guard, Default::default()));
    }
    let seeds = match flags
        .emulator_bucket
        .iter()
        .map(|s| parse_seed(s))
        .collect::<anyhow::Result<Vec<_>>>()
    {
        Ok(s) => s,
        Err(e) => {
            report_error(&e);
            return Err(EXIT_INVALID);
        }
    };
    let mut buckets = pipeline.map(pipeline_buckets).unwrap_or_default();
    buckets.extend(seeds.iter().map(|(b, _)| b.clone()));
    buckets.sort();
    buckets.dedup();
    match start(&buckets, &seeds).await {
        Ok((emu, s3)) => {
            tracing::info!(
                "Bedrock and OpenAI-compatible calls go to the in-process emulator at {}",
                emu.endpoint()
            );
            let overrides = Overrides {
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

/// The S3 buckets the pipeline names: its source, sink and failures file, those its async
/// jobs write to and stage in, and its batch jobs' prefix.
fn pipeline_buckets(p: &Pipeline) -> Vec<String> {
    let jobs = ModelSettings::all(p, &Default::default())
        .into_iter()
        .flat_map(|m| {
            let jobs = m.jobs.map(|j| [j.output.bucket, j.staging.bucket]);
            let batch = m.batch.map(|b| b.prefix.bucket);
            jobs.into_iter().flatten().chain(batch)
        });
    let sink = p.sink();
    let named = p
        .source_paths()
        .into_iter()
        .map(|s| s.get_ref().to_string())
        .chain([sink.uri.get_ref().to_string()])
        .chain(sink.failures.iter().map(|f| f.get_ref().to_string()))
        .filter_map(|u| S3Uri::parse(&u).ok().map(|u| u.bucket));
    jobs.chain(named).collect()
}

/// `NAME=FOLDER` of `--emulator-bucket`.
fn parse_seed(text: &str) -> anyhow::Result<(String, PathBuf)> {
    let (name, folder) = text.split_once('=').ok_or_else(|| {
        anyhow::anyhow!(
            "--emulator-bucket `{text}`: write NAME=FOLDER, e.g. embedpipe-sample=sample_data"
        )
    })?;
    let folder = PathBuf::from(folder);
    if !folder.is_dir() {
        anyhow::bail!(
            "--emulator-bucket `{text}`: {} is not a folder",
            folder.display()
        );
    }
    Ok((name.to_string(), folder))
}

/// Copies `from` into the bucket folder `to` (files that differ or are missing).
fn seed(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(true) {
        let entry = entry?;
        let rel = entry.path().strip_prefix(from)?;
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else if std::fs::metadata(&dest).map(|m| m.len()).ok() != Some(entry.metadata()?.len()) {
            std::fs::copy(entry.path(), &dest).map_err(|e| {
                anyhow::anyhow!(
                    "cannot copy {} into the local S3 server: {e}",
                    entry.path().display()
                )
            })?;
        }
    }
    Ok(())
}

/// The emulator on a free loopback port, and a local S3 server holding `buckets` (none when
/// there are no buckets), the `seeds` folders copied into theirs.
async fn start(
    buckets: &[String],
    seeds: &[(String, PathBuf)],
) -> anyhow::Result<(Emulator, Option<LocalS3>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let s3 = if buckets.is_empty() {
        None
    } else {
        let root = std::env::temp_dir().join("embedpipe-emulator-s3");
        for (bucket, folder) in seeds {
            seed(folder, &root.join(bucket))?;
        }
        let names: Vec<&str> = buckets.iter().map(String::as_str).collect();
        let s3 = LocalS3::start(addr, &root, &names, &[]).await?;
        tracing::info!(
            "S3 requests go to a local S3 server at {} (folder {})",
            s3.endpoint(),
            root.display()
        );
        Some(s3)
    };
    let settings = Settings {
        s3_endpoint: s3.as_ref().map(|s| s.endpoint()),
        ..Default::default()
    };
    let emu = Emulator::start(addr, settings).await?;
    Ok((emu, s3))
}

/// `embedpipe emulator`: serves until Ctrl-C (exit 0) or the server fails (exit 1).
pub(super) async fn serve(a: EmulatorArgs) -> i32 {
    let settings = match settings_from_args(&a) {
        Ok(s) => s,
        Err(e) => {
            report_error(&e);
            return EXIT_INVALID;
        }
    };
    let emu = match Emulator::start(SocketAddr::new(a.host, a.port), settings).await {
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

/// The emulator's settings: the `--config` file (or the defaults), the flags on top.
fn settings_from_args(a: &EmulatorArgs) -> anyhow::Result<Settings> {
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
    apply_faults(a, &mut s)?;
    Ok(s)
}

/// The `--fault-*` rates (each between 0 and 1; 0 keeps the configured rate).
fn apply_faults(a: &EmulatorArgs, s: &mut Settings) -> anyhow::Result<()> {
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
    Ok(())
}
