//! Layer 4, clients (above resolve): how remote services are reached — the Bedrock runtime
//! through the real AWS SDK, OpenAI-compatible servers over HTTP (`openai`), S3 for media jobs
//! (the SDK), and object storage for data, tables and side files (`store`, through
//! `object_store`) — not what a model's request bodies look like (that is the wire crate's).
//!
//! Model calls go through [`Remote`]: bodies in, bodies out, failures classified as
//! [`CallError`]s, so dispatch schedules every provider the same way.

pub mod bedrock;
pub mod bedrock_batch;
pub mod openai;
pub mod s3;
pub mod store;

use crate::resolve::ModelSettings;
use crate::util::ErrorClass;
use anyhow::Result;
use std::time::Duration;

/// A failed call.
#[derive(Debug, Clone)]
pub struct CallError {
    pub class: ErrorClass,
    pub message: String,
    /// How long the service asked to wait before trying again (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The server's rate-limit budget, when the refusal carried one (boxed: errors stay small).
    pub budget: Option<Box<ServerBudget>>,
}

impl CallError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            retry_after: None,
            budget: None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.class.as_str())
    }
}

impl std::error::Error for CallError {}

/// What a server says is left of its rate limits (`x-ratelimit-*` headers), as of its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerBudget {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    /// Until the request budget is whole again.
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl ServerBudget {
    /// Whether any budget header was present.
    pub fn is_known(&self) -> bool {
        self.remaining_requests.is_some() || self.remaining_tokens.is_some()
    }
}

/// An answered call: the body, and the server's budget when it sends one.
#[derive(Debug)]
pub struct Reply {
    pub body: Vec<u8>,
    pub budget: Option<ServerBudget>,
}

/// A remote model's client: Bedrock's InvokeModel or an OpenAI-compatible server.
#[derive(Clone)]
pub enum Remote {
    Bedrock(bedrock::Bedrock),
    OpenAi(openai::OpenAi),
}

impl Remote {
    /// Connects the client `info`'s provider needs (credentials are checked, not fetched).
    pub async fn connect(info: &ModelSettings) -> Result<Self> {
        use embedpipe_wire::ProviderKind;
        Ok(match info.spec.provider {
            ProviderKind::OpenAi => Remote::OpenAi(openai::OpenAi::connect(&info.connection)?),
            _ => Remote::Bedrock(bedrock::Bedrock::connect(&info.connection).await?),
        })
    }

    /// Sends one request body; `on_answer` runs as soon as a successful answer's headers
    /// arrive (the call's slot is free while the body still streams in).
    pub async fn invoke(
        &self,
        model_id: &str,
        body: Vec<u8>,
        on_answer: impl FnOnce() + Send + 'static,
    ) -> Result<Reply, CallError> {
        match self {
            Remote::Bedrock(b) => b
                .invoke(model_id, body, on_answer)
                .await
                .map(|body| Reply { body, budget: None }),
            Remote::OpenAi(o) => o.embed(body, on_answer).await,
        }
    }

    /// Help for an error no row can get past, in this provider's terms.
    pub fn fatal_help(&self, class: ErrorClass) -> &'static str {
        match self {
            Remote::Bedrock(_) => bedrock::fatal_help(class),
            Remote::OpenAi(_) => openai::fatal_help(class),
        }
    }
}

/// An error and its sources, `: `-separated (without Debug dumps).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}
