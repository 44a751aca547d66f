//! Bedrock batch inference (`invoke = "batch"`): the real CLI and the real AWS SDKs (Bedrock
//! control plane and runtime, S3) against the emulator and a real S3-compatible server
//! (s3s-fs), both started by each test on loopback.

mod common;

use common::*;
use embedpipe_emulator::batch::BatchCounters;
use embedpipe_emulator::s3::LocalS3;
use embedpipe_emulator::{Emulator, Settings};
use std::path::{Path, PathBuf};

const BUCKET: &str = "batch-bucket";

struct Env {
    _rt: tokio::runtime::Runtime,
    emu: Emulator,
    s3: LocalS3,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(tune: impl Fn(&mut Settings)) -> Self {
        let rt = test_runtime();
        let dir = tempfile::tempdir().unwrap();
        let s3 = rt
            .block_on(LocalS3::start(
                ([127, 0, 0, 1], 0).into(),
                &dir.path().join("s3"),
                &[BUCKET],
                &[
                    (TEST_KEY, TEST_SECRET),
                    (
                        embedpipe_emulator::ACCESS_KEY,
                        embedpipe_emulator::SECRET_KEY,
                    ),
                ],
            ))
            .unwrap();
        let emu = rt
            .block_on(Emulator::start(
                ([127, 0, 0, 1], 0).into(),
                Self::settings(&s3, &tune),
            ))
            .unwrap();
        Env {
            _rt: rt,
            emu,
            s3,
            dir,
        }
    }

    fn settings(s3: &LocalS3, tune: &dyn Fn(&mut Settings)) -> Settings {
        let mut s = Settings {
            s3_endpoint: Some(s3.endpoint()),
            batch_job_ms: 50,
            ..Default::default()
        };
        tune(&mut s);
        s
    }

    /// Changes the emulator's settings (the S3 server stays).
    fn tune(&self, tune: impl Fn(&mut Settings)) {
        self.emu.set(Self::settings(&self.s3, &tune));
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        output(aws_cli(self.dir.path(), &self.emu.endpoint(), args))
    }

    /// `rows.csv` with `n` rows (`text(i)` each) and `p.toml` (a Titan v2 model at 256
    /// dimensions with `model` keys, table `table`, mode `mode`).
    fn pipeline(
        &self,
        n: usize,
        text: impl Fn(usize) -> String,
        model: &str,
        table: &str,
        mode: &str,
    ) -> String {
        let mut csv = String::from("id,text\n");
        for i in 0..n {
            csv.push_str(&format!("r{i:05},\"{}\"\n", text(i)));
        }
        std::fs::write(self.path("rows.csv"), csv).unwrap();
        write_pipeline(
            self.dir.path(),
            "p.toml",
            &format!(
                r#"
[source]
type = "csv"
path = "rows.csv"
id_column = "id"

[[model]]
name = "m"
provider = "bedrock"
id = "amazon.titan-embed-text-v2:0"
dimensions = 256
endpoint_url = "{emu}"
s3_endpoint_url = "{s3}"
poll_secs = 0.05
{model}

[[embed]]
model = "m"
text = "{{text}}"

[sink]
uri = "db"
table = "{table}"
mode = "{mode}"
"#,
                emu = self.emu.endpoint(),
                s3 = self.s3.endpoint(),
            ),
        )
    }

    /// Starts `run p`, waits until `done` says so, and kills it (a run killed while its jobs
    /// run).
    fn kill_run_when(&self, p: &str, what: &str, done: impl Fn() -> bool) {
        let mut child = aws_cli(self.dir.path(), &self.emu.endpoint(), &["run", p, "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(60, what, done);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// How many jobs the table's ledger holds with their ARN recorded.
    fn recorded_jobs(&self) -> usize {
        std::fs::read_to_string(self.path("db/t_jobs.jsonl"))
            .map_or(0, |l| l.matches("\"status\":\"in_progress\"").count())
    }

    fn batch(&self) -> BatchCounters {
        self.emu.stats().batch
    }

    fn ok_calls(&self) -> u64 {
        self.emu
            .stats()
            .models
            .get("amazon.titan-embed-text-v2:0")
            .map_or(0, |c| c.ok)
    }
}

fn batch_keys(records_per_job: usize) -> String {
    format!(
        "invoke = \"batch\"\nrole_arn = \"arn:aws:iam::123456789012:role/embedpipe-batch\"\nbatch_s3_uri = \"s3://{BUCKET}/jobs\"\nrecords_per_job = {records_per_job}"
    )
}

fn article(i: usize) -> String {
    format!(
        "article {i} about the {} of {}",
        ["sea", "city", "forest", "sky"][i % 4],
        i * 7
    )
}

fn summary(out: &Output) -> serde_json::Value {
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    json_summary(out)
}

fn db(env: &Env) -> PathBuf {
    env.path("db")
}

fn letters(dir: &Path) -> Vec<serde_json::Value> {
    dead_letters(&dir.join("db").join("t_failures.jsonl"))
}

#[test]
fn a_backfill_through_batch_gives_the_vectors_of_on_demand_at_the_batch_price() {
    let env = Env::new(|_| {});
    let p = env.pipeline(1000, article, &batch_keys(400), "t", "overwrite");
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 1000, "{s}");
    let b = env.batch();
    // 400 + 400 + 200 records, none on-demand.
    assert_eq!(b.jobs, 3, "{b:?}");
    assert_eq!(b.records, 1000);
    assert_eq!(env.ok_calls(), 0);
    let batch = &s["batch"][0];
    assert_eq!(batch["records"], 1000);
    assert_eq!(batch["jobs_submitted"], 3);
    assert_eq!(batch["results_used"], 1000);
    assert!(batch["input_tokens"].as_u64().unwrap() > 1000, "{batch}");
    let via_batch = table_vectors(&db(&env), "t", "vector");

    let p = env.pipeline(1000, article, "", "on_demand", "overwrite");
    summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(env.ok_calls(), 1000);
    let via_calls = table_vectors(&db(&env), "on_demand", "vector");
    assert_eq!(via_batch.len(), 1000);
    assert_eq!(via_batch, via_calls, "batch and on-demand vectors differ");
    // Billed at half the on-demand price: the batch run's tokens cost half per token.
    let tokens = batch["input_tokens"].as_f64().unwrap();
    let cost = batch["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - tokens / 1000.0 * 0.00002 / 2.0).abs() < 1e-12,
        "{batch}"
    );
}

#[test]
fn failed_records_are_dead_lettered_with_the_services_error() {
    let env = Env::new(|_| {});
    let text = |i: usize| {
        if i % 50 == 7 {
            format!("poison {i}")
        } else {
            article(i)
        }
    };
    let p = env.pipeline(300, text, &batch_keys(1000), "t", "overwrite");
    let out = env.run(&["run", &p, "--json"]);
    let s = json_summary(&out);
    assert_eq!(s["rows_written"], 294, "{s}");
    assert_eq!(s["rows_failed"], 6);
    let dead = letters(env.dir.path());
    assert_eq!(dead.len(), 6);
    for d in &dead {
        assert_eq!(d["kind"], "batch_record", "{d}");
        assert!(d["message"].as_str().unwrap().contains("error 400"), "{d}");
    }
    assert_eq!(
        env.ok_calls(),
        0,
        "failed records are not sent again on-demand"
    );
}

#[test]
fn records_below_the_minimum_go_on_demand() {
    let env = Env::new(|_| {});
    // 500 + 500 in jobs, the last 50 below the minimum of 100.
    let p = env.pipeline(1050, article, &batch_keys(500), "t", "overwrite");
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 1050, "{s}");
    assert_eq!(env.batch().jobs, 2);
    assert_eq!(env.batch().records, 1000);
    assert_eq!(env.ok_calls(), 50);
    assert_eq!(s["batch"][0]["records_below_minimum"], 50);

    // A pipeline smaller than one job: everything on-demand, no job.
    let env = Env::new(|_| {});
    let p = env.pipeline(60, article, &batch_keys(500), "t", "overwrite");
    summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(env.batch().creates, 0);
    assert_eq!(env.ok_calls(), 60);
}

#[test]
fn a_run_killed_while_its_jobs_run_resumes_them_without_submitting_again() {
    let env = Env::new(|s| s.batch_job_ms = 600_000);
    let p = env.pipeline(600, article, &batch_keys(200), "t", "overwrite");
    env.kill_run_when(&p, "three jobs submitted", || env.batch().jobs == 3);
    env.tune(|s| s.batch_job_ms = 50);
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 600, "{s}");
    let b = env.batch();
    assert_eq!(b.jobs, 3, "a job was submitted twice: {b:?}");
    assert_eq!(s["batch"][0]["jobs_resumed"], 3);
    assert_eq!(s["batch"][0]["jobs_submitted"], 0);
    assert_eq!(env.ok_calls(), 0);
}

#[test]
fn a_job_that_failed_stops_the_run_and_the_next_run_submits_it_again_under_a_new_token() {
    let env = Env::new(|s| s.batch_fail_jobs = 1);
    let p = env.pipeline(400, article, &batch_keys(200), "t", "overwrite");
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let s = json_summary(&out);
    assert_eq!(s["status"], "failed", "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("batch_job_failed: 200"),
        "{s}"
    );
    // Nothing committed: an overwrite never replaces a table with part of its rows.
    assert!(!env.path("db").join("t.lance").exists());
    assert_eq!(env.batch().jobs, 2);

    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 400, "{s}");
    let b = env.batch();
    // The completed job's results are read again; only the failed one goes again.
    assert_eq!(b.jobs, 3, "{b:?}");
    assert_eq!(b.tokens.len(), 3, "{:?}", b.tokens);
    assert_eq!(
        b.tokens.keys().filter(|t| t.ends_with("-1")).count(),
        1,
        "{:?}",
        b.tokens
    );
    assert_eq!(s["batch"][0]["jobs_resumed"], 1, "{s}");
    assert_eq!(s["batch"][0]["jobs_submitted"], 1);
    assert_eq!(table_vectors(&db(&env), "t", "vector").len(), 400);
}

#[test]
fn an_incremental_batch_run_submits_only_the_changed_rows() {
    let env = Env::new(|_| {});
    let p = env.pipeline(500, article, &batch_keys(1000), "t", "incremental");
    summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(env.batch().records, 500);
    // 150 rows change.
    let changed = |i: usize| {
        if i < 150 {
            format!("{} (revised)", article(i))
        } else {
            article(i)
        }
    };
    let p = env.pipeline(500, changed, &batch_keys(1000), "t", "incremental");
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 150, "{s}");
    assert_eq!(s["rows_skipped"], 350);
    let b = env.batch();
    assert_eq!(b.jobs, 2, "{b:?}");
    assert_eq!(
        b.records, 650,
        "only the changed rows went into the second job"
    );
    assert_eq!(env.ok_calls(), 0);
}

#[test]
fn plan_shows_the_jobs_and_the_batch_price_and_jobs_lists_them_with_their_counts() {
    let env = Env::new(|s| s.batch_record_failure = 0.0);
    let text = |i: usize| {
        if i == 3 {
            "poison".to_string()
        } else {
            article(i)
        }
    };
    let p = env.pipeline(1050, text, &batch_keys(500), "t", "overwrite");
    let plan = env.run(&["plan", &p, "--json"]);
    let plan = summary(&plan);
    let m = &plan["models"][0];
    assert_eq!(m["batch"]["jobs"], 2, "{m}");
    assert_eq!(m["batch"]["records_in_jobs"], 1000);
    assert_eq!(m["batch"]["records_on_demand"], 50);
    let (cost, on_demand) = (
        m["cost_usd"].as_f64().unwrap(),
        m["batch"]["on_demand_cost_usd"].as_f64().unwrap(),
    );
    // 1000 of 1050 inputs at half price.
    let expected = on_demand * (1000.0 / 1050.0 * 0.5 + 50.0 / 1050.0);
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    assert_eq!(env.batch().creates, 0, "plan submits nothing");
    let text_out = env.run(&["plan", &p]);
    assert!(
        text_out
            .stdout
            .contains("batch inference: 2 jobs holding 1000 records, 50 below the minimum"),
        "{}",
        text_out.stdout
    );

    json_summary(&env.run(&["run", &p, "--json"]));
    let jobs = env.run(&["jobs", &p, "--json"]);
    assert_eq!(jobs.code, 0, "{}", jobs.stderr);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&jobs.stdout).unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs.iter()
            .all(|j| j["status"] == "completed" && j["modality"] == "batch"),
        "{jobs:?}"
    );
    let counts: Vec<(u64, u64)> = jobs
        .iter()
        .map(|j| {
            let c = &j["counts"];
            (
                c["totalRecordCount"].as_u64().unwrap(),
                c["errorRecordCount"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, vec![(500, 1), (500, 0)]);
    let listing = env.run(&["jobs", &p]);
    assert!(
        listing
            .stdout
            .contains("batch: 500 records, 500 processed, 1 failed"),
        "{}",
        listing.stdout
    );
}

#[test]
fn a_job_still_running_at_its_timeout_is_dead_lettered_and_picked_up_by_the_next_run() {
    let env = Env::new(|s| s.batch_job_ms = 600_000);
    let keys = format!("{}\njob_timeout_hours = 0.0005", batch_keys(1000));
    let p = env.pipeline(200, article, &keys, "t", "incremental");
    let s = json_summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_failed"], 200, "{s}");
    assert_eq!(s["batch"][0]["jobs_timed_out"], 1);
    let dead = letters(env.dir.path());
    assert!(dead.iter().all(|d| d["kind"] == "job_timeout"), "{dead:?}");
    assert!(dead[0]["message"]
        .as_str()
        .unwrap()
        .contains("next run picks its results up"));
    // The job completes later; the next run reads its results instead of submitting again.
    // (Past its timeout already, the job must have ended before that run's first poll.)
    env.tune(|s| s.batch_job_ms = 50);
    wait_for(60, "the job completed", || {
        env.batch().jobs_by_status.get("Completed") == Some(&1)
    });
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 200, "{s}");
    assert_eq!(s["batch"][0]["jobs_resumed"], 1);
    assert_eq!(env.batch().jobs, 1);
}

#[test]
fn the_shipped_batch_pipeline_runs_with_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = aws_cli(dir.path(), "http://127.0.0.1:1", &[]);
    cmd.args([
        "run",
        repo()
            .join("pipelines/bedrock_batch_backfill.toml")
            .to_str()
            .unwrap(),
        "--emulator",
        "--json",
    ])
    .current_dir(dir.path())
    .env("EMBEDPIPE_DB", dir.path().join("db"))
    .env_remove("EMBEDPIPE_BATCH_ROLE")
    .env_remove("EMBEDPIPE_BATCH_S3");
    let s = summary(&output(cmd));
    assert_eq!(s["rows_written"], 240, "{s}");
    let b = &s["batch"][0];
    assert_eq!(b["jobs_completed"], 2, "{b}");
    // The rest after two jobs of 100 records is below the minimum: on-demand.
    assert!(b["records_below_minimum"].as_u64().unwrap() > 0, "{b}");
}

#[test]
fn a_rerun_finds_its_records_in_the_killed_runs_jobs_even_when_they_group_differently() {
    let env = Env::new(|s| s.batch_job_ms = 600_000);
    let p = env.pipeline(600, article, &batch_keys(200), "t", "incremental");
    env.kill_run_when(&p, "three jobs submitted", || env.batch().jobs == 3);
    // The first 50 rows are gone from the source: the rest would make other jobs of 200.
    let p = env.pipeline(
        550,
        |i| article(i + 50),
        &batch_keys(200),
        "t",
        "incremental",
    );
    env.tune(|s| s.batch_job_ms = 50);
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 550, "{s}");
    assert_eq!(
        env.batch().jobs,
        3,
        "records were paid for twice: {:?}",
        env.batch()
    );
    assert_eq!(s["batch"][0]["jobs_resumed"], 3, "{s}");
    assert_eq!(s["batch"][0]["jobs_submitted"], 0);
    assert_eq!(env.ok_calls(), 0);
    // Committed: the next run with new rows does not look in those jobs any more, and a
    // rerun of the same rows pays for nothing.
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_skipped"], 550, "{s}");
    assert_eq!(env.batch().jobs, 3);
    let jobs = env.run(&["jobs", &p, "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&jobs.stdout).unwrap();
    assert!(jobs.iter().all(|j| j["used"] == true), "{jobs:?}");
}

#[test]
fn small_jobs_under_big_source_batches_are_all_read_back_with_no_call_paid_twice() {
    // 2,500 rows in source batches of 1,024 (several embedded at once) over 25 jobs of 100:
    // every input must come from the jobs, none on-demand.
    let env = Env::new(|s| s.batch_max_jobs_in_progress = 100);
    let keys = format!("{}\nmax_jobs = 30", batch_keys(100));
    let p = env.pipeline(
        2500,
        |i| format!("{} #{i}", article(i)),
        &keys,
        "t",
        "overwrite",
    );
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 2500, "{s}");
    assert_eq!(env.batch().jobs, 25);
    assert_eq!(s["batch"][0]["results_used"], 2500, "{s}");
    assert_eq!(env.ok_calls(), 0);
}

/// `n` distinct small PNGs in `imgs/`, and a pipeline embedding them with Nova 2 (256
/// dimensions) into `table`, with `model` keys.
fn image_pipeline(env: &Env, n: usize, model: &str, table: &str) -> String {
    let imgs = env.path("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..n {
        let px = image::Rgb([(i % 251) as u8, (i / 251) as u8, 77]);
        let img = image::RgbImage::from_pixel(8, 8, px);
        img.save(imgs.join(format!("img{i:04}.png"))).unwrap();
    }
    write_pipeline(
        env.dir.path(),
        "images.toml",
        &format!(
            r#"
[source]
type = "images"
path = "imgs"

[[model]]
name = "m"
provider = "bedrock"
id = "amazon.nova-2-multimodal-embeddings-v1:0"
dimensions = 256
endpoint_url = "{emu}"
s3_endpoint_url = "{s3}"
poll_secs = 0.05
{model}

[[embed]]
model = "m"
image = "bytes"

[sink]
uri = "db"
table = "{table}"
mode = "overwrite"
"#,
            emu = env.emu.endpoint(),
            s3 = env.s3.endpoint(),
        ),
    )
}

#[test]
fn nova_images_go_into_batch_records_and_give_the_vectors_of_on_demand() {
    let env = Env::new(|s| s.batch_min_records = 10);
    let keys = format!("{}\nmin_records_per_job = 10", batch_keys(100));
    let p = image_pipeline(&env, 130, &keys, "t");
    // Cut short: the pre-flight refuses it, so it goes into no job and is dead-lettered as
    // on-demand would.
    let good = std::fs::read(env.path("imgs/img0000.png")).unwrap();
    std::fs::write(env.path("imgs/cut.png"), &good[..good.len() / 2]).unwrap();
    let out = env.run(&["run", &p, "--json"]);
    let s = json_summary(&out);
    assert_eq!(s["rows_written"], 130, "{s}\n{}", out.stderr);
    assert_eq!(s["rows_failed"], 1);
    assert_eq!(letters(env.dir.path())[0]["kind"], "unreadable_image");
    let b = env.batch();
    // 100 + 30 records, every one an image.
    assert_eq!((b.jobs, b.records), (2, 130), "{b:?}");
    let nova = "amazon.nova-2-multimodal-embeddings-v1:0";
    let calls = |env: &Env| env.emu.stats().models.get(nova).map_or(0, |c| c.ok);
    assert_eq!(calls(&env), 0, "no image was sent on-demand");
    let batch = &s["batch"][0];
    assert_eq!(batch["results_used"], 130, "{batch}");
    assert_eq!(batch["images"], 130, "{batch}");
    // Images billed at half the on-demand $0.00006 each, beside any tokens.
    let tokens = batch["input_tokens"].as_f64().unwrap();
    let cost = batch["cost_usd"].as_f64().unwrap();
    let expected = 130.0 * 0.00003 + tokens / 1000.0 * 0.000135 / 2.0;
    assert!((cost - expected).abs() < 1e-12, "{batch}");
    let via_batch = table_vectors(&db(&env), "t", "vector");

    std::fs::remove_file(env.path("imgs/cut.png")).unwrap();
    let p = image_pipeline(&env, 130, "", "on_demand");
    summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(calls(&env), 130);
    let via_calls = table_vectors(&db(&env), "on_demand", "vector");
    assert_eq!(via_batch.len(), 130);
    assert_eq!(via_batch, via_calls, "batch and on-demand vectors differ");
}

#[test]
fn each_shard_submits_its_own_records_and_the_commit_marks_their_jobs_used() {
    let env = Env::new(|_| {});
    let p = env.pipeline(0, article, &batch_keys(100), "t", "overwrite");
    // Two files of 300 rows: CSV shards read whole files.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("path = \"rows.csv\"", "path = \"parts/*.csv\"");
    std::fs::write(&p, text).unwrap();
    std::fs::create_dir_all(env.path("parts")).unwrap();
    for (f, range) in [("a.csv", 0..300), ("b.csv", 300..600)] {
        let mut csv = String::from("id,text\n");
        for i in range {
            csv.push_str(&format!("r{i:05},\"{}\"\n", article(i)));
        }
        std::fs::write(env.path("parts").join(f), csv).unwrap();
    }
    let workers: Vec<_> = ["0/2", "1/2"]
        .into_iter()
        .map(|shard| {
            aws_cli(
                env.dir.path(),
                &env.emu.endpoint(),
                &["run", &p, "--json", "--shard", shard, "--run", "r1"],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut batch_cost = 0.0;
    for w in workers {
        let out = w.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(s["batch"][0]["results_used"], 300, "{s}");
        assert_eq!(s["batch"][0]["jobs_submitted"], 3, "{s}");
        batch_cost += s["batch"][0]["cost_usd"].as_f64().unwrap();
    }
    let b = env.batch();
    assert_eq!((b.jobs, b.records), (6, 600), "{b:?}");
    assert_eq!(env.ok_calls(), 0);
    let jobs = |env: &Env| -> Vec<serde_json::Value> {
        let out = env.run(&["jobs", &p, "--json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let before = jobs(&env);
    assert_eq!(before.len(), 6);
    // Staged, not committed: a rerun of a shard may still need them.
    assert!(before.iter().all(|j| j.get("used").is_none()), "{before:?}");
    let mut shards: Vec<&str> = before
        .iter()
        .map(|j| j["shard"].as_str().unwrap())
        .collect();
    shards.sort();
    assert_eq!(shards, ["0/2", "0/2", "0/2", "1/2", "1/2", "1/2"]);

    // A whole run started before the commit finds its records in the shards' jobs.
    let whole = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(whole["batch"][0]["jobs_resumed"], 6, "{whole}");
    assert_eq!(whole["batch"][0]["results_used"], 600, "{whole}");
    assert_eq!(env.batch().jobs, 6, "records were paid for twice");

    let commit = summary(&env.run(&["commit", &p, "--run", "r1", "--json"]));
    assert_eq!(commit["rows_written"], 600, "{commit}");
    // The shards' reports carry their batch cost.
    let cost = commit["cost_usd"].as_f64().unwrap();
    assert!(
        batch_cost > 0.0 && (cost - batch_cost).abs() < 1e-12,
        "{commit}"
    );
    assert!(jobs(&env).iter().all(|j| j["used"] == true));
    assert_eq!(table_vectors(&db(&env), "t", "vector").len(), 600);
}

/// `docs.csv`: `n` documents of 8 paragraphs (`edit(i)` replaces document i's last one).
fn documents(env: &Env, n: usize, edit: impl Fn(usize) -> Option<String>) {
    let mut csv = String::from("id,body\n");
    for i in 0..n {
        let mut paragraphs: Vec<String> = (0..8)
            .map(|p| {
                format!(
                    "Paragraph {p} of document {i} tells of the {} and the {} over {} long years of trade.",
                    ["sea", "city", "forest", "sky"][(i + p) % 4],
                    ["river", "harbour", "market", "road"][(i * 3 + p) % 4],
                    i * 11 + p
                )
            })
            .collect();
        if let Some(last) = edit(i) {
            *paragraphs.last_mut().unwrap() = last;
        }
        csv.push_str(&format!("d{i:03},\"{}\"\n", paragraphs.join("\n\n")));
    }
    std::fs::write(env.path("docs.csv"), csv).unwrap();
}

/// A `[chunk]` pipeline over `docs.csv` into `table`.
fn chunked_pipeline(env: &Env, model: &str, table: &str) -> String {
    let p = env.pipeline(0, article, model, table, "incremental");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(
            "path = \"rows.csv\"\nid_column = \"id\"",
            "path = \"docs.csv\"\nid_column = \"id\"\n\n[chunk]\ninput = \"body\"\nmax_tokens = 24\noverlap_tokens = 0",
        )
        .replace("text = \"{text}\"", "column = \"text\"");
    let path = env.path(&format!("{table}.toml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn chunked_documents_go_into_batch_records_and_an_edit_submits_only_its_chunks() {
    let env = Env::new(|s| s.batch_min_records = 2);
    let keys = format!("{}\nmin_records_per_job = 2", batch_keys(100));
    documents(&env, 40, |_| None);
    let p = chunked_pipeline(&env, &keys, "t");
    let s = summary(&env.run(&["run", &p, "--json"]));
    let chunks = s["chunks_written"].as_u64().unwrap();
    assert_eq!(s["rows_written"], 40, "{s}");
    assert!(chunks >= 200, "{s}");
    let batch = &s["batch"][0];
    // Every chunk comes from a record (the rest below the minimum, if any, on-demand); chunks
    // of the same text share one.
    let on_demand = batch["records_below_minimum"].as_u64().unwrap();
    let records = batch["records"].as_u64().unwrap();
    assert!(
        records + on_demand <= chunks && records > chunks * 9 / 10,
        "{batch}"
    );
    assert_eq!(batch["results_used"].as_u64().unwrap() + on_demand, chunks);
    assert_eq!(env.ok_calls(), on_demand);
    let via_batch = table_vectors(&db(&env), "t", "vector");

    let od = chunked_pipeline(&env, "", "on_demand");
    summary(&env.run(&["run", &od, "--json"]));
    assert_eq!(env.ok_calls(), on_demand + chunks);
    assert_eq!(
        via_batch,
        table_vectors(&db(&env), "on_demand", "vector"),
        "batch and on-demand vectors differ"
    );

    // Four documents end differently: only their last chunks become records.
    documents(&env, 40, |i| {
        (i % 13 == 0).then(|| format!("Document {i} now closes with a new ending entirely."))
    });
    let plan = summary(&env.run(&["plan", &p, "--json"]));
    let to_embed = plan["chunks"]["to_embed"].as_u64().unwrap();
    assert!((4..=12).contains(&to_embed), "{plan}");
    let before = env.batch().records;
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 4, "{s}");
    assert_eq!(s["rows_skipped"], 36);
    assert_eq!(env.batch().records - before, to_embed, "{s}");
    assert_eq!(s["batch"][0]["results_used"], to_embed, "{s}");
    assert_eq!(env.ok_calls(), on_demand + chunks, "nothing on-demand");
}

#[test]
fn a_job_whose_create_answer_was_lost_is_found_by_name_and_not_paid_for_again() {
    let env = Env::new(|s| s.batch_job_ms = 600_000);
    let p = env.pipeline(600, article, &batch_keys(200), "t", "incremental");
    env.kill_run_when(&p, "three jobs recorded", || env.recorded_jobs() == 3);
    // As if the run had died after each create and before recording its answer.
    let ledger = env.path("db/t_jobs.jsonl");
    let kept: String = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"arn\":null"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(kept.lines().count(), 3);
    std::fs::write(&ledger, kept).unwrap();
    // The records now group into other jobs: only the names lead to the jobs.
    let p = env.pipeline(
        550,
        |i| article(i + 50),
        &batch_keys(200),
        "t",
        "incremental",
    );
    env.tune(|s| s.batch_job_ms = 50);
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 550, "{s}");
    let b = env.batch();
    assert!(b.lists >= 3, "{b:?}");
    assert_eq!(b.jobs, 3, "records were paid for twice: {b:?}");
    assert_eq!(s["batch"][0]["jobs_resumed"], 3, "{s}");
    assert_eq!(env.ok_calls(), 0);
}

#[test]
fn jobs_stop_stops_the_running_batch_jobs_and_the_next_run_submits_them_again() {
    let env = Env::new(|s| s.batch_job_ms = 600_000);
    let p = env.pipeline(400, article, &batch_keys(200), "t", "overwrite");
    env.kill_run_when(&p, "two jobs recorded", || env.recorded_jobs() == 2);
    // One create's answer lost (as if the run had died right after it): found by name.
    let ledger = env.path("db/t_jobs.jsonl");
    let text = std::fs::read_to_string(&ledger).unwrap();
    let first_answer = text.lines().find(|l| !l.contains("\"arn\":null")).unwrap();
    let kept = text.replace(&format!("{first_answer}\n"), "");
    std::fs::write(&ledger, kept).unwrap();
    let out = env.run(&["jobs", &p, "--stop", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stopped: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    assert!(
        stopped.iter().all(|s| s["status"] == "stopped"),
        "{stopped:?}"
    );
    assert_eq!(env.batch().stops, 2);
    let jobs = env.run(&["jobs", &p, "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&jobs.stdout).unwrap();
    assert!(jobs.iter().all(|j| j["status"] == "failed"), "{jobs:?}");
    // Nothing left to stop.
    let again = env.run(&["jobs", &p, "--stop", "--json"]);
    assert_eq!(again.stdout.trim(), "[]");

    env.tune(|s| s.batch_job_ms = 50);
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 400, "{s}");
    assert_eq!(s["batch"][0]["jobs_submitted"], 2, "{s}");
    assert_eq!(env.batch().jobs, 4);
    assert_eq!(env.ok_calls(), 0);
}

#[test]
fn records_new_to_a_rerun_beside_the_killed_runs_jobs_are_read_back_not_paid_twice() {
    let env = Env::new(|s| {
        s.batch_job_ms = 600_000;
        s.batch_min_records = 10;
    });
    let keys = format!("{}\nmin_records_per_job = 10", batch_keys(200));
    // Small source batches: the second pass works on a few at once, so the jobs it needs
    // change as it goes.
    let small_batches = |p: String| {
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("id_column = \"id\"", "id_column = \"id\"\nbatch_size = 50");
        std::fs::write(&p, text).unwrap();
        p
    };
    let p = small_batches(env.pipeline(600, article, &keys, "t", "incremental"));
    env.kill_run_when(&p, "three jobs submitted", || env.batch().jobs == 3);
    // Every tenth row changed: its records are new, spread over the whole source, in a job
    // made after the killed run's three.
    let edited = |i: usize| match i % 10 {
        3 => format!("{} (edited)", article(i)),
        _ => article(i),
    };
    let p = small_batches(env.pipeline(600, edited, &keys, "t", "incremental"));
    env.tune(|s| {
        s.batch_job_ms = 50;
        s.batch_min_records = 10;
    });
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 600, "{s}");
    let batch = &s["batch"][0];
    assert_eq!(batch["jobs_resumed"], 3, "{batch}");
    assert_eq!(batch["jobs_submitted"], 1, "{batch}");
    assert_eq!(batch["results_used"], 600, "{batch}");
    assert_eq!(env.ok_calls(), 0, "records were paid for twice");
    assert_eq!(env.batch().jobs, 4);
}

#[test]
fn the_same_rows_through_another_pipelines_prefix_make_jobs_of_their_own() {
    let env = Env::new(|_| {});
    let p = env.pipeline(300, article, &batch_keys(100), "t", "overwrite");
    summary(&env.run(&["run", &p, "--json"]));
    // Same records, another table and prefix: the same content must not reuse the first
    // pipeline's tokens (the service answers a token sent with another request with a
    // ConflictException).
    let keys = batch_keys(100).replace("/jobs\"", "/other\"");
    let p = env.pipeline(300, article, &keys, "t2", "overwrite");
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["batch"][0]["jobs_submitted"], 3, "{s}");
    assert_eq!(env.batch().jobs, 6);
    assert_eq!(env.ok_calls(), 0);
}

#[test]
fn records_a_partially_completed_job_did_not_process_go_on_demand() {
    let env = Env::new(|s| s.batch_unprocessed = 0.2);
    let p = env.pipeline(500, article, &batch_keys(1000), "t", "overwrite");
    let s = summary(&env.run(&["run", &p, "--json"]));
    assert_eq!(s["rows_written"], 500, "{s}");
    let b = env.batch();
    assert_eq!(
        b.jobs_by_status.get("PartiallyCompleted"),
        Some(&1),
        "{b:?}"
    );
    let used = s["batch"][0]["results_used"].as_u64().unwrap();
    // About 400 answered by the job; the rest, which it never processed, on-demand once.
    assert!((300..500).contains(&used), "{s}");
    assert_eq!(env.ok_calls(), 500 - used);
    assert_eq!(s["rows_failed"], 0);
}
