//! The control plane (`/_emulator/...`, unsigned): counters, reset, and settings read or
//! changed at runtime. Kept apart from the Bedrock operations it is no part of.

use crate::server::{json_response, Resp, State};
use crate::settings::Settings;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;

/// `GET stats`, `POST reset`, `GET config`, `PUT config` (a JSON merge: keys present replace
/// the current ones).
pub(crate) async fn control(state: &State, ctl: &str, req: Request<Incoming>) -> Resp {
    match (req.method().as_str(), ctl) {
        ("GET", "stats") => {
            let s = state.stats();
            json_response(200, serde_json::to_vec_pretty(&s).expect("json"))
        }
        ("POST", "reset") => {
            state.reset();
            // (same as Emulator::reset)
            json_response(200, b"{}".to_vec())
        }
        ("GET", "config") => {
            let s = state.settings.read().expect("settings").clone();
            json_response(200, serde_json::to_vec_pretty(&s).expect("json"))
        }
        ("PUT", "config") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json_response(400, format!("{{\"message\":\"{e}\"}}").into_bytes())
                }
            };
            // Merge: keys present in the body replace the current ones.
            let current = serde_json::to_value(state.settings.read().expect("settings").clone())
                .expect("json");
            let patch: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return json_response(
                        400,
                        serde_json::to_vec(&serde_json::json!({"message": e.to_string()}))
                            .expect("json"),
                    )
                }
            };
            let mut merged = current;
            if let (Some(m), Some(p)) = (merged.as_object_mut(), patch.as_object()) {
                for (k, v) in p {
                    m.insert(k.clone(), v.clone());
                }
            }
            match serde_json::from_value::<Settings>(merged) {
                Ok(s) => {
                    *state.settings.write().expect("settings") = s.clone();
                    state.replayed.lock().expect("replayed").clear();
                    json_response(200, serde_json::to_vec_pretty(&s).expect("json"))
                }
                Err(e) => json_response(
                    400,
                    serde_json::to_vec(&serde_json::json!({"message": e.to_string()}))
                        .expect("json"),
                ),
            }
        }
        _ => json_response(404, b"{\"message\":\"unknown control endpoint\"}".to_vec()),
    }
}
