//! A progress bar with rows/s and ETA on a terminal; periodic log lines otherwise.
//!
//! Rows advance as model calls return (a row counts once every step has embedded it), so the
//! bar moves within a source batch too.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    steps: u64,
    started: Instant,
    state: Mutex<State>,
}

struct State {
    /// Rows of finished batches.
    rows: u64,
    /// Inputs embedded in the current batch (over all steps).
    inputs: u64,
    last_log: Instant,
}

impl Progress {
    /// `enabled = false` shows nothing (e.g. `--json` or `--quiet`); `steps` is the number of
    /// embed steps each row goes through.
    pub fn new(total: Option<u64>, steps: usize, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let (len, template) = match total {
                Some(_) => (total, "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}"),
                None => (None, "{spinner} [{elapsed_precise}] {pos} rows  {per_sec}"),
            };
            let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr())
                .with_style(ProgressStyle::with_template(template).expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total,
            steps: steps.max(1) as u64,
            started: now,
            state: Mutex::new(State {
                rows: 0,
                inputs: 0,
                last_log: now,
            }),
        }
    }

    /// A model call returned `n` vectors.
    pub fn inputs_done(&self, n: usize) {
        let mut s = self.state.lock().expect("progress lock");
        s.inputs += n as u64;
        let pos = s.rows + s.inputs / self.steps;
        self.show(&mut s, pos);
    }

    /// A source batch of `rows` rows (read, written or failed) is finished.
    pub fn batch_done(&self, rows: u64) {
        let mut s = self.state.lock().expect("progress lock");
        s.rows += rows;
        s.inputs = 0;
        let pos = s.rows;
        self.show(&mut s, pos);
    }

    fn show(&self, s: &mut State, pos: u64) {
        match &self.bar {
            Some(b) => b.set_position(pos),
            None => {
                if s.last_log.elapsed() >= Duration::from_secs(10) {
                    s.last_log = Instant::now();
                    let rate = pos as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                    match self.total {
                        Some(t) => tracing::info!(
                            rows = pos,
                            total = t,
                            rows_per_sec = rate.round(),
                            "progress"
                        ),
                        None => tracing::info!(rows = pos, rows_per_sec = rate.round(), "progress"),
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
