//! The HTTP side: the listener, the shared state, routing a request to its operation (control
//! plane, async invoke, batch inference, InvokeModel), holding each answer for the simulated
//! latency, and the restJson responses every operation sends.

use crate::async_invoke::{self, Jobs};
use crate::auth::authenticate;
use crate::batch::{self, Batch};
use crate::invoke::{self, Answer};
use crate::settings::Settings;
use crate::stats::{all_arrivals, Arrivals, Stats, Window};
use crate::wire::{api, ApiError};
use crate::{control, openai, timer};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Everything the request handlers share.
pub(crate) struct State {
    pub(crate) settings: RwLock<Settings>,
    pub(crate) stats: Mutex<Stats>,
    pub(crate) windows: Mutex<HashMap<String, Window>>,
    /// Requests to any model in the last minute and the last second.
    pub(crate) arrivals: Mutex<(Arrivals, Arrivals)>,
    pub(crate) jobs: Arc<Jobs>,
    /// Batch inference jobs.
    pub(crate) batch: Batch,
    /// Answers by request shape, when `replay` is on.
    pub(crate) replayed: Mutex<HashMap<String, Answer>>,
    /// How much earlier than due to ask the timer for an answer.
    pub(crate) lead: timer::Lead,
}

impl State {
    pub(crate) fn stats(&self) -> Stats {
        let mut s = self.stats.lock().expect("stats").clone();
        s.async_invoke = self.jobs.counters.lock().expect("counters").clone();
        s.batch = self.batch.counters();
        s
    }

    pub(crate) fn reset(&self) {
        *self.stats.lock().expect("stats") = Stats::default();
        self.windows.lock().expect("windows").clear();
        *self.arrivals.lock().expect("arrivals") = all_arrivals().into_inner().expect("new");
        self.jobs.reset_counters();
        self.batch.reset_counters();
    }
}

/// A running emulator.
pub struct Emulator {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped.
    pub async fn start(addr: SocketAddr, settings: Settings) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            settings: RwLock::new(settings),
            stats: Mutex::new(Stats::default()),
            windows: Mutex::new(HashMap::new()),
            arrivals: all_arrivals(),
            jobs: Arc::default(),
            batch: Batch::default(),
            replayed: Mutex::default(),
            lead: timer::Lead::default(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Zeroes the counters and the quota windows.
    pub fn reset(&self) {
        self.state.reset();
    }

    pub fn set(&self, settings: Settings) {
        *self.state.settings.write().expect("settings") = settings;
        self.state.replayed.lock().expect("replayed").clear();
    }

    /// Serves until the task ends (it does not, short of a panic).
    pub async fn wait(mut self) -> Result<()> {
        (&mut self.task).await?;
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn json_response(status: u16, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-requestid", request_id())
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn request_id() -> String {
    format!(
        "{:08x}-emul-{:012x}",
        fastrand::u32(..),
        fastrand::u64(..) >> 16
    )
}

pub(crate) fn error_response(e: &ApiError) -> Resp {
    let body = serde_json::to_vec(&serde_json::json!({ "message": e.message })).expect("json");
    let mut r = json_response(e.status, body);
    r.headers_mut().insert(
        "x-amzn-errortype",
        format!(
            "{}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            e.code
        )
        .parse()
        .expect("header"),
    );
    r
}

/// Answers a request the configured latency after it arrived: the work of answering
/// (validation, vectors, JSON) is part of the latency, not added to it, and so is the timer's
/// own delay in resuming the task (learned, and asked for that much earlier: see
/// [`timer::Lead`]), so answers leave on time on average.
async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, std::io::Error> {
    let arrived = Instant::now();
    let mut latency = Duration::ZERO;
    let result = answer(state.clone(), req, &mut latency).await;
    if !latency.is_zero() {
        let due = arrived + latency;
        let target = state.lead.target(arrived, due);
        timer::sleep_until(target).await;
        let woke = Instant::now();
        state.lead.observe(target, woke);
        let error = if woke >= due {
            (woke - due).as_micros() as i64
        } else {
            -((due - woke).as_micros() as i64)
        };
        let mut s = state.stats.lock().expect("stats");
        s.timed_answers += 1;
        s.timed_error_micros += error;
    }
    result
}

/// Routes a request to its operation; InvokeModel and OpenAI embeddings set the latency to hold
/// their answer for.
async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
    latency: &mut Duration,
) -> Result<Resp, std::io::Error> {
    let path = req.uri().path().to_string();
    // Control plane (unsigned, loopback only).
    if let Some(ctl) = path.strip_prefix("/_emulator/") {
        return Ok(control::control(&state, ctl, req).await);
    }
    state.stats.lock().expect("stats").requests += 1;
    // The OpenAI-compatible endpoint (bearer auth, not SigV4).
    if path == "/v1" || path.starts_with("/v1/") {
        return match (req.method(), path.as_str()) {
            (&hyper::Method::POST, "/v1/embeddings") => {
                openai::embeddings(&state, req, latency).await
            }
            (&hyper::Method::GET, "/v1/models") => Ok(openai::list_models(&state, &req)),
            (method, _) => Ok(openai::no_route(method, &path)),
        };
    }
    if let Some(rest) = path
        .strip_prefix("/async-invoke")
        .filter(|r| r.is_empty() || r.starts_with('/'))
    {
        return async_route(&state, req, rest.trim_start_matches('/').to_string()).await;
    }
    // Batch inference (the control plane's paths: none starts with `/model/`).
    if path == "/model-invocation-jobs"
        || path == "/model-invocation-job"
        || path.starts_with("/model-invocation-job/")
    {
        return batch_route(&state, req, &path).await;
    }
    let Some(model_id) = path
        .strip_prefix("/model/")
        .and_then(|p| p.strip_suffix("/invoke"))
        .map(percent_decode)
    else {
        let e = api(
            "UnknownOperationException",
            404,
            format!("no such operation: {} {path}", req.method()),
        );
        return Ok(error_response(&e));
    };
    if req.method() != hyper::Method::POST {
        return Ok(error_response(&api(
            "UnknownOperationException",
            404,
            "InvokeModel is POST",
        )));
    }
    invoke::invoke_model(&state, req, model_id, latency).await
}

/// StartAsyncInvoke, GetAsyncInvoke, ListAsyncInvokes (signed like every operation).
async fn async_route(
    state: &State,
    req: Request<Incoming>,
    rest: String,
) -> Result<Resp, std::io::Error> {
    let settings = state.settings.read().expect("settings").clone();
    let region = match authenticate(state, &req, &settings) {
        Ok(region) => region,
        Err(refusal) => return Ok(error_response(&refusal)),
    };
    let method = req.method().clone();
    let query = req.uri().query().map(String::from);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    Ok(
        match async_invoke::handle(
            &state.jobs,
            &settings,
            &method,
            &rest,
            query.as_deref(),
            &body,
            &region,
        )
        .await
        {
            Ok(v) => json_response(200, serde_json::to_vec(&v).expect("json")),
            Err(e) => error_response(&e),
        },
    )
}

/// CreateModelInvocationJob, GetModelInvocationJob, ListModelInvocationJobs,
/// StopModelInvocationJob (signed like every operation).
async fn batch_route(
    state: &Arc<State>,
    req: Request<Incoming>,
    path: &str,
) -> Result<Resp, std::io::Error> {
    let settings = state.settings.read().expect("settings").clone();
    let region = match authenticate(state, &req, &settings) {
        Ok(region) => region,
        Err(refusal) => return Ok(error_response(&refusal)),
    };
    let method = req.method().clone();
    let query = req.uri().query().map(String::from);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    Ok(
        match batch::handle(state, &method, path, query.as_deref(), &body, &region) {
            Ok(v) => json_response(200, serde_json::to_vec(&v).expect("json")),
            Err(e) => error_response(&e),
        },
    )
}

/// `%XX` escapes decoded (model ids and ARNs in paths); an invalid escape stays as it is.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("cohere.embed-v4%3A0"), "cohere.embed-v4:0");
        assert_eq!(percent_decode("abc%"), "abc%");
    }
}
