//! A progress bar with rows/s and ETA on a terminal; periodic log lines otherwise.
//!
//! Rows advance as model calls return (a row counts once every step has embedded it), so the
//! bar moves within a source batch too.

use crate::dispatch::ModelStats;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    /// One line per remote model under the rows bar (terminal only).
    model_bars: Vec<ProgressBar>,
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
    last_model_log: Instant,
}

impl Progress {
    /// `enabled = false` shows nothing (e.g. `--json` or `--quiet`); `steps` is the number of
    /// embed steps each row goes through.
    pub fn new(total: Option<u64>, steps: usize, enabled: bool, models: &[String]) -> Self {
        let tty = enabled && std::io::stderr().is_terminal();
        let multi = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let bar = multi.as_ref().map(|multi| {
            let (len, template) = match total {
                Some(_) => (total, "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}"),
                None => (None, "{spinner} [{elapsed_precise}] {pos} rows  {per_sec}"),
            };
            let bar = multi.add(
                len.map_or_else(ProgressBar::no_length, ProgressBar::new)
                    .with_style(ProgressStyle::with_template(template).expect("valid template")),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let model_bars = multi
            .as_ref()
            .map(|multi| {
                models
                    .iter()
                    .map(|name| {
                        multi.add(
                            ProgressBar::no_length()
                                .with_style(
                                    ProgressStyle::with_template("  {prefix}: {msg}")
                                        .expect("valid template"),
                                )
                                .with_prefix(name.clone()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let now = Instant::now();
        Self {
            bar,
            model_bars,
            total,
            steps: steps.max(1) as u64,
            started: now,
            state: Mutex::new(State {
                rows: 0,
                inputs: 0,
                last_log: now,
                last_model_log: now,
            }),
        }
    }

    /// Per-model lines: calls, rates against limits, latency, calls in flight allowed now.
    /// `models` pairs each model's stats with its current cap on calls in flight.
    pub fn models(&self, models: &[(ModelStats, usize)]) {
        let line = |m: &ModelStats, cap: usize| {
            let limit = |l: Option<u32>| l.map_or(String::new(), |l| format!(" of {l}"));
            let mut s = format!(
                "{} calls, {} inputs, {:.0}{} req/min, {:.0}{} tokens/min, p50 {:.0} ms, p95 {:.0} ms, {} in flight max",
                m.calls,
                m.inputs,
                m.requests_per_minute,
                limit(m.limit_requests_per_minute),
                m.tokens_per_minute,
                limit(m.limit_tokens_per_minute),
                m.latency_p50_ms,
                m.latency_p95_ms,
                cap
            );
            if m.retries > 0 {
                s.push_str(&format!(
                    ", {} retries ({} throttled)",
                    m.retries, m.throttled
                ));
            }
            if let Some(b) = &m.server_budget {
                s.push_str(&format!(", {}", super::server_budget(b)));
            }
            s
        };
        if !self.model_bars.is_empty() {
            for (bar, (m, cap)) in self.model_bars.iter().zip(models) {
                bar.set_message(line(m, *cap));
            }
            return;
        }
        let mut s = self.state.lock().expect("progress lock");
        if s.last_model_log.elapsed() >= Duration::from_secs(10) {
            s.last_model_log = Instant::now();
            for (m, cap) in models {
                tracing::info!(model = %m.model, "{}", line(m, *cap));
            }
        }
    }

    /// A model call returned `n` vectors.
    pub fn inputs_done(&self, n: usize) {
        let mut s = self.state.lock().expect("progress lock");
        s.inputs += n as u64;
        let pos = s.rows + s.inputs / self.steps;
        self.show(&mut s, pos);
    }

    /// A source batch of `rows` rows (read, written or failed), for which `inputs` model inputs
    /// were embedded, is finished.
    pub fn batch_done(&self, rows: u64, inputs: u64) {
        let mut s = self.state.lock().expect("progress lock");
        s.rows += rows;
        s.inputs = s.inputs.saturating_sub(inputs);
        let pos = s.rows + s.inputs / self.steps;
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
        for b in &self.model_bars {
            b.finish_and_clear();
        }
    }
}
