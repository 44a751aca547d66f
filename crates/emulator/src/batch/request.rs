//! What CreateModelInvocationJob accepts: the body's fields and their constraints as the API
//! reference states them (patterns, ranges, the two unions), strict about keys it does not
//! know, and the model, which must be one AWS runs batch jobs for. Refusals read like the
//! service's (`1 validation error detected: Value … at '…' failed to satisfy constraint: …`).

use crate::catalog::{self, Model};
use crate::wire::{validation, ApiError};
use serde_json::{Map, Value};

/// The keys of a CreateModelInvocationJob body (`aws-sdk-bedrock`'s serializer).
const KEYS: &[&str] = &[
    "clientRequestToken",
    "inputDataConfig",
    "jobName",
    "modelId",
    "modelInvocationType",
    "outputDataConfig",
    "roleArn",
    "tags",
    "timeoutDurationInHours",
    "vpcConfig",
];

/// A CreateModelInvocationJob body that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct CreateRequest {
    pub(crate) name: String,
    pub(crate) role_arn: String,
    /// As the caller spelled it (echoed by Get and List).
    pub(crate) model_id: String,
    pub(crate) model: &'static Model,
    pub(crate) token: Option<String>,
    /// `inputDataConfig` / `outputDataConfig` as sent (echoed by Get and List).
    pub(crate) input_config: Value,
    pub(crate) output_config: Value,
    pub(crate) input_uri: String,
    pub(crate) output_uri: String,
    pub(crate) timeout_hours: Option<i64>,
    pub(crate) invocation_type: Option<String>,
    pub(crate) vpc: Option<Value>,
    /// The body without its token, canonical: the same request sent again hashes the same.
    pub(crate) hash: u64,
}

/// `1 validation error detected: Value '<value>' at '<at>' failed to satisfy constraint: <rule>`.
fn constraint(value: &str, at: &str, rule: &str) -> ApiError {
    validation(format!(
        "1 validation error detected: Value '{value}' at '{at}' failed to satisfy constraint: {rule}"
    ))
}

fn missing(at: &str) -> ApiError {
    validation(format!(
        "1 validation error detected: Value null at '{at}' failed to satisfy constraint: Member must not be null"
    ))
}

fn pattern(value: &str, at: &str, re: &str) -> ApiError {
    constraint(
        value,
        at,
        &format!("Member must satisfy regular expression pattern: {re}"),
    )
}

/// A string member (`None` when absent or null).
fn string<'a>(o: &'a Map<String, Value>, key: &str, at: &str) -> Result<Option<&'a str>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(validation(format!(
            "1 validation error detected: Value '{other}' at '{at}' failed to satisfy constraint: Member must be a string"
        ))),
    }
}

fn required<'a>(o: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, ApiError> {
    string(o, key, at)?.ok_or_else(|| missing(at))
}

/// Fails on keys outside `allowed`.
fn only(o: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(validation(format!(
            "Unknown parameter '{k}' in {at}: must be one of: {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `^[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}$`, 1 to 63 characters.
pub(crate) fn job_name_ok(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(alnum)
        && s.chars().all(|c| alnum(c) || "+-.".contains(c))
}

/// `^[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}$`, 1 to 256 characters (a UUID passes: the SDK
/// sends one when the caller gives no token).
pub(crate) fn token_ok(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || c == '-')
}

/// `^arn:aws(-[^:]+)?:iam::[0-9]{12}:role/.+$`.
pub(crate) fn role_ok(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("arn:aws") else {
        return false;
    };
    let Some((partition, rest)) = rest.split_once(":iam::") else {
        return false;
    };
    let partition_ok = partition.is_empty()
        || (partition.len() > 1 && partition.starts_with('-') && !partition.contains(':'));
    let Some((account, role)) = rest.split_once(":role/") else {
        return false;
    };
    partition_ok
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !role.is_empty()
        && s.len() <= 2048
}

const S3_URI_PATTERN: &str =
    "^s3://[a-z0-9][-.a-z0-9]{1,61}(?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?$";

/// [`S3_URI_PATTERN`]: a bucket name, then key segments of the characters S3 calls safe.
pub(crate) fn s3_uri_ok(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("s3://") else {
        return false;
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (2..=62).contains(&bucket.len())
        && bucket.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let key = key.strip_suffix('/').unwrap_or(key);
    let key_ok = key.is_empty()
        || key
            .split('/')
            .all(|seg| !seg.is_empty() && seg.chars().all(|c| alnum(c) || "-!_*'().".contains(c)));
    bucket_ok && key_ok && s.len() <= 1024
}

fn account_ok(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// One of the two unions: exactly the member `member`, an object of `allowed` keys with an
/// `s3Uri`. Returns the URI.
fn s3_config(
    v: Option<&Value>,
    at: &str,
    member: &str,
    allowed: &[&str],
) -> Result<String, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Err(missing(at));
    };
    let Some(union) = v.as_object() else {
        return Err(validation(format!("{at} must be an object")));
    };
    only(union, &[member], at)?;
    let inner_at = format!("{at}.{member}");
    let Some(inner) = union.get(member).and_then(Value::as_object) else {
        return Err(validation(format!(
            "{at} must have exactly one member ({member})"
        )));
    };
    only(inner, allowed, &inner_at)?;
    let uri_at = format!("{inner_at}.s3Uri");
    let uri = required(inner, "s3Uri", &uri_at)?;
    if !s3_uri_ok(uri) {
        return Err(pattern(uri, &uri_at, S3_URI_PATTERN));
    }
    if let Some(f) = string(inner, "s3InputFormat", &format!("{inner_at}.s3InputFormat"))? {
        if f != "JSONL" {
            return Err(constraint(
                f,
                &format!("{inner_at}.s3InputFormat"),
                "Member must satisfy enum value set: [JSONL]",
            ));
        }
    }
    let owner_at = format!("{inner_at}.s3BucketOwner");
    if let Some(o) = string(inner, "s3BucketOwner", &owner_at)? {
        if !account_ok(o) {
            return Err(pattern(o, &owner_at, "^[0-9]{12}$"));
        }
    }
    let key_at = format!("{inner_at}.s3EncryptionKeyId");
    if let Some(k) = string(inner, "s3EncryptionKeyId", &key_at)? {
        if k.is_empty() || k.len() > 2048 {
            return Err(constraint(
                k,
                &key_at,
                "Member must have length between 1 and 2048",
            ));
        }
    }
    Ok(uri.to_string())
}

/// `tags`: at most 200 `{key, value}` objects.
fn tags(v: &Value) -> Result<(), ApiError> {
    let Some(list) = v.as_array() else {
        return Err(validation("tags must be a list of {key, value} objects"));
    };
    if list.len() > 200 {
        return Err(constraint(
            &list.len().to_string(),
            "tags",
            "Member must have length less than or equal to 200",
        ));
    }
    for t in list {
        let Some(o) = t.as_object() else {
            return Err(validation("tags must be a list of {key, value} objects"));
        };
        only(o, &["key", "value"], "tags")?;
        let key = required(o, "key", "tags.member.key")?;
        let value = required(o, "value", "tags.member.value")?;
        if key.is_empty() || key.len() > 128 {
            return Err(constraint(
                key,
                "tags.member.key",
                "Member must have length between 1 and 128",
            ));
        }
        if value.len() > 256 {
            return Err(constraint(
                value,
                "tags.member.value",
                "Member must have length less than or equal to 256",
            ));
        }
    }
    Ok(())
}

/// `vpcConfig`: `subnetIds` (1 to 16) and `securityGroupIds` (1 to 5), both required.
fn vpc(v: &Value) -> Result<(), ApiError> {
    let Some(o) = v.as_object() else {
        return Err(validation("vpcConfig must be an object"));
    };
    only(o, &["subnetIds", "securityGroupIds"], "vpcConfig")?;
    for (key, max) in [("subnetIds", 16), ("securityGroupIds", 5)] {
        let at = format!("vpcConfig.{key}");
        let Some(list) = o.get(key).filter(|v| !v.is_null()) else {
            return Err(missing(&at));
        };
        let ok = list
            .as_array()
            .is_some_and(|l| (1..=max).contains(&l.len()) && l.iter().all(Value::is_string));
        if !ok {
            return Err(constraint(
                &list.to_string(),
                &at,
                &format!("Member must be a list of 1 to {max} strings"),
            ));
        }
    }
    Ok(())
}

/// The model a `modelId` names (a base id or a foundation-model ARN), if batch inference takes
/// it.
pub(crate) fn batch_model(id: &str) -> Result<&'static Model, ApiError> {
    let base = match id.strip_prefix("arn:") {
        Some(_) => id
            .split_once(":foundation-model/")
            .filter(|(head, _)| head.starts_with("arn:aws") && head.contains(":bedrock:"))
            .map(|(_, base)| base),
        None => Some(id),
    };
    let Some(called) = base.and_then(catalog::resolve) else {
        return Err(validation("The provided model identifier is invalid."));
    };
    if !called.model.batch || called.profile.is_some() {
        return Err(validation(format!(
            "Batch inference is not supported for the model {id}."
        )));
    }
    Ok(called.model)
}

/// Reads and checks a CreateModelInvocationJob body.
pub(crate) fn parse(body: &[u8]) -> Result<CreateRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| validation(format!("Malformed request body: {e}")))?;
    let Some(o) = v.as_object() else {
        return Err(validation("The request body must be a JSON object."));
    };
    only(o, KEYS, "CreateModelInvocationJobRequest")?;
    let name = required(o, "jobName", "jobName")?;
    if !job_name_ok(name) {
        return Err(pattern(
            name,
            "jobName",
            r"^[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}$",
        ));
    }
    let role_arn = required(o, "roleArn", "roleArn")?;
    if !role_ok(role_arn) {
        return Err(pattern(
            role_arn,
            "roleArn",
            r"^arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+$",
        ));
    }
    let token = string(o, "clientRequestToken", "clientRequestToken")?;
    if let Some(t) = token {
        if !token_ok(t) {
            return Err(pattern(
                t,
                "clientRequestToken",
                "^[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}$",
            ));
        }
    }
    let input_uri = s3_config(
        o.get("inputDataConfig"),
        "inputDataConfig",
        "s3InputDataConfig",
        &["s3Uri", "s3InputFormat", "s3BucketOwner"],
    )?;
    let output_uri = s3_config(
        o.get("outputDataConfig"),
        "outputDataConfig",
        "s3OutputDataConfig",
        &["s3Uri", "s3EncryptionKeyId", "s3BucketOwner"],
    )?;
    let timeout_hours = match o.get("timeoutDurationInHours") {
        None | Some(Value::Null) => None,
        Some(t) => match t.as_i64() {
            Some(h) if (24..=168).contains(&h) => Some(h),
            Some(h) => {
                let rule = if h < 24 {
                    "Member must have value greater than or equal to 24"
                } else {
                    "Member must have value less than or equal to 168"
                };
                return Err(constraint(&h.to_string(), "timeoutDurationInHours", rule));
            }
            None => {
                return Err(constraint(
                    &t.to_string(),
                    "timeoutDurationInHours",
                    "Member must be an integer",
                ))
            }
        },
    };
    let invocation_type = string(o, "modelInvocationType", "modelInvocationType")?;
    match invocation_type {
        None | Some("InvokeModel") => {}
        Some("Converse") => {
            return Err(validation(
                "The Converse API is not supported for embedding models: use modelInvocationType InvokeModel.",
            ))
        }
        Some(other) => {
            return Err(constraint(
                other,
                "modelInvocationType",
                "Member must satisfy enum value set: [InvokeModel, Converse]",
            ))
        }
    }
    if let Some(t) = o.get("tags").filter(|t| !t.is_null()) {
        tags(t)?;
    }
    let vpc_config = o.get("vpcConfig").filter(|v| !v.is_null()).cloned();
    if let Some(v) = &vpc_config {
        vpc(v)?;
    }
    let model_id = required(o, "modelId", "modelId")?;
    if model_id.is_empty() || model_id.len() > 2048 {
        return Err(constraint(
            model_id,
            "modelId",
            "Member must have length between 1 and 2048",
        ));
    }
    let model = batch_model(model_id)?;
    let mut rest = o.clone();
    rest.remove("clientRequestToken");
    let hash = crate::vectors::fnv(crate::async_invoke::canonical(&Value::Object(rest)).as_bytes());
    Ok(CreateRequest {
        name: name.to_string(),
        role_arn: role_arn.to_string(),
        model_id: model_id.to_string(),
        model,
        token: token.map(String::from),
        input_config: o["inputDataConfig"].clone(),
        output_config: o["outputDataConfig"].clone(),
        input_uri,
        output_uri,
        timeout_hours,
        invocation_type: invocation_type.map(String::from),
        vpc: vpc_config,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ROLE: &str = "arn:aws:iam::123456789012:role/BatchRole";

    fn body(patch: Value) -> Vec<u8> {
        let mut v = json!({
            "jobName": "embed-1",
            "roleArn": ROLE,
            "modelId": "amazon.titan-embed-text-v2:0",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://bucket/in/x.jsonl", "s3InputFormat": "JSONL"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://bucket/out/"}},
        });
        for (k, x) in patch.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn refused(patch: Value) -> String {
        parse(&body(patch)).unwrap_err().message
    }

    #[test]
    fn accepts_a_full_request() {
        let r = parse(&body(json!({
            "clientRequestToken": "8d0f-41a2-9b1c",
            "timeoutDurationInHours": 72,
            "tags": [{"key": "team", "value": "search"}],
            "vpcConfig": {"subnetIds": ["subnet-1"], "securityGroupIds": ["sg-1"]},
            "modelInvocationType": "InvokeModel",
        })))
        .unwrap();
        assert_eq!(r.model.id, "amazon.titan-embed-text-v2:0");
        assert_eq!(r.input_uri, "s3://bucket/in/x.jsonl");
        assert_eq!(r.output_uri, "s3://bucket/out/");
        assert_eq!(r.timeout_hours, Some(72));
        assert_eq!(r.token.as_deref(), Some("8d0f-41a2-9b1c"));
        // The token is no part of the request's identity; the rest is.
        let again = parse(&body(
            json!({"clientRequestToken": "other", "timeoutDurationInHours": 72,
            "tags": [{"key": "team", "value": "search"}], "modelInvocationType": "InvokeModel",
            "vpcConfig": {"securityGroupIds": ["sg-1"], "subnetIds": ["subnet-1"]}}),
        ))
        .unwrap();
        assert_eq!(r.hash, again.hash);
        assert_ne!(r.hash, parse(&body(json!({}))).unwrap().hash);
    }

    #[test]
    fn strict_about_keys_and_unions() {
        assert!(refused(json!({"jobname": "x"})).contains("Unknown parameter 'jobname'"));
        assert!(refused(json!({"inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://bucket/k", "format": "JSONL"}}}))
            .contains("Unknown parameter 'format'"));
        assert!(
            refused(json!({"outputDataConfig": {"s3Output": {"s3Uri": "s3://bucket/k"}}}))
                .contains("Unknown parameter 's3Output'")
        );
        assert!(refused(json!({"inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://bucket/k", "s3InputFormat": "CSV"}}}))
            .contains("enum value set: [JSONL]"));
        assert!(
            refused(json!({"inputDataConfig": null})).contains("Value null at 'inputDataConfig'")
        );
        assert!(refused(
            json!({"outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "https://bucket/k"}}})
        )
        .contains("regular expression pattern"));
    }

    #[test]
    fn field_constraints() {
        assert!(refused(json!({"jobName": null})).contains("Value null at 'jobName'"));
        assert!(refused(json!({"jobName": "-lead"})).contains("at 'jobName'"));
        assert!(refused(json!({"jobName": "a".repeat(64)})).contains("at 'jobName'"));
        assert!(parse(&body(json!({"jobName": "a1+b.c--d"}))).is_ok());
        assert!(refused(json!({"roleArn": "arn:aws:iam::123:role/x"})).contains("at 'roleArn'"));
        assert!(refused(json!({"roleArn": "BatchRole"})).contains("at 'roleArn'"));
        assert!(parse(&body(
            json!({"roleArn": "arn:aws-us-gov:iam::123456789012:role/a/b"})
        ))
        .is_ok());
        assert!(
            refused(json!({"clientRequestToken": "has space"})).contains("at 'clientRequestToken'")
        );
        assert!(
            refused(json!({"clientRequestToken": "trailing-"})).contains("at 'clientRequestToken'")
        );
        assert!(
            refused(json!({"timeoutDurationInHours": 5})).contains("greater than or equal to 24")
        );
        assert!(
            refused(json!({"timeoutDurationInHours": 200})).contains("less than or equal to 168")
        );
        assert!(refused(json!({"modelInvocationType": "Converse"})).contains("Converse"));
        assert!(refused(json!({"tags": [{"key": "k"}]})).contains("tags.member.value"));
        assert!(refused(json!({"vpcConfig": {"subnetIds": ["s"]}})).contains("securityGroupIds"));
    }

    #[test]
    fn s3_uris() {
        assert!(s3_uri_ok("s3://bucket"));
        assert!(s3_uri_ok("s3://my-bucket/in/part-1.jsonl"));
        assert!(s3_uri_ok("s3://my-bucket/in/"));
        assert!(!s3_uri_ok("s3://Bucket/in"));
        assert!(!s3_uri_ok("s3://bucket//in"));
        assert!(!s3_uri_ok("s3://bucket/a b.jsonl"));
        assert!(!s3_uri_ok("s3://bucket/run=1/x.jsonl"));
    }

    #[test]
    fn models() {
        assert_eq!(
            batch_model("amazon.nova-2-multimodal-embeddings-v1:0")
                .unwrap()
                .id,
            "amazon.nova-2-multimodal-embeddings-v1:0"
        );
        assert_eq!(
            batch_model("arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0")
                .unwrap()
                .id,
            "amazon.titan-embed-text-v2:0"
        );
        let unsupported = batch_model("cohere.embed-v4:0").unwrap_err().message;
        assert!(unsupported.contains("not supported"), "{unsupported}");
        assert!(batch_model("us.cohere.embed-v4:0").is_err());
        assert_eq!(
            batch_model("amazon.titan-embed-text-v9")
                .unwrap_err()
                .message,
            "The provided model identifier is invalid."
        );
    }
}
