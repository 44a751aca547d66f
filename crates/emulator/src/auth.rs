//! Who may call: every operation must carry a well-formed SigV4 `Authorization` header for the
//! service `bedrock` (the signature itself is not recomputed), and, when `access_key_id` is set,
//! that key. Refusals are counted as unauthenticated.

use crate::server::State;
use crate::settings::Settings;
use crate::wire::{api, ApiError};
use hyper::Request;

/// Checks the SigV4 header (and the allowed key, if one is set): the request's region, or why
/// it is refused (counted as unauthenticated).
pub(crate) fn authenticate<B>(
    state: &State,
    req: &Request<B>,
    settings: &Settings,
) -> Result<String, ApiError> {
    let checked = check_sigv4(req).and_then(|(key, region)| {
        if settings.access_key_id.as_deref().is_some_and(|k| k != key) {
            Err(api(
                "UnrecognizedClientException",
                403,
                "The security token included in the request is invalid.",
            ))
        } else {
            Ok(region)
        }
    });
    if checked.is_err() {
        state.stats.lock().expect("stats").unauthenticated += 1;
    }
    checked
}

/// A well-formed SigV4 Authorization header for service `bedrock`; returns the access key id
/// and the region of the credential scope.
fn check_sigv4<B>(req: &Request<B>) -> Result<(String, String), ApiError> {
    let missing = || {
        api(
            "MissingAuthenticationTokenException",
            403,
            "Missing Authentication Token",
        )
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .ok_or_else(missing)?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        api(
            "IncompleteSignatureException",
            403,
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm",
        )
    })?;
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let incomplete = |what: &str| {
        api(
            "IncompleteSignatureException",
            403,
            format!("Authorization header requires '{what}' parameter"),
        )
    };
    let cred = cred.ok_or_else(|| incomplete("Credential"))?;
    let signed = signed.ok_or_else(|| incomplete("SignedHeaders"))?;
    let sig = sig.ok_or_else(|| incomplete("Signature"))?;
    let scope: Vec<&str> = cred.split('/').collect();
    if scope.len() != 5 || scope[3] != "bedrock" || scope[4] != "aws4_request" {
        return Err(api(
            "InvalidSignatureException",
            403,
            "Credential should be scoped to a valid region and the service 'bedrock'",
        ));
    }
    if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(api(
            "InvalidSignatureException",
            403,
            "The request signature we calculated does not match the signature you provided",
        ));
    }
    if !signed.split(';').any(|h| h == "host") || req.headers().get("x-amz-date").is_none() {
        return Err(api(
            "InvalidSignatureException",
            403,
            "The host and x-amz-date headers must be signed",
        ));
    }
    Ok((scope[0].to_string(), scope[2].to_string()))
}
