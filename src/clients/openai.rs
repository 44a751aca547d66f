//! The OpenAI-compatible provider: `POST {base_url}/embeddings` over HTTP (reqwest, rustls),
//! for OpenAI itself and the servers that speak its protocol — a LiteLLM proxy, Hugging Face
//! TEI, vLLM, Ollama.
//!
//! Like the Bedrock client it moves bytes and classifies failures; the JSON is the wire crate's.
//! The API key and header values come from environment variables named in the pipeline file;
//! they are marked sensitive (never in `Debug`) and scrubbed from every error message.

use super::{chain, CallError, Reply, ServerBudget};
use crate::resolve::Connection;
use crate::util::ErrorClass;
use anyhow::{bail, Context, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of an error answer read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A client of one OpenAI-compatible server.
#[derive(Clone)]
pub struct OpenAi {
    http: reqwest::Client,
    url: String,
    /// Values that must never be shown (the key, header values), longest first.
    secrets: Arc<Vec<String>>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi").field("url", &self.url).finish()
    }
}

impl OpenAi {
    /// A client for `conn.base_url`, its key and headers read from the environment now (a
    /// missing variable stops the run before any row). Against the emulator (`--emulator`),
    /// missing variables are allowed: it takes any key unless told otherwise.
    pub fn connect(conn: &Connection) -> Result<Self> {
        let base = conn
            .base_url
            .as_deref()
            .context("an OpenAI-compatible model needs `base_url`")?;
        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        let read = |var: &str, what: &str| -> Result<Option<String>> {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
                _ if conn.emulator_credentials => Ok(None),
                // (A name that does not look like one may be a key pasted in its place: not shown.)
                _ if !looks_like_a_variable(var) => bail!(
                    "the environment variable named by {what} is not set, and its name does not look like a variable's (A-Z, 0-9, _)\n  help: write the variable's name there, never the key itself, and export it before the run"
                ),
                _ => bail!(
                    "the environment variable {var} ({what}) is not set\n  help: export {var}=... before the run; embedpipe never reads keys from the pipeline file"
                ),
            }
        };
        if let Some(var) = &conn.api_key_env {
            if let Some(key) = read(var, "api_key_env")? {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}")).with_context(|| {
                    format!("the value of {var} cannot be sent in an HTTP header")
                })?;
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
                secrets.push(key);
            }
        }
        for (name, var) in &conn.headers_env {
            let Some(value) = read(var, &format!("header {name}"))? else {
                continue;
            };
            let header = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("`{name}` is not an HTTP header name"))?;
            let mut v = HeaderValue::from_str(&value).with_context(|| {
                format!("the value of {var} cannot be sent in the header {name}")
            })?;
            v.set_sensitive(true);
            headers.insert(header, v);
            secrets.push(value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .timeout(conn.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("embedpipe/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(Self {
            http,
            url: format!("{}/embeddings", base.trim_end_matches('/')),
            secrets: Arc::new(secrets),
        })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request body. `on_answer` runs when a successful answer's headers arrive.
    pub async fn embed(
        &self,
        body: Vec<u8>,
        on_answer: impl FnOnce() + Send + 'static,
    ) -> Result<Reply, CallError> {
        let resp = self
            .http
            .post(&self.url)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let budget = Some(budget(resp.headers())).filter(ServerBudget::is_known);
        if status.is_success() {
            on_answer();
            let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
            return Ok(Reply {
                body: body.to_vec(),
                budget,
            });
        }
        let retry_after = retry_after(resp.headers());
        // Scrubbed whole, before any of it is cut for the message.
        let body = self.scrub(&String::from_utf8_lossy(&read_bounded(resp).await));
        let message = error_message(status.as_u16(), body.as_bytes());
        let mut e = CallError::new(classify(status.as_u16(), body.as_bytes()), message);
        e.retry_after = retry_after;
        e.budget = budget.map(Box::new);
        Err(e)
    }

    /// A request that got no answer: timeouts, refused or reset connections.
    fn transport_error(&self, e: &reqwest::Error) -> CallError {
        let class = if e.is_timeout() {
            ErrorClass::Timeout
        } else {
            ErrorClass::Network
        };
        let what = if e.is_connect() {
            format!("cannot connect to {}", self.url)
        } else if e.is_timeout() {
            "the call timed out".to_string()
        } else {
            "the request failed".to_string()
        };
        CallError::new(class, self.scrub(&format!("{what}: {}", chain(e))))
    }

    /// `text` with every secret value masked.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.secrets.iter().filter(|s| s.len() >= 4) {
            out = out.replace(s.as_str(), "****");
        }
        out
    }
}

/// Help for an error no row can get past (the run stops on it).
pub(crate) fn fatal_help(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Credentials => "\n  help: the server refused the key: check the variable `api_key_env` names (and `headers_env` for gateways that take their own header)",
        ErrorClass::AccessDenied => "\n  help: the key has no access to this model on the server",
        ErrorClass::NotFound => "\n  help: check `base_url` (usually up to /v1) and that the server serves this model name (GET <base_url>/models lists them)",
        _ => "",
    }
}

/// Whether `name` looks like an environment variable's name as people write them.
fn looks_like_a_variable(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The class of an HTTP error status. 503 is a busy server (Ollama's "server busy"): a reason
/// to slow down like 429, not a failure of the input. A 400 about the request's settings
/// rather than an input (`dimensions` the model refuses, a model name the gateway does not
/// know) would fail every row alike: the run stops instead.
fn classify(status: u16, body: &[u8]) -> ErrorClass {
    let text = String::from_utf8_lossy(body);
    let about = |param: &str| {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/param")
                    .or_else(|| v.get("param"))
                    .and_then(|p| p.as_str().map(|p| p == param))
            })
            .unwrap_or(false)
    };
    match status {
        400 | 422
            if about("dimensions")
                || text.contains("matryoshka")
                || text.contains("does not support specifying dimensions") =>
        {
            ErrorClass::Mismatch
        }
        400 if about("model") || text.contains("Invalid model name") => ErrorClass::NotFound,
        400 | 413 | 422 => ErrorClass::Validation,
        401 => ErrorClass::Credentials,
        403 => ErrorClass::AccessDenied,
        404 => ErrorClass::NotFound,
        408 | 504 => ErrorClass::Timeout,
        // OpenAI's 429 for an account out of credit: waiting does not help.
        429 if String::from_utf8_lossy(body).contains("insufficient_quota") => {
            ErrorClass::QuotaExceeded
        }
        429 | 503 => ErrorClass::Throttled,
        500..=599 => ErrorClass::ServerError,
        _ => ErrorClass::Other,
    }
}

/// `"<status>: <the server's message>"`, the message found where each server puts it:
/// OpenAI/Ollama `error.message`, TEI `error`, vLLM `message`, FastAPI `detail`.
fn error_message(status: u16, body: &[u8]) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let found = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
            v.pointer("/error/message")
                .and_then(text)
                .or_else(|| v.get("error").and_then(text))
                .or_else(|| v.get("message").and_then(text))
                .or_else(|| {
                    v.get("detail")
                        .map(|d| d.as_str().map_or(d.to_string(), String::from))
                })
        })
        .unwrap_or_else(|| embedpipe_wire::snippet(body));
    let mut msg = format!("{status} {reason}: {}", found.trim());
    if status == 413 {
        msg.push_str(" (the request is larger than the server takes; it is split)");
    }
    if classify(status, body) == ErrorClass::Mismatch {
        msg.push_str("; the server refuses `dimensions` for this model: set send_dimensions = false (and `dimensions` to the model's own size)");
    }
    msg
}

async fn read_bounded(mut resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        out.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY - out.len())]);
        if out.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    out
}

/// `retry-after-ms` (milliseconds), or `Retry-After` in seconds or as an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| Some(h.get(name)?.to_str().ok()?.trim().to_string());
    let num = |name: &str| {
        text(name)?
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let date = || {
        let at = httpdate::parse_http_date(&text("retry-after")?).ok()?;
        Some(
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
        )
    };
    // (A server asking for more than an hour is not believed.)
    let secs = |s: f64| Duration::from_secs_f64(s.min(3600.0));
    num("retry-after-ms")
        .map(|ms| secs(ms / 1000.0))
        .or_else(|| num("retry-after").map(secs))
        .or_else(date)
        .map(|d| d.min(Duration::from_secs(3600)))
}

/// The `x-ratelimit-*` headers OpenAI (and LiteLLM, vLLM behind gateways) send.
fn budget(h: &HeaderMap) -> ServerBudget {
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let count = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
    let reset = |name: &str| text(name).and_then(parse_reset);
    ServerBudget {
        limit_requests: count("x-ratelimit-limit-requests"),
        remaining_requests: count("x-ratelimit-remaining-requests"),
        reset_requests: reset("x-ratelimit-reset-requests"),
        limit_tokens: count("x-ratelimit-limit-tokens"),
        remaining_tokens: count("x-ratelimit-remaining-tokens"),
        reset_tokens: reset("x-ratelimit-reset-tokens"),
    }
}

/// OpenAI's reset durations (`1s`, `6m0s`, `250ms`, `1h2m3.5s`), or plain seconds (`12`).
fn parse_reset(s: &str) -> Option<Duration> {
    // (Capped at a day: a reset further off is not believed, and a huge number must not panic.)
    const DAY: f64 = 86_400.0;
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(DAY)));
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    total
        .is_finite()
        .then(|| Duration::from_secs_f64(total.min(DAY)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations() {
        let d = |s| parse_reset(s).map(|d| d.as_millis());
        assert_eq!(d("1s"), Some(1000));
        assert_eq!(d("6m0s"), Some(360_000));
        assert_eq!(d("250ms"), Some(250));
        assert_eq!(d("1.5s"), Some(1500));
        assert_eq!(d("1h2m3.5s"), Some(3_723_500));
        assert_eq!(d("12"), Some(12_000));
        assert_eq!(d("soon"), None);
        assert_eq!(d("1e30"), Some(86_400_000), "capped, not a panic");
        assert_eq!(d("100000000000000000000000s"), Some(86_400_000));
        assert_eq!(d("5x"), None);
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(classify(400, b""), ErrorClass::Validation);
        assert_eq!(classify(413, b""), ErrorClass::Validation);
        assert_eq!(classify(429, b"{}"), ErrorClass::Throttled);
        assert_eq!(
            classify(429, br#"{"error":{"code":"insufficient_quota"}}"#),
            ErrorClass::QuotaExceeded
        );
        assert_eq!(classify(503, b""), ErrorClass::Throttled);
        assert_eq!(classify(502, b""), ErrorClass::ServerError);
        assert_eq!(classify(401, b""), ErrorClass::Credentials);
        let vllm = br#"{"object":"error","message":"Model \"m\" does not support matryoshka representation, changing output dimensions will lead to poor results.","type":"BadRequestError","param":null,"code":400}"#;
        assert_eq!(classify(400, vllm), ErrorClass::Mismatch);
        let openai = br#"{"error":{"message":"This model does not support specifying dimensions.","type":"invalid_request_error","param":"dimensions","code":null}}"#;
        assert_eq!(classify(400, openai), ErrorClass::Mismatch);
        assert!(error_message(400, openai).contains("send_dimensions = false"));
        let litellm = br#"{"error":{"message":"Invalid model name passed in model=titan","type":"invalid_request_error","param":"model","code":"400"}}"#;
        assert_eq!(classify(400, litellm), ErrorClass::NotFound);
        let m = |b: &str| error_message(400, b.as_bytes());
        assert_eq!(
            m(r#"{"error":{"message":"bad input"}}"#),
            "400 Bad Request: bad input"
        );
        assert_eq!(
            m(r#"{"error":"too long","error_type":"Validation"}"#),
            "400 Bad Request: too long"
        );
        assert_eq!(
            m(r#"{"object":"error","message":"vllm says"}"#),
            "400 Bad Request: vllm says"
        );
        assert_eq!(m(r#"{"detail":"fastapi"}"#), "400 Bad Request: fastapi");
        assert_eq!(m("<html>oops</html>"), "400 Bad Request: <html>oops</html>");
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(soon)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date past: now");
    }

    #[test]
    fn secrets_are_scrubbed_and_never_debugged() {
        std::env::set_var("EMBEDPIPE_TEST_OPENAI_KEY", "sk-test-very-secret-key-123");
        let client = OpenAi::connect(&Connection {
            base_url: Some("http://127.0.0.1:9/v1/".into()),
            api_key_env: Some("EMBEDPIPE_TEST_OPENAI_KEY".into()),
            timeout: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(client.url(), "http://127.0.0.1:9/v1/embeddings");
        assert!(!format!("{client:?}").contains("very-secret"));
        assert_eq!(
            client.scrub("Incorrect API key provided: sk-test-very-secret-key-123."),
            "Incorrect API key provided: ****."
        );
        let missing = OpenAi::connect(&Connection {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            api_key_env: Some("EMBEDPIPE_TEST_UNSET_KEY".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{missing:#}").contains("EMBEDPIPE_TEST_UNSET_KEY"),
            "{missing:#}"
        );
    }
}
