//! The endpoint over loopback, with a plain HTTP/1.1 client on a TCP stream (what a client
//! sees: status, headers, body bytes).

use super::{mask, reset_text, seconds_text};
use crate::settings::{Faults, Quota, Settings};
use crate::{vectors, Emulator};
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer as received.
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    /// The OpenAI error message.
    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .expect("an error message")
            .to_string()
    }
}

async fn start(settings: Settings) -> Emulator {
    Emulator::start(([127, 0, 0, 1], 0).into(), settings)
        .await
        .expect("emulator starts")
}

/// One request on a fresh connection (`connection: close`: the answer ends at EOF).
async fn send(
    emu: &Emulator,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Got {
    let mut s = tokio::net::TcpStream::connect(emu.addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        emu.addr,
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Got {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

async fn post(emu: &Emulator, body: &Value) -> Got {
    post_with(emu, &[], body).await
}

async fn post_with(emu: &Emulator, headers: &[(&str, &str)], body: &Value) -> Got {
    let bytes = serde_json::to_vec(body).unwrap();
    send(emu, "POST", "/v1/embeddings", headers, &bytes).await
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a float array")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn from_base64(v: &Value) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The 400 message of a request (and its status checked).
async fn refused(emu: &Emulator, body: Value) -> String {
    let got = post(emu, &body).await;
    assert_eq!(
        got.status,
        400,
        "{body}: {}",
        String::from_utf8_lossy(&got.body)
    );
    assert!(got.json()["error"]["type"].is_string());
    got.message()
}

#[tokio::test]
async fn float_and_base64_give_the_same_vectors() {
    let emu = start(Settings::default()).await;
    let texts = ["the quick brown fox", "quarterly revenue grew"];
    let mut answers = Vec::new();
    for format in ["float", "base64"] {
        let got = post(
            &emu,
            &json!({"model": "text-embedding-3-small", "input": texts, "encoding_format": format, "dimensions": 256}),
        )
        .await;
        assert_eq!(got.status, 200);
        let v = got.json();
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "text-embedding-3-small");
        let tokens: u64 = texts.iter().map(|t| super::request::tokens(t)).sum();
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": tokens, "total_tokens": tokens})
        );
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        let decoded: Vec<Vec<f32>> = data
            .iter()
            .map(|d| {
                assert_eq!(d["object"], "embedding");
                if format == "float" {
                    floats(&d["embedding"])
                } else {
                    from_base64(&d["embedding"])
                }
            })
            .collect();
        answers.push(decoded);
    }
    assert_eq!(answers[0], answers[1]);
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(
            answers[0][i],
            vectors::text("text-embedding-3-small", t, 256, true)
        );
    }
    let s = emu.stats().openai;
    assert_eq!((s.requests, s.ok, s.inputs), (2, 2, 4));
    assert_eq!(s.encoding_formats.get("base64"), Some(&1));
    assert_eq!(s.dimensions_sent.get("256"), Some(&2));
    assert_eq!(s.inputs_per_request.get(&2), Some(&2));
    assert_eq!(s.models.get("text-embedding-3-small"), Some(&2));
}

#[tokio::test]
async fn shuffled_answers_keep_their_index() {
    let emu = start(Settings {
        openai_shuffle: true,
        ..Default::default()
    })
    .await;
    let texts = ["alpha", "beta", "gamma"];
    let got = post(&emu, &json!({"model": "nomic-embed-text", "input": texts})).await;
    assert_eq!(got.status, 200);
    let v = got.json();
    let data = v["data"].as_array().unwrap();
    let order: Vec<u64> = data.iter().map(|d| d["index"].as_u64().unwrap()).collect();
    assert_eq!(order, [2, 1, 0]);
    for d in data {
        let i = d["index"].as_u64().unwrap() as usize;
        let e = floats(&d["embedding"]);
        assert_eq!(e.len(), 768);
        assert_eq!(e, vectors::text("nomic-embed-text", texts[i], 768, true));
    }
    assert_eq!(emu.stats().openai.dimensions_sent.get("none"), Some(&1));
}

#[tokio::test]
async fn malformed_requests_are_refused_with_their_reason() {
    let emu = start(Settings::default()).await;
    let small = "text-embedding-3-small";
    let m = refused(
        &emu,
        json!({"model": small, "input": "x", "truncate": true}),
    )
    .await;
    assert_eq!(m, "Unrecognized request argument supplied: truncate");
    let m = refused(&emu, json!({"model": small, "input": ""})).await;
    assert!(m.starts_with("'$.input' is invalid"), "{m}");
    let m = refused(&emu, json!({"model": small, "input": ["ok", "  "]})).await;
    assert!(
        m.starts_with("'$.input' is invalid") && m.contains("input[1]"),
        "{m}"
    );
    let m = refused(&emu, json!({"model": small, "input": []})).await;
    assert!(m.starts_with("'$.input' is invalid"), "{m}");
    let m = refused(&emu, json!({"model": small, "input": [1, 2, 3]})).await;
    assert!(m.contains("token array"), "{m}");
    let m = refused(&emu, json!({"model": small, "input": [[1, 2], [3]]})).await;
    assert!(m.contains("token array"), "{m}");
    let m = refused(
        &emu,
        json!({"model": small, "input": "x", "encoding_format": "int8"}),
    )
    .await;
    assert!(m.contains("'encoding_format'"), "{m}");
    let m = refused(
        &emu,
        json!({"model": "text-embedding-ada-002", "input": "x", "dimensions": 1536}),
    )
    .await;
    assert_eq!(m, "This model does not support specifying dimensions.");
    let m = refused(
        &emu,
        json!({"model": "nomic-embed-text", "input": "x", "dimensions": 512}),
    )
    .await;
    assert_eq!(m, "Model \"nomic-embed-text\" does not support matryoshka representation, changing output dimensions will lead to poor results.");
    let m = refused(
        &emu,
        json!({"model": small, "input": "x", "dimensions": 1537}),
    )
    .await;
    assert!(m.contains("1536"), "{m}");
    let m = refused(
        &emu,
        json!({"model": small, "input": "x".repeat(4 * 8191 + 1)}),
    )
    .await;
    assert!(
        m.starts_with(
            "This model's maximum context length is 8191 tokens, however you requested 8192 tokens"
        ),
        "{m}"
    );
    let m = refused(&emu, json!({"input": "x"})).await;
    assert!(m.contains("model"), "{m}");
    let got = send(&emu, "POST", "/v1/embeddings", &[], b"{not json").await;
    assert_eq!(got.status, 400);
    assert!(got
        .message()
        .starts_with("We could not parse the JSON body of your request"));
    let got = post(
        &emu,
        &json!({"model": "Text-Embedding-3-Small", "input": "x"}),
    )
    .await;
    assert_eq!(got.status, 404);
    assert_eq!(
        got.json(),
        json!({"error": {"message": "The model `Text-Embedding-3-Small` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
    );
    let s = emu.stats().openai;
    assert_eq!(s.errors.get("invalid_request"), Some(&13));
    assert_eq!(s.errors.get("model_not_found"), Some(&1));
    assert_eq!(s.ok, 0);
}

#[tokio::test]
async fn poisoned_input_refuses_the_request() {
    let emu = start(Settings {
        poison: Some("POISON".into()),
        ..Default::default()
    })
    .await;
    let m = refused(
        &emu,
        json!({"model": "text-embedding-3-large", "input": ["fine", "a POISON b"]}),
    )
    .await;
    assert_eq!(m, "input 1 was refused (poison)");
}

#[tokio::test]
async fn too_many_inputs_get_422_and_too_big_bodies_413() {
    let emu = start(Settings {
        openai_max_body_bytes: 4096,
        ..Default::default()
    })
    .await;
    let inputs: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let got = post(
        &emu,
        &json!({"model": "BAAI/bge-small-en-v1.5", "input": inputs}),
    )
    .await;
    assert_eq!(got.status, 422);
    assert_eq!(
        got.json(),
        json!({"error": "batch size 33 > maximum allowed batch size 32", "error_type": "Validation"})
    );
    // 32 is fine (and a body over 1 KiB is answered off the runtime).
    let inputs: Vec<String> = (0..32)
        .map(|i| format!("text number {i} of the batch"))
        .collect();
    let got = post(
        &emu,
        &json!({"model": "BAAI/bge-small-en-v1.5", "input": inputs}),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["data"].as_array().unwrap().len(), 32);
    // Over the body limit.
    let got = post(
        &emu,
        &json!({"model": "text-embedding-3-small", "input": "y".repeat(5000)}),
    )
    .await;
    assert_eq!(got.status, 413);
    assert_eq!(
        got.json(),
        json!({"error": "Payload too large", "error_type": "Validation"})
    );
    let s = emu.stats().openai;
    assert_eq!(s.errors.get("batch_too_large"), Some(&1));
    assert_eq!(s.errors.get("payload_too_large"), Some(&1));
    assert_eq!(s.max_inputs_per_request, 32);
}

#[tokio::test]
async fn bearer_auth_refuses_missing_and_wrong_keys_without_echoing_them() {
    let key = "sk-emulator-secret-0123456789";
    let emu = start(Settings {
        openai_api_key: Some(key.into()),
        ..Default::default()
    })
    .await;
    let body = json!({"model": "text-embedding-3-small", "input": "hello"});
    let got = post(&emu, &body).await;
    assert_eq!(got.status, 401);
    assert!(got.message().starts_with("You didn't provide an API key"));
    let wrong = "sk-abcdefghijklmnopqrstuvwxyz";
    let got = post_with(
        &emu,
        &[("authorization", &format!("Bearer {wrong}"))],
        &body,
    )
    .await;
    assert_eq!(got.status, 401);
    let text = String::from_utf8_lossy(&got.body).to_string();
    assert!(
        got.message()
            .starts_with("Incorrect API key provided: sk-ab****wxyz."),
        "{text}"
    );
    assert_eq!(got.json()["error"]["code"], "invalid_api_key");
    assert!(!text.contains(wrong) && !text.contains(key));
    let got = post_with(&emu, &[("authorization", "Bearer short")], &body).await;
    assert!(got
        .message()
        .starts_with("Incorrect API key provided: ****."));
    let got = post_with(&emu, &[("authorization", &format!("Bearer {key}"))], &body).await;
    assert_eq!(got.status, 200);
    let models = send(
        &emu,
        "GET",
        "/v1/models",
        &[("authorization", &format!("Bearer {key}"))],
        b"",
    )
    .await;
    assert_eq!(models.status, 200);
    let s = emu.stats();
    assert_eq!(s.unauthenticated, 3);
    assert_eq!(s.openai.errors.get("invalid_api_key"), Some(&3));
    assert_eq!(s.openai.ok, 1);
}

#[tokio::test]
async fn headers_are_recorded_and_the_echo_header_kept() {
    let emu = start(Settings {
        openai_echo_header: Some("X-Project".into()),
        ..Default::default()
    })
    .await;
    let got = post_with(
        &emu,
        &[
            ("X-Project", "from-env-42"),
            ("OpenAI-Organization", "org-1"),
        ],
        &json!({"model": "text-embedding-3-small", "input": "hi", "user": "u1"}),
    )
    .await;
    assert_eq!(got.status, 200);
    let s = emu.stats().openai;
    assert!(s.header_names.contains("x-project"));
    assert!(s.header_names.contains("openai-organization"));
    assert!(s.header_names.contains("content-type"));
    assert_eq!(s.echoed_header_values, ["from-env-42"]);
    // Reset zeroes the counters.
    emu.reset();
    let s = emu.stats().openai;
    assert_eq!((s.requests, s.ok), (0, 0));
    assert!(s.header_names.is_empty() && s.echoed_header_values.is_empty());
}

#[tokio::test]
async fn throttling_sends_retry_after_and_times_the_retry() {
    let emu = start(Settings {
        faults: Faults {
            throttle: 1.0,
            ..Default::default()
        },
        openai_retry_after_secs: Some(1.5),
        ..Default::default()
    })
    .await;
    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"]});
    let got = post(&emu, &body).await;
    assert_eq!(got.status, 429);
    assert_eq!(
        got.json(),
        json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
    );
    assert_eq!(got.header("retry-after"), Some("1.5"));
    assert_eq!(got.header("retry-after-ms"), Some("1500"));
    tokio::time::sleep(Duration::from_millis(30)).await;
    emu.set(Settings::default());
    let got = post(&emu, &body).await;
    assert_eq!(got.status, 200);
    assert!(got.header("retry-after").is_none());
    let s = emu.stats().openai;
    assert_eq!(s.retry_gaps_ms.len(), 1);
    assert!(s.retry_gaps_ms[0] >= 30, "{:?}", s.retry_gaps_ms);
    assert_eq!(s.retry_after_sent, 1);
    assert_eq!(s.errors.get("rate_limit_exceeded"), Some(&1));
    // A third send of the same body is no retry of a refusal.
    post(&emu, &body).await;
    assert_eq!(emu.stats().openai.retry_gaps_ms.len(), 1);
}

#[tokio::test]
async fn injected_server_faults_in_their_wire_forms() {
    let mut settings = Settings {
        faults: Faults {
            not_ready: 1.0,
            ..Default::default()
        },
        openai_retry_after_secs: Some(2.0),
        ..Default::default()
    };
    let emu = start(settings.clone()).await;
    let body = json!({"model": "BAAI/bge-small-en-v1.5", "input": "x"});
    let got = post(&emu, &body).await;
    assert_eq!(got.status, 429);
    assert_eq!(
        got.json(),
        json!({"error": "Model is overloaded", "error_type": "Overloaded"})
    );
    assert_eq!(got.header("retry-after"), Some("2"));
    settings.faults = Faults {
        model_timeout: 1.0,
        ..Default::default()
    };
    emu.set(settings.clone());
    let got = post(&emu, &body).await;
    assert_eq!(got.status, 504);
    assert!(got.header("retry-after").is_none());
    settings.faults = Faults {
        server_error: 1.0,
        ..Default::default()
    };
    emu.set(settings.clone());
    for _ in 0..8 {
        let got = post(&emu, &body).await;
        assert!(matches!(got.status, 500 | 503), "{}", got.status);
    }
    settings.faults = Faults {
        malformed: 1.0,
        ..Default::default()
    };
    emu.set(settings);
    let got = post(&emu, &body).await;
    assert_eq!(got.status, 200);
    assert!(serde_json::from_slice::<Value>(&got.body).is_err());
    let s = emu.stats().openai;
    assert_eq!(s.errors.get("overloaded"), Some(&1));
    assert_eq!(s.errors.get("timeout"), Some(&1));
    assert_eq!(s.errors.get("malformed"), Some(&1));
    let fives =
        s.errors.get("server_error").unwrap_or(&0) + s.errors.get("server_busy").unwrap_or(&0);
    assert_eq!(fives, 8);
    // Every refusal of the same body after the first was a retry of it.
    assert_eq!(s.retry_gaps_ms.len(), 10);
}

#[tokio::test]
async fn quota_headers_count_down_and_the_window_frees_up() {
    let model = "text-embedding-3-small";
    let emu = start(Settings {
        model_quotas: [(
            model.to_string(),
            Quota {
                requests_per_minute: Some(3),
                tokens_per_minute: Some(1000),
            },
        )]
        .into(),
        quota_window_ms: Some(300),
        ..Default::default()
    })
    .await;
    let body = json!({"model": model, "input": "abcdefgh"}); // 2 tokens
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let got = post(&emu, &body).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(got.header("x-ratelimit-limit-tokens"), Some("1000"));
        let reset = got.header("x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with("ms"), "{reset}");
        assert_eq!(Some(reset), got.header("x-ratelimit-reset-tokens"));
        remaining.push((
            got.header("x-ratelimit-remaining-requests")
                .unwrap()
                .to_string(),
            got.header("x-ratelimit-remaining-tokens")
                .unwrap()
                .to_string(),
        ));
    }
    let expected: Vec<(String, String)> = [("2", "998"), ("1", "996"), ("0", "994")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(remaining, expected);
    let got = post(&emu, &body).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(got.header("x-ratelimit-remaining-requests"), Some("0"));
    // Another model has no quota and no headers.
    let other = post(
        &emu,
        &json!({"model": "text-embedding-3-large", "input": "x"}),
    )
    .await;
    assert!(other.header("x-ratelimit-limit-requests").is_none());
    tokio::time::sleep(Duration::from_millis(320)).await;
    let got = post(&emu, &body).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-ratelimit-remaining-requests"), Some("2"));
    let s = emu.stats().openai;
    assert_eq!(s.max_requests_per_window, 3);
    assert_eq!(s.errors.get("rate_limit_exceeded"), Some(&1));
    assert_eq!(s.retry_gaps_ms.len(), 1);
}

#[tokio::test]
async fn litellm_titan_answers_base64_with_bits() {
    let emu = start(Settings::default()).await;
    let model = "bedrock/amazon.titan-embed-text-v2:0";
    let got = post(
        &emu,
        &json!({"model": model, "input": "the quick brown fox", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(got.status, 200);
    let bits = got.json()["data"][0]["embedding"].clone();
    let bits: Vec<u64> = bits
        .as_array()
        .expect("an array, not a base64 string")
        .iter()
        .map(|b| b.as_u64().expect("an integer"))
        .collect();
    assert_eq!(bits.len(), 1024);
    let float = vectors::text(model, "the quick brown fox", 1024, true);
    let expected: Vec<u64> = float.iter().map(|x| u64::from(*x > 0.0)).collect();
    assert_eq!(bits, expected);
    let got = post(
        &emu,
        &json!({"model": model, "input": "x", "dimensions": 256}),
    )
    .await;
    assert_eq!(floats(&got.json()["data"][0]["embedding"]).len(), 256);
    let m = refused(
        &emu,
        json!({"model": model, "input": "x", "dimensions": 300}),
    )
    .await;
    assert!(m.contains("300"), "{m}");
}

#[tokio::test]
async fn models_list_and_unknown_paths() {
    let emu = start(Settings::default()).await;
    let got = send(&emu, "GET", "/v1/models", &[], b"").await;
    assert_eq!(got.status, 200);
    let v = got.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert_eq!(m["owned_by"], "embedpipe-emulator");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 6);
    assert!(ids.contains(&"BAAI/bge-small-en-v1.5"));
    let got = send(&emu, "POST", "/v1/chat/completions", &[], b"{}").await;
    assert_eq!(got.status, 404);
    assert_eq!(got.message(), "Invalid URL (POST /v1/chat/completions)");
    let got = send(&emu, "GET", "/v1/embeddings", &[], b"").await;
    assert_eq!(got.status, 404);
}

#[test]
fn texts_of_headers() {
    assert_eq!(mask("sk-abcdefghijklmnopqrstuvwxyz"), "sk-ab****wxyz");
    assert_eq!(mask("sk-12345678"), "****");
    assert_eq!(seconds_text(2.0), "2");
    assert_eq!(seconds_text(1.5), "1.5");
    assert_eq!(reset_text(Duration::ZERO), "0s");
    assert_eq!(reset_text(Duration::from_millis(250)), "250ms");
    assert_eq!(reset_text(Duration::from_micros(249_001)), "250ms");
    assert_eq!(reset_text(Duration::from_secs(1)), "1s");
    assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
    assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    assert_eq!(reset_text(Duration::from_millis(3_723_250)), "1h2m3.25s");
}
