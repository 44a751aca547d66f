//! Video and audio through Bedrock async invoke: the real CLI and the real AWS SDKs (Bedrock
//! Runtime and S3) against the emulator and a real S3-compatible server (s3s-fs), both started
//! by each test on loopback.

mod common;

use common::*;
use embedpipe_emulator::async_invoke::AsyncCounters;
use embedpipe_emulator::s3::LocalS3;
use embedpipe_emulator::{Emulator, Settings};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BUCKET: &str = "media-bucket";

struct Env {
    _rt: tokio::runtime::Runtime,
    emu: Emulator,
    s3: LocalS3,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(job_ms: u64) -> Self {
        let rt = test_runtime();
        let dir = tempfile::tempdir().unwrap();
        let s3 = rt
            .block_on(LocalS3::start(
                ([127, 0, 0, 1], 0).into(),
                &dir.path().join("s3"),
                &[BUCKET],
                &[(TEST_KEY, TEST_SECRET)],
            ))
            .unwrap();
        let settings = Settings {
            async_job_ms: job_ms,
            s3_endpoint: Some(s3.endpoint()),
            ..Default::default()
        };
        let emu = rt
            .block_on(Emulator::start(([127, 0, 0, 1], 0).into(), settings))
            .unwrap();
        // The media, next to the CSV that lists them.
        std::fs::create_dir_all(dir.path().join("media")).unwrap();
        for f in ["city_tour.mp4", "fractal_zoom.mp4", "welcome.wav"] {
            std::fs::copy(sample("media").join(f), dir.path().join("media").join(f)).unwrap();
        }
        Env {
            _rt: rt,
            emu,
            s3,
            dir,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Puts a file straight into the S3 server's folder: `s3://media-bucket/<key>`.
    fn put_s3(&self, key: &str, from: &Path) -> String {
        let to = self.s3.root.join(BUCKET).join(key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
        format!("s3://{BUCKET}/{key}")
    }

    fn command(&self, args: &[&str]) -> Command {
        aws_cli(self.dir.path(), &self.emu.endpoint(), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        output(self.command(args))
    }

    /// Writes `rows.csv` (id, kind, file) and `p.toml` for `model` (extra model keys).
    fn pipeline(&self, rows: &[(&str, &str, &str)], model: &str) -> String {
        self.pipeline_into(rows, model, "db")
    }

    /// As [`Self::pipeline`], the table (and its ledger and failures) in `sink_uri`, with S3
    /// requests going to this test's server.
    fn pipeline_into(&self, rows: &[(&str, &str, &str)], model: &str, sink_uri: &str) -> String {
        let mut csv = String::from("id,kind,file\n");
        for (id, kind, file) in rows {
            csv.push_str(&format!("{id},{kind},{file}\n"));
        }
        std::fs::write(self.path("rows.csv"), csv).unwrap();
        write_pipeline(
            self.dir.path(),
            "p.toml",
            &format!(
                r#"
[storage]
s3_endpoint_url = "{endpoint}"

[source]
type = "csv"
path = "rows.csv"
id_column = "id"

[[model]]
name = "m"
provider = "bedrock"
output_s3_uri = "s3://{BUCKET}/out"
s3_endpoint_url = "{}"
poll_secs = 0.05
{model}

[[embed]]
model = "m"
media = "file"
modality = "kind"

[sink]
uri = "{sink_uri}"
table = "t"
mode = "overwrite"
"#,
                self.s3.endpoint(),
                endpoint = self.s3.endpoint(),
            ),
        )
    }

    fn jobs(&self) -> AsyncCounters {
        self.emu.stats().async_invoke
    }
}

const NOVA: &str =
    "id = \"amazon.nova-2-multimodal-embeddings-v1:0\"\ndimensions = 256\nsegment_seconds = 5";

fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

/// (id, segment_index, start, end, modality, option) of every table row, sorted.
fn segments(db: &Path) -> Vec<(String, u32, f64, f64, String, String)> {
    let col = |c: &str| table_strings(db, "t", c);
    let (ids, idx, start, end, modality, option) = (
        col("id"),
        col("segment_index"),
        col("start_sec"),
        col("end_sec"),
        col("modality"),
        col("embedding_option"),
    );
    let mut rows: Vec<_> = (0..ids.len())
        .map(|i| {
            (
                ids[i].clone(),
                idx[i].parse().unwrap(),
                start[i].parse().unwrap(),
                end[i].parse().unwrap(),
                modality[i].clone(),
                option[i].clone(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1, &a.5).partial_cmp(&(&b.0, b.1, &b.5)).unwrap());
    rows
}

#[test]
fn video_and_audio_rows_become_one_row_per_segment() {
    let env = Env::new(200);
    let s3_video = env.put_s3(
        "library/zoom.mp4",
        &sample("media").join("fractal_zoom.mp4"),
    );
    let p = env.pipeline(
        &[
            ("tour", "video", "media/city_tour.mp4"),
            ("zoom", "video", &s3_video),
            ("hello", "audio", "media/welcome.wav"),
        ],
        NOVA,
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["rows_read"], 3);
    assert_eq!(s["rows_written"], 3);
    assert_eq!(s["segments_written"], 7);
    assert_eq!(s["jobs"]["submitted"], 3);
    assert_eq!(s["jobs"]["completed"], 3);
    // Two local files staged; the s3:// input used where it is.
    assert_eq!(s["jobs"]["uploaded"], 2);
    let rows = segments(&env.path("db"));
    let expect = [
        ("hello", 0, 0.0, 5.0, "audio", "audio"),
        ("hello", 1, 5.0, 9.441, "audio", "audio"),
        ("tour", 0, 0.0, 5.0, "video", "audio_video_combined"),
        ("tour", 1, 5.0, 10.0, "video", "audio_video_combined"),
        ("tour", 2, 10.0, 12.0, "video", "audio_video_combined"),
        ("zoom", 0, 0.0, 5.0, "video", "audio_video_combined"),
        ("zoom", 1, 5.0, 7.0, "video", "audio_video_combined"),
    ];
    assert_eq!(rows.len(), expect.len(), "{rows:?}");
    for (r, e) in rows.iter().zip(expect) {
        assert_eq!((r.0.as_str(), r.1), (e.0, e.1), "{rows:?}");
        assert!(
            (r.2 - e.2).abs() < 0.01 && (r.3 - e.3).abs() < 0.02,
            "{r:?} vs {e:?}"
        );
        assert_eq!((r.4.as_str(), r.5.as_str()), (e.4, e.5));
    }
    let (_, schema) = table_info(&env.path("db"), "t");
    match schema.field_with_name("vector").unwrap().data_type() {
        arrow_schema::DataType::FixedSizeList(_, d) => assert_eq!(*d, 256),
        other => panic!("{other:?}"),
    }
    // The emulator saw each input once, and jobs read what the client staged.
    let c = env.jobs();
    assert_eq!(c.jobs, 3);
    assert!(c.jobs_by_input.contains_key(&s3_video), "{c:?}");
    assert_eq!(c.jobs_by_input.values().max(), Some(&1));
    // `embedpipe jobs` lists them.
    let jobs = env.run(&["jobs", &p]);
    assert_eq!(jobs.code, 0, "{}", jobs.stderr);
    assert_eq!(
        jobs.stdout.matches("completed").count(),
        3,
        "{}",
        jobs.stdout
    );
    assert!(jobs.stdout.contains("media/city_tour.mp4"));
    assert!(!out.stderr.contains(TEST_SECRET) && !jobs.stdout.contains(TEST_SECRET));
}

#[test]
fn marengo_writes_a_row_per_segment_and_embedding_option() {
    let env = Env::new(100);
    let p = env.pipeline(
        &[
            ("tour", "video", "media/city_tour.mp4"),
            ("hello", "auto", "media/welcome.wav"),
        ],
        "id = \"twelvelabs.marengo-embed-2-7-v1:0\"\nsegment_seconds = 4\n\
         embedding_options = [\"visual-text\", \"audio\"]",
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let rows = segments(&env.path("db"));
    // 12 s video in 4 s segments × 2 options; 9.4 s audio in 4 s segments × 2 options.
    let count = |id: &str, opt: &str| rows.iter().filter(|r| r.0 == id && r.5 == opt).count();
    assert_eq!(count("tour", "visual-text"), 3, "{rows:?}");
    assert_eq!(count("tour", "audio"), 3);
    assert_eq!(count("hello", "audio"), 3);
    assert!(rows
        .iter()
        .filter(|r| r.5 == "audio")
        .all(|r| r.4 == "audio"));
    assert!(rows
        .iter()
        .filter(|r| r.5 == "visual-text")
        .all(|r| r.4 == "video"));
    assert_eq!(rows.len(), 9);
}

#[test]
fn a_killed_run_resumes_its_jobs_and_never_submits_twice() {
    // Jobs take 4 s: the run is killed while all of them are in flight.
    let env = Env::new(4000);
    let p = env.pipeline(
        &[
            ("tour", "video", "media/city_tour.mp4"),
            ("zoom", "video", "media/fractal_zoom.mp4"),
            ("hello", "audio", "media/welcome.wav"),
        ],
        NOVA,
    );
    // What the service received, checked after every run: StartAsyncInvoke requests (accepted,
    // duplicate or refused), jobs created, and submits answered with an existing job. Counting
    // jobs alone would hide a resume that submits again under the token it recorded: the
    // service answers that with the same job and creates none.
    let submits = |env: &Env| {
        let c = env.jobs();
        (c.submits, c.jobs, c.duplicate_submits)
    };
    let mut child = env
        .command(&["run", &p, "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ledger = env.path("db/t_jobs.jsonl");
    let in_progress = || {
        std::fs::read_to_string(&ledger)
            .map(|s| s.matches("\"in_progress\"").count())
            .unwrap_or(0)
    };
    // Killed once every job is both created by the service and recorded with its ARN in the
    // ledger (polled state, not a fixed sleep).
    wait_for(30, "the three jobs submitted and in the ledger", || {
        in_progress() >= 3 && env.jobs().jobs >= 3
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(in_progress(), 3);
    let c = env.jobs();
    assert_eq!(submits(&env), (3, 3, 0), "first run: {c:?}");
    assert!(c.errors.is_empty(), "{c:?}");
    assert_eq!(c.completed, 0, "killed after the jobs finished: no test");
    let gets_before = c.gets;
    // Nothing was committed.
    assert!(!env.path("db/t.lance").exists());

    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(s["jobs"]["resumed"], 3, "{s}");
    assert_eq!(s["jobs"]["submitted"], 0, "{s}");
    assert_eq!(s["jobs"]["already_staged"], 3, "{s}");
    let c = env.jobs();
    // Not one more StartAsyncInvoke: the resumed jobs were polled by their ARNs.
    assert_eq!(
        submits(&env),
        (3, 3, 0),
        "the resumed run submitted again: {c:?}"
    );
    assert!(c.errors.is_empty(), "{c:?}");
    assert_eq!(c.completed, 3, "{c:?}");
    assert!(c.gets >= gets_before + 3, "the jobs were not polled: {c:?}");
    let rows = segments(&env.path("db"));
    assert_eq!(rows.len(), 7, "{rows:?}");
    let mut keys: Vec<_> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
    keys.dedup();
    assert_eq!(keys.len(), 7, "a segment was written twice: {rows:?}");

    // A third run finds the jobs completed in the ledger: still no submit, no new job.
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = summary(&out);
    assert_eq!(s["jobs"]["submitted"], 0, "{s}");
    assert_eq!(s["jobs"]["resumed"], 3, "{s}");
    let c = env.jobs();
    assert_eq!(
        submits(&env),
        (3, 3, 0),
        "the third run submitted again: {c:?}"
    );
    assert!(c.errors.is_empty(), "{c:?}");
    assert_eq!(segments(&env.path("db")).len(), 7);
}

#[test]
fn with_the_table_in_s3_the_ledger_is_too_and_a_killed_run_never_submits_twice() {
    let env = Env::new(4000);
    let p = env.pipeline_into(
        &[
            ("tour", "video", "media/city_tour.mp4"),
            ("hello", "audio", "media/welcome.wav"),
        ],
        NOVA,
        &format!("s3://{BUCKET}/db"),
    );
    let mut child = env
        .command(&["run", &p, "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // One object per job under the table's prefix, each with its ARN once submitted.
    let ledger = env.s3.root.join(BUCKET).join("db/t_jobs");
    let in_progress = || {
        std::fs::read_dir(&ledger)
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                    .filter(|t| t.contains("\"in_progress\""))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for(30, "the two jobs submitted and in the ledger", || {
        in_progress() >= 2 && env.jobs().jobs >= 2
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!((env.jobs().submits, env.jobs().completed), (2, 0));
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(
        (
            s["jobs"]["resumed"].as_u64(),
            s["jobs"]["submitted"].as_u64()
        ),
        (Some(2), Some(0)),
        "{s}"
    );
    let c = env.jobs();
    assert_eq!((c.submits, c.jobs, c.duplicate_submits), (2, 2, 0), "{c:?}");
    // The table is in the bucket; nothing next to the pipeline.
    assert!(!segments(&env.s3.root.join(BUCKET).join("db")).is_empty());
    assert!(!env.path("db").exists());
    // `jobs` reads the ledger from S3.
    let jobs = env.run(&["jobs", &p, "--json"]);
    assert_eq!(jobs.code, 0, "{}", jobs.stderr);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&jobs.stdout).unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j["status"] == "completed"), "{jobs:?}");
}

#[test]
fn failed_and_timed_out_jobs_are_dead_lettered_and_the_rest_completes() {
    let env = Env::new(100);
    let media = env.path("media");
    // Bytes ending with the emulator's markers: `poison` fails the job, `stall` never ends it.
    let mut poison = std::fs::read(media.join("welcome.wav")).unwrap();
    poison.extend_from_slice(b"poison");
    std::fs::write(media.join("poison.wav"), poison).unwrap();
    let mut stall = std::fs::read(media.join("fractal_zoom.mp4")).unwrap();
    stall.extend_from_slice(b"stall");
    std::fs::write(media.join("stall.mp4"), stall).unwrap();
    let s3_stall = env.put_s3("in/stall.mp4", &media.join("stall.mp4"));
    let p = env.pipeline(
        &[
            ("good", "video", "media/city_tour.mp4"),
            ("bad", "audio", "media/poison.wav"),
            ("slow", "video", &s3_stall),
            ("missing", "video", "media/nowhere.mp4"),
        ],
        &format!("{NOVA}\njob_timeout_secs = 1.5"),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let s = summary(&out);
    assert_eq!(
        (
            s["rows_read"].as_u64(),
            s["rows_written"].as_u64(),
            s["rows_failed"].as_u64()
        ),
        (Some(4), Some(1), Some(3))
    );
    assert_eq!(s["segments_written"], 3);
    let dead = dead_letters(&env.path("db/t_failures.jsonl"));
    let kind = |id: &str| {
        dead.iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"))
            .clone()
    };
    let bad = kind("bad");
    assert_eq!(bad["kind"], "job_failed");
    assert!(
        bad["message"].as_str().unwrap().contains("INVALID_CONTENT"),
        "{bad}"
    );
    let slow = kind("slow");
    assert_eq!(slow["kind"], "job_timeout");
    assert!(
        slow["message"].as_str().unwrap().contains("next run"),
        "{slow}"
    );
    let missing = kind("missing");
    assert_eq!(missing["kind"], "media_unreadable");
    assert!(
        missing["message"].as_str().unwrap().contains("nowhere.mp4"),
        "{missing}"
    );
    assert_eq!(missing["row"], 5, "{missing}");
    // The ledger keeps the timed-out job in progress (a later run polls it again).
    let jobs = env.run(&["jobs", &p, "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&jobs.stdout).unwrap();
    let status = |input: &str| {
        jobs.iter()
            .find(|j| j["input"] == input)
            .map(|j| j["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status(&s3_stall).as_deref(), Some("in_progress"));
    assert_eq!(status("media/poison.wav").as_deref(), Some("failed"));
}

#[test]
fn injected_job_failures_are_dead_lettered_and_retried_by_the_next_run() {
    let env = Env::new(20);
    env.emu.set(Settings {
        async_job_ms: 20,
        async_failure_rate: 1.0,
        s3_endpoint: Some(env.s3.endpoint()),
        ..Default::default()
    });
    let p = env.pipeline(
        &[
            ("tour", "video", "media/city_tour.mp4"),
            ("hello", "audio", "media/welcome.wav"),
        ],
        NOVA,
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(summary(&out)["jobs"]["failed"], 2);
    // The service recovers: the next run submits the failed jobs again, under new tokens.
    env.emu.set(Settings {
        async_job_ms: 20,
        s3_endpoint: Some(env.s3.endpoint()),
        ..Default::default()
    });
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = summary(&out);
    assert_eq!(
        (
            s["jobs"]["submitted"].as_u64(),
            s["segments_written"].as_u64()
        ),
        (Some(2), Some(5)),
        "{s}"
    );
    let c = env.jobs();
    assert_eq!((c.jobs, c.failed, c.completed), (4, 2, 2), "{c:?}");
}

#[test]
fn local_media_is_uploaded_once_across_runs() {
    let env = Env::new(50);
    let p = env.pipeline(
        &[
            ("tour", "video", "media/city_tour.mp4"),
            ("hello", "audio", "media/welcome.wav"),
        ],
        NOVA,
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(summary(&out)["jobs"]["uploaded"], 2);
    let staged = env.s3.root.join(BUCKET).join("out/inputs");
    let listing = |dir: &Path| {
        let mut v: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().modified().unwrap(),
                )
            })
            .filter(|(n, _)| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let first = listing(&staged);
    assert_eq!(first.len(), 2, "{first:?}");
    // Content-addressed keys: the BLAKE3 of the file.
    assert!(
        first.iter().any(|(n, _)| n.ends_with(".mp4"))
            && first.iter().any(|(n, _)| n.ends_with(".wav"))
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = summary(&out);
    assert_eq!(
        (
            s["jobs"]["uploaded"].as_u64(),
            s["jobs"]["already_staged"].as_u64()
        ),
        (Some(0), Some(2)),
        "{s}"
    );
    assert_eq!(listing(&staged), first, "a staged file was written again");
}

#[test]
fn sending_video_to_a_sync_only_model_fails_at_validate() {
    let env = Env::new(0);
    let p = env.pipeline(
        &[("tour", "video", "media/city_tour.mp4")],
        "id = \"amazon.titan-embed-text-v2:0\"",
    );
    let out = env.run(&["validate", &p]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot embed video or audio"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("amazon.nova-2-multimodal-embeddings-v1:0"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("p.toml:"), "{}", out.stderr);
    assert_eq!(env.jobs().submits, 0);
}

#[test]
fn submits_with_the_same_token_are_idempotent() {
    use embedpipe::clients::bedrock::{Bedrock, Connection};
    use embedpipe::util::ErrorClass;
    let env = Env::new(10_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(Bedrock::connect(&Connection {
            endpoint_url: Some(env.emu.endpoint()),
            emulator_credentials: true,
            timeout: Duration::from_secs(10),
            ..Default::default()
        }))
        .unwrap();
    let input = |uri: &str| {
        serde_json::json!({"schemaVersion": "nova-multimodal-embed-v1", "taskType": "SEGMENTED_EMBEDDING",
            "segmentedEmbeddingParams": {"embeddingPurpose": "GENERIC_INDEX", "embeddingDimension": 256,
              "audio": {"format": "wav", "source": {"s3Location": {"uri": uri}},
                        "segmentationConfig": {"durationSeconds": 5}}}})
    };
    let model = "amazon.nova-2-multimodal-embeddings-v1:0";
    let out = format!("s3://{BUCKET}/out");
    let a = rt
        .block_on(client.start_async_invoke(model, &input("s3://b/a.wav"), &out, "tok-1"))
        .unwrap();
    let again = rt
        .block_on(client.start_async_invoke(model, &input("s3://b/a.wav"), &out, "tok-1"))
        .unwrap();
    assert_eq!(a, again);
    let conflict = rt
        .block_on(client.start_async_invoke(model, &input("s3://b/other.wav"), &out, "tok-1"))
        .unwrap_err();
    assert_eq!(conflict.class, ErrorClass::Validation, "{conflict}");
    assert!(conflict.message.contains("ConflictException"), "{conflict}");
    // A profile id is refused for async, as Bedrock does.
    let profile = rt
        .block_on(client.start_async_invoke(
            "us.twelvelabs.marengo-embed-2-7-v1:0",
            &serde_json::json!({"inputType": "video", "mediaSource": {"s3Location": {"uri": "s3://b/v.mp4"}}}),
            &out,
            "tok-2",
        ))
        .unwrap_err();
    assert!(
        profile.message.contains("doesn't support async inference"),
        "{profile}"
    );
    let status = rt.block_on(client.get_async_invoke(&a)).unwrap();
    assert_eq!(
        status.status,
        embedpipe::clients::bedrock::JobState::InProgress
    );
    let c = env.jobs();
    assert_eq!((c.submits, c.jobs, c.duplicate_submits), (4, 1, 1), "{c:?}");
}

#[test]
fn long_text_goes_through_nova_segmented_embedding() {
    let env = Env::new(50);
    // 3,024 characters of words: four segments of at most 1,000 characters, cut between words.
    let text: String = (0..450).map(|i| format!("word{} ", i % 37)).collect();
    let chars = text.chars().count() as u64;
    std::fs::write(env.path("media/notes.txt"), &text).unwrap();
    let p = env.pipeline(
        &[
            ("notes", "text", "media/notes.txt"),
            ("tour", "video", "media/city_tour.mp4"),
        ],
        &format!("{NOVA}\nsegment_chars = 1000"),
    );
    let out = env.run(&["run", &p, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let db = env.path("db");
    let ids = table_strings(&db, "t", "id");
    let start = table_strings(&db, "t", "start_char");
    let end = table_strings(&db, "t", "end_char");
    let modality = table_strings(&db, "t", "modality");
    let mut text_rows: Vec<(u64, u64)> = (0..ids.len())
        .filter(|&i| ids[i] == "notes")
        .map(|i| {
            assert_eq!(modality[i], "text");
            (start[i].parse().unwrap(), end[i].parse().unwrap())
        })
        .collect();
    text_rows.sort();
    assert_eq!(chars, 3024);
    assert_eq!(text_rows.len(), 4, "{text_rows:?}");
    assert_eq!(text_rows[0].0, 0);
    assert_eq!(text_rows[3].1, chars);
    assert!(text_rows
        .windows(2)
        .all(|w| w[0].1 == w[1].0 && w[0].1 - w[0].0 <= 1000));
    // Video rows have seconds, not characters.
    let video = (0..ids.len()).find(|&i| ids[i] == "tour").unwrap();
    assert_eq!(start[video], "");
    let s = summary(&out);
    assert!(
        s["models"][0]["input_tokens"].as_u64().unwrap() >= chars / 4,
        "{s}"
    );
}
