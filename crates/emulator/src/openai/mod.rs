//! An OpenAI-compatible embeddings endpoint (`POST /v1/embeddings`, `GET /v1/models`), so the
//! client's OpenAI-compatible provider can be tested against the quirks of the servers that
//! speak that protocol (OpenAI, Ollama, vLLM, TEI, LiteLLM) without any of them running.
//!
//! It reuses the Bedrock side's settings (latency, faults, quotas, poison) and answers in
//! OpenAI's wire form: `{"error":{...}}` bodies, `Retry-After` and `x-ratelimit-*` headers.
//! Bearer auth instead of SigV4. The order of a request: count it, auth, latency, body limit,
//! validation ([`request`]), faults, quota, answer.

mod models;
mod request;
#[cfg(test)]
mod tests;

use crate::invoke::draw;
use crate::server::{Resp, State};
use crate::settings::{Faults, Quota, Settings};
use crate::stats::Window;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::{Method, Request, Response};
use request::Prepared;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Request bodies up to this size are answered on the runtime; bigger ones (many inputs, long
/// answers) are built on a blocking thread, as InvokeModel's are.
const INLINE_REQUEST_BYTES: usize = 1024;

/// How far past the body limit a body is still read (and dropped) so the client gets its 413
/// rather than a reset connection; beyond this the connection is dropped.
const DRAIN_BYTES: usize = 64 << 20;

const MAX_RETRY_GAPS: usize = 10_000;
const MAX_ECHOED: usize = 100;

/// The quota window when `quota_window_ms` is not set: a minute, as quotas are stated.
const DEFAULT_WINDOW_MS: u64 = 60_000;

/// An answer other than 200: status, body, and the short code it is counted under.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// The key in `OpenAiCounters::errors`.
    pub(crate) code: &'static str,
}

impl Refusal {
    fn new(status: u16, code: &'static str, body: Value) -> Self {
        Self {
            status,
            body: serde_json::to_vec(&body).expect("json"),
            code,
        }
    }

    /// OpenAI's error envelope.
    fn openai(
        status: u16,
        code: &'static str,
        message: impl Into<String>,
        kind: &str,
        param: Option<&str>,
        error_code: Value,
    ) -> Self {
        Self::new(
            status,
            code,
            json!({"error": {"message": message.into(), "type": kind, "param": param, "code": error_code}}),
        )
    }

    /// 400 `invalid_request_error`.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::openai(
            400,
            "invalid_request",
            message,
            "invalid_request_error",
            None,
            Value::Null,
        )
    }

    /// 400 `invalid_request_error` about one parameter.
    pub(crate) fn invalid_param(message: impl Into<String>, param: &str) -> Self {
        Self::openai(
            400,
            "invalid_request",
            message,
            "invalid_request_error",
            Some(param),
            Value::Null,
        )
    }

    /// vLLM's 400 (its type and numeric code in OpenAI's envelope).
    pub(crate) fn vllm(message: impl Into<String>) -> Self {
        Self::openai(
            400,
            "invalid_request",
            message,
            "BadRequestError",
            None,
            json!(400),
        )
    }

    /// TEI's flat `{"error","error_type"}` body.
    pub(crate) fn tei(status: u16, code: &'static str, error: String, error_type: &str) -> Self {
        Self::new(
            status,
            code,
            json!({"error": error, "error_type": error_type}),
        )
    }

    pub(crate) fn model_not_found(name: &str) -> Self {
        Self::openai(
            404,
            "model_not_found",
            format!("The model `{name}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            json!("model_not_found"),
        )
    }

    fn too_large() -> Self {
        Self::tei(
            413,
            "payload_too_large",
            "Payload too large".into(),
            "Validation",
        )
    }

    fn missing_key() -> Self {
        Self::openai(401, "invalid_api_key", "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", "invalid_request_error", None, Value::Null)
    }

    /// The sent key is echoed masked, as OpenAI does: a log of the answer leaks no key.
    fn wrong_key(sent: &str) -> Self {
        Self::openai(
            401,
            "invalid_api_key",
            format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                mask(sent)
            ),
            "invalid_request_error",
            None,
            json!("invalid_api_key"),
        )
    }

    fn rate_limited() -> Self {
        Self::openai(
            429,
            "rate_limit_exceeded",
            "Rate limit reached for requests",
            "requests",
            None,
            json!("rate_limit_exceeded"),
        )
    }

    /// Ollama's answer when its queue is full.
    fn busy() -> Self {
        Self::new(
            503,
            "server_busy",
            json!({"error": {"message": "server busy, please try again.  maximum pending requests exceeded", "type": "api_error"}}),
        )
    }

    fn server_error() -> Self {
        Self::new(
            500,
            "server_error",
            json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}),
        )
    }

    /// A gateway's answer when the model behind it did not answer in time.
    fn timeout() -> Self {
        Self::new(
            504,
            "timeout",
            json!({"error": {"message": "upstream timed out", "type": "timeout"}}),
        )
    }

    /// TEI's answer when its queue is full (429, its router's status for `Overloaded`).
    fn overloaded() -> Self {
        Self::tei(
            429,
            "overloaded",
            "Model is overloaded".into(),
            "Overloaded",
        )
    }
}

/// Refusals a client is expected to retry: their bodies are remembered to time the retry.
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "rate_limit_exceeded" | "server_busy" | "server_error" | "timeout" | "overloaded" | "reset"
    )
}

/// `sk-ab****wxyz`: the first 5 and last 4 characters, or only `****` for a short key.
fn mask(sent: &str) -> String {
    let c: Vec<char> = sent.chars().collect();
    if c.len() < 12 {
        return "****".into();
    }
    let head: String = c[..5].iter().collect();
    let tail: String = c[c.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

fn response(status: u16, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header(
            "x-request-id",
            format!("req_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        )
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn set_header(r: &mut Resp, name: &'static str, value: String) {
    r.headers_mut()
        .insert(name, HeaderValue::from_str(&value).expect("header value"));
}

/// `1.5` → `1.5`, `2.0` → `2`: whole seconds as an integer, as servers send them.
fn seconds_text(secs: f64) -> String {
    if secs.fract() == 0.0 {
        format!("{}", secs as u64)
    } else {
        format!("{secs}")
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `250ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`
/// (rounded up to the millisecond: waiting that long is always enough).
fn reset_text(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000) as u64;
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if h > 0 || m > 0 {
        out += &format!("{m}m");
    }
    out += &s.to_string();
    if frac > 0 {
        out += format!(".{frac:03}").trim_end_matches('0');
    }
    out + "s"
}

/// Where a request's refusal or answer is counted.
struct Reply<'a> {
    state: &'a State,
    settings: &'a Settings,
    /// The request body's blake3 (none when over the limit).
    body_hash: Option<[u8; 32]>,
}

impl Reply<'_> {
    /// Counts a refusal (and remembers its body when a retry is expected).
    fn count(&self, code: &'static str, retry_after: bool) {
        let mut s = self.state.stats.lock().expect("stats");
        let o = &mut s.openai;
        *o.errors.entry(code.to_string()).or_default() += 1;
        o.retry_after_sent += u64::from(retry_after);
        if let (true, Some(h)) = (retryable(code), self.body_hash) {
            o.refused.remember(h, Instant::now());
        }
    }

    /// The refusal's answer: `Retry-After` on 429 and 503 when configured, and the rate-limit
    /// headers when the model has a quota.
    fn refuse(&self, r: Refusal, limits: Option<&Limits>) -> Resp {
        let retry_after = self
            .settings
            .openai_retry_after_secs
            .filter(|s| matches!(r.status, 429 | 503) && s.is_finite() && *s >= 0.0);
        self.count(r.code, retry_after.is_some());
        let mut resp = response(r.status, r.body);
        if let Some(secs) = retry_after {
            set_header(&mut resp, "retry-after", seconds_text(secs));
            set_header(
                &mut resp,
                "retry-after-ms",
                format!("{}", (secs * 1000.0).round() as u64),
            );
        }
        if let Some(l) = limits {
            l.apply(&mut resp);
        }
        resp
    }
}

/// `POST /v1/embeddings`. Sets `latency` to hold the answer for once the caller is known.
pub(crate) async fn embeddings(
    state: &State,
    req: Request<Incoming>,
    latency: &mut Duration,
) -> Result<Resp, std::io::Error> {
    let settings = state.settings.read().expect("settings").clone();
    note_headers(state, &settings, req.headers());
    let key = check_key(&settings, req.headers());
    let limit = usize::try_from(settings.openai_max_body_bytes).unwrap_or(usize::MAX);
    let body = read_bounded(req.into_body(), limit).await?;
    let body_hash = body.as_ref().map(|b| *blake3::hash(b).as_bytes());
    arrive(state, body_hash.as_ref());
    let reply = Reply {
        state,
        settings: &settings,
        body_hash,
    };
    if let Err(r) = key {
        state.stats.lock().expect("stats").unauthenticated += 1;
        return Ok(reply.refuse(r, None));
    }
    *latency = settings.latency.sample();
    let Some(body) = body else {
        return Ok(reply.refuse(Refusal::too_large(), None));
    };
    let prepared = match prepare(body, &settings).await? {
        Ok(p) => p,
        Err(r) => return Ok(reply.refuse(r, None)),
    };
    note_request(state, &prepared);
    let name = prepared.model.name;
    match draw_fault(&settings.faults) {
        Some(Fault::Reset) => {
            reply.count("reset", false);
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ));
        }
        Some(Fault::Refuse(r)) => {
            let limits = peek(state, &settings, name);
            return Ok(reply.refuse(r, limits.as_ref()));
        }
        None => {}
    }
    let limits = match take(state, &settings, name, prepared.tokens) {
        Ok(limits) => limits,
        Err(limits) => return Ok(reply.refuse(Refusal::rate_limited(), limits.as_ref())),
    };
    let body = if draw(settings.faults.malformed) {
        reply.count("malformed", false);
        prepared.body.slice(..prepared.body.len() / 2)
    } else {
        let mut s = state.stats.lock().expect("stats");
        let o = &mut s.openai;
        o.ok += 1;
        o.inputs += prepared.inputs;
        o.tokens += prepared.tokens;
        *o.models.entry(name.to_string()).or_default() += 1;
        prepared.body
    };
    let mut resp = response(200, body);
    if let Some(l) = &limits {
        l.apply(&mut resp);
    }
    Ok(resp)
}

/// `GET /v1/models`: the served models, in OpenAI's list form.
pub(crate) fn list_models(state: &State, req: &Request<Incoming>) -> Resp {
    let settings = state.settings.read().expect("settings").clone();
    note_headers(state, &settings, req.headers());
    if let Err(r) = check_key(&settings, req.headers()) {
        state.stats.lock().expect("stats").unauthenticated += 1;
        let reply = Reply {
            state,
            settings: &settings,
            body_hash: None,
        };
        return reply.refuse(r, None);
    }
    let data: Vec<Value> = models::MODELS
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "owned_by": "embedpipe-emulator"}))
        .collect();
    response(
        200,
        serde_json::to_vec(&json!({"object": "list", "data": data})).expect("json"),
    )
}

/// Any other `/v1/...` request: OpenAI's 404.
pub(crate) fn no_route(method: &Method, path: &str) -> Resp {
    let r = Refusal::openai(
        404,
        "invalid_request",
        format!("Invalid URL ({method} {path})"),
        "invalid_request_error",
        None,
        Value::Null,
    );
    response(r.status, r.body)
}

/// Keeps every header name (and the value of the one `openai_echo_header` names).
fn note_headers(state: &State, settings: &Settings, headers: &HeaderMap) {
    let echoed = settings
        .openai_echo_header
        .as_deref()
        .and_then(|n| headers.get(n.to_ascii_lowercase()))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut s = state.stats.lock().expect("stats");
    let o = &mut s.openai;
    for name in headers.keys() {
        if !o.header_names.contains(name.as_str()) {
            o.header_names.insert(name.as_str().to_string());
        }
    }
    if let Some(v) = echoed.filter(|_| o.echoed_header_values.len() < MAX_ECHOED) {
        o.echoed_header_values.push(v);
    }
}

/// `Authorization: Bearer <key>` when a key is configured.
fn check_key(settings: &Settings, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(key) = settings.openai_api_key.as_deref() else {
        return Ok(());
    };
    let sent = headers
        .get(AUTHORIZATION)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    match sent.as_deref().and_then(|h| h.strip_prefix("Bearer ")) {
        None | Some("") => Err(Refusal::missing_key()),
        Some(k) if k == key => Ok(()),
        Some(k) => Err(Refusal::wrong_key(k)),
    }
}

/// The body, or `None` when it is over `limit` (then read to its end and dropped, up to
/// [`DRAIN_BYTES`] more, so that the 413 reaches the client).
async fn read_bounded(mut body: Incoming, limit: usize) -> Result<Option<Bytes>, std::io::Error> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > limit.saturating_add(DRAIN_BYTES) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request body far over the limit",
            ));
        }
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if !kept.is_empty() {
            kept = Vec::new();
        }
    }
    Ok((seen <= limit).then(|| Bytes::from(kept)))
}

/// Counts an arrival (refused or not) in the all-model windows, and a resend of a refused body
/// as a retry (its gap since the refusal).
fn arrive(state: &State, body_hash: Option<&[u8; 32]>) {
    let now = Instant::now();
    let (minute, second) = {
        let mut a = state.arrivals.lock().expect("arrivals");
        (a.0.arrive(now), a.1.arrive(now))
    };
    let mut s = state.stats.lock().expect("stats");
    s.max_received_per_minute = s.max_received_per_minute.max(minute);
    s.max_received_per_second = s.max_received_per_second.max(second);
    let o = &mut s.openai;
    o.requests += 1;
    if let Some(refused) = body_hash.and_then(|h| o.refused.take(h)) {
        if o.retry_gaps_ms.len() < MAX_RETRY_GAPS {
            o.retry_gaps_ms
                .push(now.duration_since(refused).as_millis() as u64);
        }
    }
}

/// Validates and answers the body, on a blocking thread when it is big.
async fn prepare(
    body: Bytes,
    settings: &Settings,
) -> Result<Result<Prepared, Refusal>, std::io::Error> {
    let shuffle = settings.openai_shuffle;
    if body.len() <= INLINE_REQUEST_BYTES {
        return Ok(request::prepare(&body, settings.poison.as_deref(), shuffle));
    }
    let poison = settings.poison.clone();
    tokio::task::spawn_blocking(move || request::prepare(&body, poison.as_deref(), shuffle))
        .await
        .map_err(std::io::Error::other)
}

/// What a well-formed request asked for (whatever its fate afterwards).
fn note_request(state: &State, p: &Prepared) {
    let mut s = state.stats.lock().expect("stats");
    let o = &mut s.openai;
    o.max_inputs_per_request = o.max_inputs_per_request.max(p.inputs);
    *o.inputs_per_request.entry(p.inputs).or_default() += 1;
    *o.encoding_formats
        .entry(p.encoding.name().to_string())
        .or_default() += 1;
    let dims = p
        .dimensions
        .map_or_else(|| "none".to_string(), |d| d.to_string());
    *o.dimensions_sent.entry(dims).or_default() += 1;
}

enum Fault {
    Reset,
    Refuse(Refusal),
}

/// The injected faults, drawn independently in this order (a cut body is drawn last, once the
/// answer is made).
fn draw_fault(f: &Faults) -> Option<Fault> {
    if draw(f.reset) {
        return Some(Fault::Reset);
    }
    if draw(f.throttle) {
        return Some(Fault::Refuse(Refusal::rate_limited()));
    }
    if draw(f.server_error) {
        return Some(Fault::Refuse(if fastrand::bool() {
            Refusal::busy()
        } else {
            Refusal::server_error()
        }));
    }
    if draw(f.model_timeout) {
        return Some(Fault::Refuse(Refusal::timeout()));
    }
    if draw(f.not_ready) {
        return Some(Fault::Refuse(Refusal::overloaded()));
    }
    None
}

/// A model's quota standing, sent as `x-ratelimit-*` headers.
struct Limits {
    /// (limit, remaining) of requests and of tokens, where that quota is set.
    requests: Option<(u64, u64)>,
    tokens: Option<(u64, u64)>,
    /// Until the oldest request in the window leaves it (remaining grows again).
    reset: Duration,
}

impl Limits {
    /// `None` when the model has no quota.
    fn of(quota: Quota, w: &Window, now: Instant, span: Duration) -> Option<Self> {
        if quota.requests_per_minute.is_none() && quota.tokens_per_minute.is_none() {
            return None;
        }
        let used = w.events.len() as u64;
        Some(Self {
            requests: quota
                .requests_per_minute
                .map(|q| (q, q.saturating_sub(used))),
            tokens: quota
                .tokens_per_minute
                .map(|q| (q, q.saturating_sub(w.tokens))),
            reset: w.events.front().map_or(Duration::ZERO, |(t, _)| {
                span.saturating_sub(now.duration_since(*t))
            }),
        })
    }

    fn apply(&self, r: &mut Resp) {
        const REQUESTS: [&str; 3] = [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ];
        const TOKENS: [&str; 3] = [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ];
        let reset = reset_text(self.reset);
        for (names, v) in [(REQUESTS, self.requests), (TOKENS, self.tokens)] {
            if let Some((limit, remaining)) = v {
                set_header(r, names[0], limit.to_string());
                set_header(r, names[1], remaining.to_string());
                set_header(r, names[2], reset.clone());
            }
        }
    }
}

/// The model's quota (its own, else the default) and the window it is measured over.
fn quota_of(settings: &Settings, model: &str) -> (Quota, Duration) {
    let quota = settings
        .model_quotas
        .get(model)
        .copied()
        .unwrap_or(settings.quota);
    let span = Duration::from_millis(settings.quota_window_ms.unwrap_or(DEFAULT_WINDOW_MS));
    (quota, span)
}

/// The model's window, apart from Bedrock's (a name could be both).
fn window_key(model: &str) -> String {
    format!("openai:{model}")
}

/// The model's standing without taking anything (for refusals drawn before the quota).
fn peek(state: &State, settings: &Settings, model: &str) -> Option<Limits> {
    let (quota, span) = quota_of(settings, model);
    let mut windows = state.windows.lock().expect("windows");
    let w = windows.entry(window_key(model)).or_default();
    let now = Instant::now();
    w.prune_within(now, span);
    Limits::of(quota, w, now, span)
}

/// Takes a request into its model's sliding window: its standing after this request, or after
/// the refusal when the quota is spent.
fn take(
    state: &State,
    settings: &Settings,
    model: &str,
    tokens: u64,
) -> Result<Option<Limits>, Option<Limits>> {
    let (quota, span) = quota_of(settings, model);
    let now = Instant::now();
    let accepted = {
        let mut windows = state.windows.lock().expect("windows");
        let w = windows.entry(window_key(model)).or_default();
        w.prune_within(now, span);
        let over_requests = quota
            .requests_per_minute
            .is_some_and(|q| w.events.len() as u64 >= q);
        let over_tokens = quota
            .tokens_per_minute
            .is_some_and(|q| w.tokens + tokens > q);
        if over_requests || over_tokens {
            return Err(Limits::of(quota, w, now, span));
        }
        w.events.push_back((now, tokens));
        w.tokens += tokens;
        (w.events.len() as u64, Limits::of(quota, w, now, span))
    };
    let mut s = state.stats.lock().expect("stats");
    s.openai.max_requests_per_window = s.openai.max_requests_per_window.max(accepted.0);
    Ok(accepted.1)
}
