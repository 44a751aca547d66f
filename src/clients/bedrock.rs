//! The Bedrock provider: InvokeModel through the real `aws-sdk-bedrockruntime` client, with
//! `aws-config`'s default credential chain (env, profile, SSO, IMDS/ECS roles).
//!
//! It knows HTTP and the SDK, not model JSON: bodies go in and out as bytes. Errors are
//! classified from the SDK's error types so dispatch can decide what to retry.

use super::chain;
pub use super::CallError;
pub use crate::resolve::Connection;
use crate::util::ErrorClass;
use anyhow::{bail, Result};
use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    AsyncInvokeOutputDataConfig, AsyncInvokeS3OutputDataConfig, AsyncInvokeStatus,
};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::{Document, Number};
use std::cell::RefCell;
use std::time::Duration;

/// The emulators' dummy credentials (not secrets: they open nothing but local test servers).
pub const EMULATOR_ACCESS_KEY: &str = "EMULATOR";
pub const EMULATOR_SECRET_KEY: &str = "emulator-secret";

/// A connected Bedrock Runtime client.
#[derive(Clone)]
pub struct Bedrock {
    client: aws_sdk_bedrockruntime::Client,
}

impl Bedrock {
    /// Resolves region and credentials provider (credentials themselves are fetched lazily).
    pub async fn connect(conn: &Connection) -> Result<Self> {
        let cfg = sdk_config(conn, None).await?;
        let cfg = aws_sdk_bedrockruntime::config::Builder::from(&cfg)
            .interceptor(AnswerHook)
            .build();
        Ok(Self {
            client: aws_sdk_bedrockruntime::Client::from_conf(cfg),
        })
    }

    /// Calls InvokeModel with a JSON body and returns the response body. `on_answer` runs as
    /// soon as a successful response's headers arrive: the service has done its work and only
    /// the body is still on its way (up to a megabyte for 96 vectors), so the caller can count
    /// the call as answered before it has all of it.
    pub async fn invoke(
        &self,
        model_id: &str,
        body: Vec<u8>,
        on_answer: impl FnOnce() + Send + 'static,
    ) -> Result<Vec<u8>, CallError> {
        let call = self
            .client
            .invoke_model()
            .model_id(model_id)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body))
            .send();
        let out = ON_ANSWER
            .scope(RefCell::new(Some(Box::new(on_answer))), call)
            .await
            .map_err(classify)?;
        Ok(out.body.into_inner())
    }
}

tokio::task_local! {
    /// What to run when the current task's call is answered (see [`Bedrock::invoke`]). The
    /// SDK runs its interceptors inside the calling task, so a task-local reaches them without
    /// a per-call client configuration.
    static ON_ANSWER: RefCell<Option<Box<dyn FnOnce() + Send>>>;
}

/// Runs the current call's `on_answer` when a successful response's headers have arrived,
/// before its body is read.
#[derive(Debug)]
struct AnswerHook;

impl Intercept for AnswerHook {
    fn name(&self) -> &'static str {
        "embedpipe-answer-hook"
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.response().status().is_success() {
            // Other operations (and calls outside `invoke`) have no hook.
            let hook = ON_ANSWER.try_with(|h| h.borrow_mut().take()).ok().flatten();
            if let Some(f) = hook {
                f();
            }
        }
        Ok(())
    }
}

/// The AWS SDK configuration for `conn`: rustls on ring, no SDK retries (dispatch retries with
/// its own backoff), the default credential chain unless the emulator's dummy credentials are
/// asked for. `endpoint` overrides `conn.endpoint_url` (S3 has its own).
pub(crate) async fn sdk_config(
    conn: &Connection,
    endpoint: Option<&str>,
) -> Result<aws_config::SdkConfig> {
    let cfg = load_sdk_config(conn, endpoint).await;
    if cfg.region().is_none() {
        bail!("no AWS region is configured: set `region = \"us-east-1\"` (or yours) in the [[model]] table, or AWS_REGION in the environment");
    }
    Ok(cfg)
}

/// [`sdk_config`] without the region check (S3 falls back to its own).
pub(crate) async fn load_sdk_config(
    conn: &Connection,
    endpoint: Option<&str>,
) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(conn.timeout)
                .build(),
        );
    if let Some(r) = &conn.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = endpoint.or(conn.endpoint_url.as_deref()) {
        loader = loader.endpoint_url(e);
    }
    if conn.emulator_credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            EMULATOR_ACCESS_KEY,
            EMULATOR_SECRET_KEY,
            None,
            None,
            "embedpipe-emulator",
        ));
        if conn.region.is_none() {
            loader = loader.region(Region::new("us-east-1"));
        }
    }
    loader.load().await
}

/// Where an async-invoke job stands.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    pub status: JobState,
    pub failure_message: Option<String>,
    /// The job's output folder as the service reports it.
    pub output_s3_uri: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    InProgress,
    Completed,
    Failed,
}

impl Bedrock {
    /// StartAsyncInvoke: submits a job writing to `output_s3_uri` and returns its ARN. The
    /// `token` makes a repeated submit of the same job idempotent.
    pub async fn start_async_invoke(
        &self,
        model_id: &str,
        input: &serde_json::Value,
        output_s3_uri: &str,
        token: &str,
    ) -> Result<String, CallError> {
        let out_cfg = AsyncInvokeS3OutputDataConfig::builder()
            .s3_uri(output_s3_uri)
            .build()
            .map_err(|e| CallError::new(ErrorClass::Validation, e.to_string()))?;
        let out = self
            .client
            .start_async_invoke()
            .model_id(model_id)
            .model_input(to_document(input))
            .output_data_config(AsyncInvokeOutputDataConfig::S3OutputDataConfig(out_cfg))
            .client_request_token(token)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.invocation_arn)
    }

    /// GetAsyncInvoke.
    pub async fn get_async_invoke(&self, arn: &str) -> Result<JobStatus, CallError> {
        let out = self
            .client
            .get_async_invoke()
            .invocation_arn(arn)
            .send()
            .await
            .map_err(classify)?;
        let status = match out.status {
            AsyncInvokeStatus::Completed => JobState::Completed,
            AsyncInvokeStatus::Failed => JobState::Failed,
            _ => JobState::InProgress,
        };
        let output_s3_uri = match out.output_data_config {
            Some(AsyncInvokeOutputDataConfig::S3OutputDataConfig(c)) => Some(c.s3_uri),
            _ => None,
        };
        Ok(JobStatus {
            status,
            failure_message: out.failure_message,
            output_s3_uri,
        })
    }
}

/// Help for an error no row can get past (the run stops on it).
pub(crate) fn fatal_help(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::AccessDenied => "\n  help: grant bedrock:InvokeModel on this model to your role, and enable the model in the Bedrock console (Model access) for this region",
        ErrorClass::Credentials => "\n  help: embedpipe uses the AWS default credential chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE (incl. SSO: `aws sso login`), or an instance/task role",
        ErrorClass::NotFound => "\n  help: check the model id and that the model is offered in this region (`region` in [[model]])",
        _ => "",
    }
}

/// serde_json → the SDK's `Document` (model inputs of async jobs).
fn to_document(v: &serde_json::Value) -> Document {
    use serde_json::Value;
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or_default())
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(a) => Document::Array(a.iter().map(to_document).collect()),
        Value::Object(o) => {
            Document::Object(o.iter().map(|(k, v)| (k.clone(), to_document(v))).collect())
        }
    }
}

/// Classifies any Bedrock Runtime operation's error by its code and HTTP status.
pub(crate) fn classify<E>(e: SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (class, message) = match &e {
        SdkError::TimeoutError(_) => (ErrorClass::Timeout, "the call timed out".to_string()),
        SdkError::DispatchFailure(d) => {
            let text = chain(&e);
            let class = if d.is_timeout() {
                ErrorClass::Timeout
            } else if text.contains("credential") {
                ErrorClass::Credentials
            } else if d.is_io()
                || d.as_other() == Some(aws_smithy_types::retry::ErrorKind::TransientError)
            {
                ErrorClass::Network
            } else {
                ErrorClass::Other
            };
            (class, format!("the request could not be sent: {text}"))
        }
        SdkError::ResponseError(_) => (
            ErrorClass::ServerError,
            format!("the response could not be read: {}", chain(&e)),
        ),
        SdkError::ServiceError(se) => {
            let err = se.err();
            let class = match (err.code(), se.raw().status().as_u16()) {
                (Some("ThrottlingException"), _) => ErrorClass::Throttled,
                (Some("ModelNotReadyException"), _) => ErrorClass::ModelNotReady,
                (Some("InternalServerException" | "ServiceUnavailableException"), _) => {
                    ErrorClass::ServerError
                }
                (Some("ModelTimeoutException"), _) => ErrorClass::Timeout,
                (Some("ValidationException" | "ConflictException"), _) => ErrorClass::Validation,
                (Some("AccessDeniedException"), _) => ErrorClass::AccessDenied,
                (Some("ResourceNotFoundException"), _) => ErrorClass::NotFound,
                (Some("ServiceQuotaExceededException"), _) => ErrorClass::QuotaExceeded,
                (Some("ModelErrorException"), _) => ErrorClass::ModelError,
                (
                    Some(
                        "UnrecognizedClientException"
                        | "InvalidSignatureException"
                        | "ExpiredTokenException"
                        | "IncompleteSignatureException",
                    ),
                    _,
                )
                | (_, 401) => ErrorClass::Credentials,
                (_, 403) => ErrorClass::AccessDenied,
                (_, 429) => ErrorClass::Throttled,
                (_, 408) => ErrorClass::Timeout,
                (_, 500..=599) => ErrorClass::ServerError,
                _ => ErrorClass::Other,
            };
            let code = err.code().unwrap_or("UnknownError");
            let msg = err.message().unwrap_or("(no message)");
            (class, format!("{code}: {msg}"))
        }
        SdkError::ConstructionFailure(_) => {
            let text = chain(&e);
            let class = if text.contains("credential") {
                ErrorClass::Credentials
            } else {
                ErrorClass::Other
            };
            (class, format!("the request could not be built: {text}"))
        }
        _ => (ErrorClass::Other, chain(&e)),
    };
    CallError::new(class, message)
}

#[cfg(test)]
impl Bedrock {
    /// A client of the emulator at `endpoint` (unit tests).
    pub(crate) async fn to_emulator(endpoint: &str) -> Self {
        Self::connect(&Connection {
            endpoint_url: Some(endpoint.to_string()),
            timeout: Duration::from_secs(30),
            emulator_credentials: true,
            ..Default::default()
        })
        .await
        .expect("a client of the emulator")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedpipe_emulator::{Emulator, Settings};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn on_answer_runs_once_for_an_answered_call_and_never_for_an_error() {
        let emu = Emulator::start(([127, 0, 0, 1], 0).into(), Settings::default())
            .await
            .unwrap();
        let bedrock = Bedrock::to_emulator(&emu.endpoint()).await;
        let answered = Arc::new(AtomicUsize::new(0));
        let hook = || {
            let n = answered.clone();
            move || {
                n.fetch_add(1, Ordering::SeqCst);
            }
        };
        let model = "amazon.titan-embed-text-v2:0";
        let body = br#"{"inputText": "hello"}"#.to_vec();
        let out = bedrock.invoke(model, body, hook()).await.unwrap();
        assert!(String::from_utf8_lossy(&out).contains("embedding"));
        assert_eq!(answered.load(Ordering::SeqCst), 1);

        let bad = br#"{"inputText": ""}"#.to_vec();
        let e = bedrock.invoke(model, bad, hook()).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Validation, "{e}");
        assert_eq!(answered.load(Ordering::SeqCst), 1, "an error is no answer");

        // Other operations run without a hook.
        let e = bedrock
            .get_async_invoke("arn:aws:bedrock:us-east-1:123456789012:async-invoke/none")
            .await;
        assert!(e.is_err());
        assert_eq!(answered.load(Ordering::SeqCst), 1);
    }

    /// The emulator's `replay` (moved here from the emulator crate: it needs this client).
    #[tokio::test]
    async fn replay_answers_each_shape_once() {
        let emu = Emulator::start(
            ([127, 0, 0, 1], 0).into(),
            Settings {
                replay: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let bedrock = Bedrock::to_emulator(&emu.endpoint()).await;
        let call = |model: &'static str, body: serde_json::Value| {
            let bedrock = bedrock.clone();
            async move {
                let body = serde_json::to_vec(&body).unwrap();
                bedrock.invoke(model, body, || {}).await
            }
        };
        let cohere = "cohere.embed-english-v3";
        let texts = |t: &[&str]| serde_json::json!({"texts": t, "input_type": "search_document"});
        let emb = |body: Vec<u8>| {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v["embeddings"].clone()
        };
        let a = emb(call(cohere, texts(&["alpha", "beta"])).await.unwrap());
        let b = emb(call(cohere, texts(&["gamma", "delta"])).await.unwrap());
        assert_eq!(a, b, "same shape: the same answer");
        let c = emb(call(cohere, texts(&["alpha", "beta", "gamma"]))
            .await
            .unwrap());
        assert_eq!(
            (a.as_array().unwrap().len(), c.as_array().unwrap().len()),
            (2, 3),
            "another number of inputs is another shape"
        );
        let query = serde_json::json!({"texts": ["gamma", "delta"], "input_type": "search_query"});
        let q = emb(call(cohere, query).await.unwrap());
        assert_ne!(a, q, "other parameters are another shape");
        // A refused request is not kept: its shape is answered afresh.
        let titan = "amazon.titan-embed-text-v2:0";
        let refused = call(titan, serde_json::json!({"inputText": ""})).await;
        assert!(refused.is_err());
        call(titan, serde_json::json!({"inputText": "x"}))
            .await
            .unwrap();
        assert_eq!(emu.stats().models[titan].ok, 1);

        // Without replay, the same shape gets each input's own vectors.
        emu.set(Settings::default());
        let a2 = emb(call(cohere, texts(&["alpha", "beta"])).await.unwrap());
        let b2 = emb(call(cohere, texts(&["gamma", "delta"])).await.unwrap());
        assert_eq!(a, a2);
        assert_ne!(a2, b2);
        assert_eq!(
            q,
            emb(call(
                cohere,
                serde_json::json!({"texts": ["gamma", "delta"], "input_type": "search_query"})
            )
            .await
            .unwrap())
        );
    }
}
