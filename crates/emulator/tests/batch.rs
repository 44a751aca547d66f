//! Batch inference through the real `aws-sdk-bedrock` client: the emulator and a local S3 server
//! (s3s-fs) on loopback, inputs written straight into the S3 server's folder and outputs read
//! back from it.

use aws_sdk_bedrock::types::{
    ModelInvocationJobInputDataConfig, ModelInvocationJobOutputDataConfig,
    ModelInvocationJobS3InputDataConfig, ModelInvocationJobS3OutputDataConfig,
    ModelInvocationJobStatus as Status, S3InputFormat, SortOrder,
};
use aws_smithy_http_client::tls;
use embedpipe_emulator::s3::LocalS3;
use embedpipe_emulator::{Emulator, Settings, Stats};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUCKET: &str = "batch-bucket";
const ROLE: &str = "arn:aws:iam::123456789012:role/BatchInference";
const TITAN: &str = "amazon.titan-embed-text-v2:0";

struct Env {
    emu: Emulator,
    s3: LocalS3,
    _dir: tempfile::TempDir,
    client: aws_sdk_bedrock::Client,
}

/// The Bedrock control-plane client the pipeline would build, pointed at `endpoint`.
fn client(endpoint: &str) -> aws_sdk_bedrock::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_bedrock::Config::builder()
        .behavior_version(aws_sdk_bedrock::config::BehaviorVersion::latest())
        .region(aws_sdk_bedrock::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            embedpipe_emulator::ACCESS_KEY,
            embedpipe_emulator::SECRET_KEY,
            None,
            None,
            "test",
        ))
        .http_client(http)
        .build();
    aws_sdk_bedrock::Client::from_conf(conf)
}

/// `n` Titan records `<prefix>0..`, 256 dimensions (small outputs).
fn records(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"recordId\":\"{prefix}{i}\",\"modelInput\":{{\"inputText\":\"text number {i}\",\"dimensions\":256}}}}\n"
            )
        })
        .collect()
}

fn job_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap()
}

fn ended(s: &Status) -> bool {
    matches!(
        s,
        Status::Completed
            | Status::PartiallyCompleted
            | Status::Failed
            | Status::Stopped
            | Status::Expired
    )
}

impl Env {
    async fn new(settings: Settings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let s3 = LocalS3::start(
            ([127, 0, 0, 1], 0).into(),
            &dir.path().join("s3"),
            &[BUCKET],
            &[],
        )
        .await
        .unwrap();
        let settings = Settings {
            s3_endpoint: Some(s3.endpoint()),
            ..settings
        };
        let emu = Emulator::start(([127, 0, 0, 1], 0).into(), settings)
            .await
            .unwrap();
        let client = client(&emu.endpoint());
        Env {
            emu,
            s3,
            _dir: dir,
            client,
        }
    }

    /// Writes `text` at `s3://batch-bucket/<key>`.
    fn put(&self, key: &str, text: &str) -> String {
        let path = self.s3.root.join(BUCKET).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        format!("s3://{BUCKET}/{key}")
    }

    /// The folder a job writes its output to (`s3://batch-bucket/out/<job id>/`).
    fn output(&self, arn: &str) -> PathBuf {
        self.s3.root.join(BUCKET).join("out").join(job_id(arn))
    }

    fn create(
        &self,
        name: &str,
        input: &str,
    ) -> aws_sdk_bedrock::operation::create_model_invocation_job::builders::CreateModelInvocationJobFluentBuilder
    {
        self.client
            .create_model_invocation_job()
            .job_name(name)
            .role_arn(ROLE)
            .model_id(TITAN)
            .input_data_config(ModelInvocationJobInputDataConfig::S3InputDataConfig(
                ModelInvocationJobS3InputDataConfig::builder()
                    .s3_uri(input)
                    .s3_input_format(S3InputFormat::Jsonl)
                    .build()
                    .unwrap(),
            ))
            .output_data_config(ModelInvocationJobOutputDataConfig::S3OutputDataConfig(
                ModelInvocationJobS3OutputDataConfig::builder()
                    .s3_uri(format!("s3://{BUCKET}/out/"))
                    .build()
                    .unwrap(),
            ))
    }

    async fn start(&self, name: &str, input: &str) -> String {
        self.create(name, input)
            .send()
            .await
            .unwrap()
            .job_arn()
            .to_string()
    }

    async fn get(
        &self,
        arn: &str,
    ) -> aws_sdk_bedrock::operation::get_model_invocation_job::GetModelInvocationJobOutput {
        self.client
            .get_model_invocation_job()
            .job_identifier(arn)
            .send()
            .await
            .unwrap()
    }

    /// Polls until the job is in `status` (or, with `None`, has ended).
    async fn wait(
        &self,
        arn: &str,
        status: Option<Status>,
    ) -> aws_sdk_bedrock::operation::get_model_invocation_job::GetModelInvocationJobOutput {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let job = self.get(arn).await;
            let s = job.status().unwrap();
            if status.as_ref().map_or(ended(s), |want| want == s) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "{arn} is still {s:?} (waiting for {status:?}): {:?}",
                job.message()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `PUT /_emulator/config` (the control plane a test driver uses).
    async fn configure(&self, patch: &str) {
        let mut s = tokio::net::TcpStream::connect(self.emu.addr).await.unwrap();
        let req = format!(
            "PUT /_emulator/config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{patch}",
            patch.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }

    fn stats(&self) -> Stats {
        self.emu.stats()
    }
}

fn read_lines(path: PathBuf) -> Vec<Value> {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn fast() -> Settings {
    Settings {
        batch_job_ms: 50,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_answers_every_record_once_in_any_order() {
    let env = Env::new(fast()).await;
    let mut text = records("r", 120);
    text.push_str("{\"recordId\":\"poisoned\",\"modelInput\":{\"inputText\":\"a poison pill\"}}\n");
    text.push_str("{\"recordId\":\"invalid\",\"modelInput\":{\"text\":\"wrong key\"}}\n");
    text.push_str("this line is not json\n");
    text.push_str("{\"modelInput\":{\"inputText\":\"no id given\",\"dimensions\":256}}\n");
    let input = env.put("in/records.jsonl", &text);
    let arn = env.start("embed-all", &input).await;
    assert!(
        arn.starts_with("arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/"),
        "{arn}"
    );
    let id = job_id(&arn);
    assert!(
        id.len() == 12
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    let job = env.wait(&arn, None).await;
    assert_eq!(
        job.status(),
        Some(&Status::Completed),
        "{:?}",
        job.message()
    );
    assert_eq!(job.job_name(), Some("embed-all"));
    assert_eq!(job.model_id(), TITAN);
    assert_eq!(job.role_arn(), ROLE);
    assert!(job.client_request_token().is_some(), "the SDK sends one");
    let s3_in = job
        .input_data_config()
        .unwrap()
        .as_s3_input_data_config()
        .unwrap();
    assert_eq!(s3_in.s3_uri(), input);
    assert_eq!(
        (
            job.total_record_count(),
            job.success_record_count(),
            job.error_record_count()
        ),
        (Some(124), Some(121), Some(3))
    );
    let (submitted, ended) = (job.submit_time(), job.end_time().unwrap());
    assert!(ended.secs() >= submitted.secs());
    assert_eq!(
        job.job_expiration_time().unwrap().secs() - submitted.secs(),
        24 * 3600
    );
    // A Get by bare id answers the same job.
    assert_eq!(env.get(id).await.job_arn(), arn);

    let out = read_lines(env.output(&arn).join("records.jsonl.out"));
    assert_eq!(out.len(), 124);
    let by_id: BTreeMap<String, &Value> = out
        .iter()
        .map(|l| (l["recordId"].as_str().unwrap().to_string(), l))
        .collect();
    assert_eq!(by_id.len(), 124, "every record answered once");
    for i in 0..120 {
        let line = by_id[&format!("r{i}")];
        let vector = line["modelOutput"]["embedding"].as_array().unwrap();
        assert_eq!(vector.len(), 256);
        assert_eq!(line["modelInput"]["inputText"], format!("text number {i}"));
    }
    assert_eq!(by_id["poisoned"]["error"]["errorCode"], 400);
    assert_eq!(by_id["invalid"]["error"]["errorCode"], 400);
    let generated: Vec<&&Value> = by_id
        .iter()
        .filter(|(k, _)| !k.starts_with('r') && !["poisoned", "invalid"].contains(&k.as_str()))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(generated.len(), 2, "ids added to the two lines without one");
    let in_order: Vec<&str> = out
        .iter()
        .filter_map(|l| l["recordId"].as_str())
        .filter(|id| id.starts_with('r'))
        .collect();
    let expected: Vec<String> = (0..120).map(|i| format!("r{i}")).collect();
    assert_ne!(in_order, expected, "output lines are shuffled");

    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(env.output(&arn).join("manifest.json.out")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["totalRecordCount"], 124);
    assert_eq!(manifest["processedRecordCount"], 124);
    assert_eq!(manifest["successRecordCount"], 121);
    assert_eq!(manifest["errorRecordCount"], 3);
    assert!(manifest["inputTokenCount"].as_u64().unwrap() >= 121);
    assert_eq!(manifest["outputTokenCount"], 0);

    let b = env.stats().batch;
    assert_eq!((b.creates, b.jobs, b.duplicate_creates), (1, 1, 0));
    assert_eq!((b.records, b.record_errors), (124, 3));
    assert_eq!(b.jobs_by_status["Completed"], 1);
    assert_eq!(b.jobs_by_input[&input], 1);
    assert!(b.gets >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_input_reads_every_jsonl_file_under_it() {
    let env = Env::new(fast()).await;
    env.put("in/parts/a.jsonl", &records("a", 60));
    env.put("in/parts/b.jsonl", &records("b", 50));
    env.put("in/parts/notes.txt", "not an input");
    env.put("in/partsX/c.jsonl", &records("c", 10));
    let arn = env
        .start("prefix", &format!("s3://{BUCKET}/in/parts"))
        .await;
    let job = env.wait(&arn, None).await;
    assert_eq!(
        job.status(),
        Some(&Status::Completed),
        "{:?}",
        job.message()
    );
    assert_eq!(job.total_record_count(), Some(110));
    assert_eq!(read_lines(env.output(&arn).join("a.jsonl.out")).len(), 60);
    assert_eq!(read_lines(env.output(&arn).join("b.jsonl.out")).len(), 50);
    assert!(!env.output(&arn).join("c.jsonl.out").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_limits_fail_the_job_at_validation() {
    let env = Env::new(fast()).await;
    let input = env.put("in/few.jsonl", &records("r", 5));
    let arn = env.start("too-few", &input).await;
    let job = env.wait(&arn, None).await;
    assert_eq!(job.status(), Some(&Status::Failed));
    let message = job.message().unwrap();
    assert!(
        message.contains("minimum") && message.contains("100"),
        "{message}"
    );
    assert!(!env.output(&arn).exists(), "a failed job writes nothing");

    env.configure(r#"{"batch_min_records": 1, "batch_max_records": 10}"#)
        .await;
    let input = env.put("in/many.jsonl", &records("r", 11));
    let arn = env.start("too-many", &input).await;
    let job = env.wait(&arn, None).await;
    assert_eq!(job.status(), Some(&Status::Failed));
    assert!(job.message().unwrap().contains("maximum of: 10"));
    assert_eq!(env.stats().batch.jobs_by_status["Failed"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_token_makes_create_idempotent() {
    let env = Env::new(fast()).await;
    let input = env.put("in/x.jsonl", &records("r", 100));
    let first = env
        .create("same", &input)
        .client_request_token("tok-1")
        .send()
        .await
        .unwrap();
    let again = env
        .create("same", &input)
        .client_request_token("tok-1")
        .send()
        .await
        .unwrap();
    assert_eq!(first.job_arn(), again.job_arn());
    let conflict = env
        .create("different", &input)
        .client_request_token("tok-1")
        .send()
        .await
        .unwrap_err();
    let e = conflict.into_service_error();
    assert!(e.is_conflict_exception(), "{e:?}");
    let b = env.stats().batch;
    assert_eq!((b.creates, b.jobs, b.duplicate_creates), (3, 1, 1));
    assert_eq!(b.tokens["tok-1"], 3);
    assert_eq!(b.errors["ConflictException"], 1);
    env.wait(first.job_arn(), Some(Status::Completed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_what_the_service_refuses() {
    let env = Env::new(fast()).await;
    let input = env.put("in/x.jsonl", &records("r", 100));
    let refused = |r: Result<_, aws_sdk_bedrock::error::SdkError<_, _>>| {
        let e: aws_sdk_bedrock::operation::create_model_invocation_job::CreateModelInvocationJobError =
            r.unwrap_err().into_service_error();
        assert!(e.is_validation_exception(), "{e:?}");
        aws_sdk_bedrock::error::ProvideErrorMetadata::message(&e)
            .unwrap()
            .to_string()
    };
    let unknown = refused(
        env.create("a", &input)
            .model_id("amazon.titan-embed-text-v9")
            .send()
            .await,
    );
    assert_eq!(unknown, "The provided model identifier is invalid.");
    let unsupported = refused(
        env.create("a", &input)
            .model_id("cohere.embed-v4:0")
            .send()
            .await,
    );
    assert!(unsupported.contains("not supported"), "{unsupported}");
    let role = refused(
        env.create("a", &input)
            .role_arn("BatchInference")
            .send()
            .await,
    );
    assert!(role.contains("roleArn"), "{role}");
    let name = refused(env.create("bad name", &input).send().await);
    assert!(name.contains("jobName"), "{name}");
    let timeout = refused(
        env.create("a", &input)
            .timeout_duration_in_hours(5)
            .send()
            .await,
    );
    assert!(timeout.contains("greater than or equal to 24"), "{timeout}");

    let missing = env
        .client
        .get_model_invocation_job()
        .job_identifier("abcdef012345")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(missing.is_resource_not_found_exception(), "{missing:?}");
    let malformed = env
        .client
        .get_model_invocation_job()
        .job_identifier("not/a job")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(malformed.is_validation_exception(), "{malformed:?}");
    let b = env.stats().batch;
    assert_eq!((b.creates, b.jobs), (5, 0));
    assert_eq!(b.errors["ValidationException"], 6);
    assert_eq!(b.errors["ResourceNotFoundException"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_held_in_progress_are_listed_stopped_and_released() {
    let env = Env::new(Settings {
        batch_job_ms: 600_000,
        batch_max_jobs_in_progress: 3,
        ..Default::default()
    })
    .await;
    let input = env.put("in/x.jsonl", &records("r", 100));
    let mut arns = Vec::new();
    for i in 0..3 {
        arns.push(env.start(&format!("hold-{i}"), &input).await);
    }
    for arn in &arns {
        env.wait(arn, Some(Status::InProgress)).await;
    }
    let quota = env
        .create("hold-3", &input)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(quota.is_service_quota_exceeded_exception(), "{quota:?}");

    // List: filtered by status and name, newest first unless asked, in pages.
    let list = || env.client.list_model_invocation_jobs();
    let in_progress = list()
        .status_equals(Status::InProgress)
        .send()
        .await
        .unwrap();
    assert_eq!(in_progress.invocation_job_summaries().len(), 3);
    let names = |out: &aws_sdk_bedrock::operation::list_model_invocation_jobs::ListModelInvocationJobsOutput| {
        out.invocation_job_summaries()
            .iter()
            .map(|s| s.job_name().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&list().send().await.unwrap()),
        ["hold-2", "hold-1", "hold-0"]
    );
    let first = list()
        .sort_order(SortOrder::Ascending)
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(names(&first), ["hold-0", "hold-1"]);
    let second = list()
        .sort_order(SortOrder::Ascending)
        .max_results(2)
        .next_token(first.next_token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(names(&second), ["hold-2"]);
    assert!(second.next_token().is_none());
    assert_eq!(
        names(&list().name_contains("hold-1").send().await.unwrap()),
        ["hold-1"]
    );
    assert!(list()
        .status_equals(Status::Completed)
        .send()
        .await
        .unwrap()
        .invocation_job_summaries()
        .is_empty());

    // Stop: Stopping, then Stopped, with no output; stopping it again is refused.
    env.client
        .stop_model_invocation_job()
        .job_identifier(&arns[0])
        .send()
        .await
        .unwrap();
    let status = env.get(&arns[0]).await.status().cloned().unwrap();
    assert!(
        matches!(status, Status::Stopping | Status::Stopped),
        "{status:?}"
    );
    env.wait(&arns[0], Some(Status::Stopped)).await;
    assert!(!env.output(&arns[0]).exists());
    let again = env
        .client
        .stop_model_invocation_job()
        .job_identifier(&arns[0])
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(again.is_validation_exception(), "{again:?}");

    // Released: the jobs read the lowered setting and complete.
    env.configure(r#"{"batch_job_ms": 0}"#).await;
    for arn in &arns[1..] {
        let job = env.wait(arn, None).await;
        assert_eq!(
            job.status(),
            Some(&Status::Completed),
            "{:?}",
            job.message()
        );
        assert_eq!(read_lines(env.output(arn).join("x.jsonl.out")).len(), 100);
    }
    let b = env.stats().batch;
    assert_eq!(b.stops, 2);
    assert_eq!(b.jobs_by_status["Stopped"], 1);
    assert_eq!(b.jobs_by_status["Completed"], 2);
    assert_eq!(b.errors["ServiceQuotaExceededException"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_job_failures_and_expiry() {
    let env = Env::new(Settings {
        batch_job_ms: 0,
        batch_fail_jobs: 1,
        ..Default::default()
    })
    .await;
    let input = env.put("in/x.jsonl", &records("r", 100));
    let doomed = env.start("doomed", &input).await;
    let fine = env.start("fine", &input).await;
    let job = env.wait(&doomed, None).await;
    assert_eq!(job.status(), Some(&Status::Failed));
    assert!(job.message().unwrap().contains("batch_fail_jobs"));
    assert_eq!(
        env.wait(&fine, None).await.status(),
        Some(&Status::Completed)
    );

    env.configure(r#"{"batch_job_ms": 600000}"#).await;
    let held = env.start("held", &input).await;
    env.wait(&held, Some(Status::InProgress)).await;
    env.configure(r#"{"batch_expire": true}"#).await;
    let job = env.wait(&held, None).await;
    assert_eq!(job.status(), Some(&Status::Expired));
    assert!(!env.output(&held).exists(), "an expired job writes nothing");
    let b = env.stats().batch;
    assert_eq!(
        (
            b.jobs_by_status["Failed"],
            b.jobs_by_status["Completed"],
            b.jobs_by_status["Expired"]
        ),
        (1, 1, 1)
    );
}
