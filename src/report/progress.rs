//! A progress bar with rows/s and ETA on a terminal; periodic log lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    done: u64,
    total: Option<u64>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// `enabled = false` shows nothing (e.g. `--json` or `--quiet`).
    pub fn new(total: Option<u64>, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()).with_style(
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}")
                        .expect("valid template"),
                ),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                    .with_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} rows  {per_sec}").expect("valid template")),
            };
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            done: 0,
            total,
            started: now,
            last_log: now,
        }
    }

    pub fn inc(&mut self, rows: u64) {
        self.done += rows;
        match &self.bar {
            Some(b) => b.inc(rows),
            None => {
                if self.last_log.elapsed() >= Duration::from_secs(10) {
                    self.last_log = Instant::now();
                    let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                    match self.total {
                        Some(t) => tracing::info!(
                            rows = self.done,
                            total = t,
                            rows_per_sec = rate.round(),
                            "progress"
                        ),
                        None => tracing::info!(
                            rows = self.done,
                            rows_per_sec = rate.round(),
                            "progress"
                        ),
                    }
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
