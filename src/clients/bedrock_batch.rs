//! Bedrock's control plane for batch inference through the real `aws-sdk-bedrock` client:
//! CreateModelInvocationJob, GetModelInvocationJob, ListModelInvocationJobs and
//! StopModelInvocationJob. Same
//! configuration (credentials chain, region, endpoint override, no SDK retries) and error
//! classes as the runtime client.

use super::bedrock::{classify, sdk_config};
pub use super::CallError;
use crate::resolve::Connection;
use crate::util::ErrorClass;
use anyhow::Result;
use aws_sdk_bedrock::types::{
    ModelInvocationJobInputDataConfig, ModelInvocationJobOutputDataConfig,
    ModelInvocationJobS3InputDataConfig, ModelInvocationJobS3OutputDataConfig,
    ModelInvocationJobStatus, S3InputFormat,
};

/// A connected Bedrock control-plane client.
#[derive(Clone)]
pub struct BedrockBatch {
    client: aws_sdk_bedrock::Client,
}

/// What one job is asked to do.
pub struct JobRequest<'a> {
    pub name: &'a str,
    pub model_id: &'a str,
    pub role_arn: &'a str,
    /// The JSONL file of its records.
    pub input_uri: &'a str,
    /// The prefix its results go under (`<prefix>/<job id>/`).
    pub output_uri: &'a str,
    /// `clientRequestToken`: the same token answers the same job.
    pub token: &'a str,
    pub timeout_hours: i32,
}

/// Where a batch job stands, as the service says.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchJob {
    pub state: BatchState,
    /// The service's status word (`InProgress`, `PartiallyCompleted`, ...).
    pub status: String,
    pub message: Option<String>,
    pub total_records: Option<i64>,
    pub processed_records: Option<i64>,
    pub error_records: Option<i64>,
}

/// The statuses, as embedpipe acts on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Submitted, Validating, Scheduled, InProgress, Stopping: wait.
    Running,
    /// Completed or PartiallyCompleted: results to read (failed records are marked in them).
    Done,
    /// Failed, Stopped, Expired: no results; the next run submits the records again.
    Ended,
}

impl BedrockBatch {
    pub async fn connect(conn: &Connection) -> Result<Self> {
        let cfg = sdk_config(conn, None).await?;
        Ok(Self {
            client: aws_sdk_bedrock::Client::new(&cfg),
        })
    }

    /// CreateModelInvocationJob; the job's ARN.
    pub async fn create(&self, r: &JobRequest<'_>) -> Result<String, CallError> {
        let bad = |e: aws_sdk_bedrock::error::BuildError| {
            CallError::new(ErrorClass::Validation, e.to_string())
        };
        let input = ModelInvocationJobS3InputDataConfig::builder()
            .s3_uri(r.input_uri)
            .s3_input_format(S3InputFormat::Jsonl)
            .build()
            .map_err(bad)?;
        let output = ModelInvocationJobS3OutputDataConfig::builder()
            .s3_uri(r.output_uri)
            .build()
            .map_err(bad)?;
        let out = self
            .client
            .create_model_invocation_job()
            .job_name(r.name)
            .model_id(r.model_id)
            .role_arn(r.role_arn)
            .client_request_token(r.token)
            .timeout_duration_in_hours(r.timeout_hours)
            .input_data_config(ModelInvocationJobInputDataConfig::S3InputDataConfig(input))
            .output_data_config(ModelInvocationJobOutputDataConfig::S3OutputDataConfig(
                output,
            ))
            .send()
            .await
            .map_err(classify)?;
        Ok(out.job_arn)
    }

    /// GetModelInvocationJob.
    pub async fn get(&self, arn: &str) -> Result<BatchJob, CallError> {
        let out = self
            .client
            .get_model_invocation_job()
            .job_identifier(arn)
            .send()
            .await
            .map_err(classify)?;
        let status = out.status.unwrap_or(ModelInvocationJobStatus::Submitted);
        let state = match status {
            ModelInvocationJobStatus::Completed | ModelInvocationJobStatus::PartiallyCompleted => {
                BatchState::Done
            }
            ModelInvocationJobStatus::Failed
            | ModelInvocationJobStatus::Stopped
            | ModelInvocationJobStatus::Expired => BatchState::Ended,
            _ => BatchState::Running,
        };
        Ok(BatchJob {
            state,
            status: status.as_str().to_string(),
            message: out.message,
            total_records: out.total_record_count,
            processed_records: out.processed_record_count,
            error_records: out.error_record_count,
        })
    }

    /// The ARN of the job named `name` created with `token` (ListModelInvocationJobs by name):
    /// finds a job whose create answer was lost (the run died before it recorded the ARN).
    pub async fn find(&self, name: &str, token: &str) -> Result<Option<String>, CallError> {
        let mut pages = self
            .client
            .list_model_invocation_jobs()
            .name_contains(name)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(classify)?;
            let found = page.invocation_job_summaries().iter().find(|j| {
                j.job_name() == name && j.client_request_token().is_none_or(|t| t == token)
            });
            if let Some(j) = found {
                return Ok(Some(j.job_arn().to_string()));
            }
        }
        Ok(None)
    }

    /// StopModelInvocationJob: records not yet processed are not billed.
    pub async fn stop(&self, arn: &str) -> Result<(), CallError> {
        self.client
            .stop_model_invocation_job()
            .job_identifier(arn)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}
