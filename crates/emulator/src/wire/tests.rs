//! Every family's rules through [`super::invoke`], as a client would meet them: what is
//! accepted, what is refused and with which message.

use super::*;
use crate::catalog;
use serde_json::json;

const TITAN_V1: &str = "amazon.titan-embed-text-v1";
const TITAN_V2: &str = "amazon.titan-embed-text-v2:0";
const TITAN_MM: &str = "amazon.titan-embed-image-v1";
const COHERE_V3: &str = "cohere.embed-english-v3";
const COHERE_V4: &str = "cohere.embed-v4:0";
const NOVA: &str = "amazon.nova-2-multimodal-embeddings-v1:0";
const MARENGO_27: &str = "twelvelabs.marengo-embed-2-7-v1:0";
const MARENGO_30: &str = "twelvelabs.marengo-embed-3-0-v1:0";

fn call(id: &str, body: &str) -> Result<Accepted, ApiError> {
    let called = catalog::resolve(id).unwrap_or_else(|| panic!("{id} is not in the catalog"));
    invoke(called, body.as_bytes(), None)
}

fn err(id: &str, body: &str) -> ApiError {
    match call(id, body) {
        Ok(_) => panic!("accepted: {body}"),
        Err(e) => e,
    }
}

fn ok(id: &str, body: &str) -> Value {
    let a = call(id, body).unwrap_or_else(|e| panic!("{body}: {}", e.message));
    serde_json::from_slice(&a.body).unwrap()
}

#[test]
fn titan_rules() {
    let r = ok(
        TITAN_V2,
        r#"{"inputText":"hello world","dimensions":256,"embeddingTypes":["float","binary"]}"#,
    );
    assert_eq!(r["embedding"].as_array().unwrap().len(), 256);
    assert_eq!(
        r["embeddingsByType"]["binary"].as_array().unwrap().len(),
        256
    );
    assert_eq!(r["inputTextTokenCount"], 2);
    for (body, needle) in [
        (
            r#"{"inputText":"a","dimensions":768}"#,
            "768 is not a valid value",
        ),
        (r#"{"inputText":"a","extra":1}"#, "extraneous key [extra]"),
        (r#"{"dimensions":256}"#, "required key [inputText]"),
        (r#"{"inputText":""}"#, "minLength"),
        (r#"{"inputText":5}"#, "expected type: String"),
        (r#"{"inputText":"a","normalize":"yes"}"#, "Boolean"),
        (r#"{"inputText":"a","embeddingTypes":"float"}"#, "JSONArray"),
        ("not json", "Malformed input request"),
    ] {
        let e = err(TITAN_V2, body);
        assert_eq!((e.code, e.status), ("ValidationException", 400));
        assert!(e.message.contains(needle), "{body}: {}", e.message);
    }
    // v1 takes inputText only.
    assert!(err(TITAN_V1, r#"{"inputText":"a","dimensions":256}"#)
        .message
        .contains("extraneous"));
    assert!(err(
        TITAN_MM,
        r#"{"embeddingConfig":{"outputEmbeddingLength":384}}"#
    )
    .message
    .contains("at least one"));
}

#[test]
fn cohere_rules_differ_by_version() {
    let r = ok(
        COHERE_V3,
        r#"{"texts":["a","b"],"input_type":"search_query","truncate":"END"}"#,
    );
    assert_eq!(r["response_type"], "embeddings_floats");
    assert_eq!(r["embeddings"].as_array().unwrap().len(), 2);
    let r = ok(
        "us.cohere.embed-v4:0",
        r#"{"texts":["a"],"input_type":"search_document","truncate":"LEFT","output_dimension":256,"embedding_types":["float","int8"]}"#,
    );
    assert_eq!(r["response_type"], "embeddings_by_type");
    assert_eq!(r["embeddings"]["int8"][0].as_array().unwrap().len(), 256);
    for (id, body, needle) in [
        (
            COHERE_V3,
            r#"{"texts":["a"],"input_type":"search_query","truncate":"LEFT"}"#,
            "[NONE, START, END]",
        ),
        (
            COHERE_V4,
            r#"{"texts":["a"],"input_type":"search_query","truncate":"END"}"#,
            "[NONE, LEFT, RIGHT]",
        ),
        (COHERE_V3, r#"{"texts":["a"]}"#, "required key [input_type]"),
        (
            COHERE_V4,
            r#"{"texts":["a"],"input_type":"image"}"#,
            "not a valid enum value",
        ),
        (
            COHERE_V3,
            r#"{"texts":["a"],"input_type":"search_query","output_dimension":256}"#,
            "extraneous key [output_dimension]",
        ),
        (
            COHERE_V4,
            r#"{"texts":["a"],"input_type":"search_query","output_dimension":768}"#,
            "768",
        ),
        (
            COHERE_V3,
            r#"{"texts":["a"],"input_type":"search_query","embedding_types":"float"}"#,
            "Malformed request",
        ),
        (
            COHERE_V3,
            r#"{"input_type":"search_query"}"#,
            "exactly one of texts",
        ),
    ] {
        let e = err(id, body);
        assert_eq!(e.code, "ValidationException");
        assert!(e.message.contains(needle), "{body}: {}", e.message);
    }
    let many: Vec<String> = (0..97).map(|i| format!("t{i}")).collect();
    let body = serde_json::json!({"texts": many, "input_type": "search_document"}).to_string();
    assert!(err(COHERE_V3, &body).message.contains("between 1 and 96"));
    let long = "x".repeat(2049);
    let body = serde_json::json!({"texts": [long], "input_type": "search_document"}).to_string();
    assert!(err(COHERE_V3, &body).message.contains("2048"));
}

#[test]
fn cohere_v4_image_url_is_a_data_uri_string() {
    let png = "data:image/png;base64,iVBORw0KGgo=";
    let item = |image_url: Value| {
        json!({"input_type": "search_document", "inputs": [{"content": [
            {"type": "text", "text": "a caption"},
            {"type": "image_url", "image_url": image_url},
        ]}]})
        .to_string()
    };
    let r = ok(COHERE_V4, &item(json!(png)));
    assert_eq!(r["embeddings"].as_array().unwrap().len(), 1);
    // Cohere's own API shape is not what Bedrock documents: refused.
    let e = err(COHERE_V4, &item(json!({ "url": png })));
    assert_eq!((e.code, e.status), ("ValidationException", 400));
    assert!(
        e.message.contains("image_url: expected type: String"),
        "{}",
        e.message
    );
}

#[test]
fn nova_and_marengo_routes() {
    let r = ok(
        NOVA,
        r#"{"taskType":"SINGLE_EMBEDDING","singleEmbeddingParams":{"embeddingPurpose":"GENERIC_INDEX","embeddingDimension":384,"text":{"truncationMode":"END","value":"hi"}}}"#,
    );
    assert_eq!(
        r["embeddings"][0]["embedding"].as_array().unwrap().len(),
        384
    );
    assert_eq!(r["embeddings"][0]["embeddingType"], "TEXT");
    for (body, needle) in [
        (
            r#"{"taskType":"SEGMENTED_EMBEDDING","segmentedEmbeddingParams":{}}"#,
            "StartAsyncInvoke",
        ),
        (
            r#"{"taskType":"SINGLE_EMBEDDING","singleEmbeddingParams":{"embeddingPurpose":"GENERIC_INDEX","text":{"value":"hi"}}}"#,
            "required key [truncationMode]",
        ),
        (
            r#"{"taskType":"SINGLE_EMBEDDING","singleEmbeddingParams":{"embeddingPurpose":"X","text":{"truncationMode":"END","value":"hi"}}}"#,
            "not a valid enum value",
        ),
        (
            r#"{"taskType":"SINGLE_EMBEDDING","singleEmbeddingParams":{"embeddingPurpose":"GENERIC_INDEX","text":{"truncationMode":"END","source":{"bytes":"aGk="}}}}"#,
            "use s3Location",
        ),
    ] {
        let e = err(NOVA, body);
        assert!(e.message.contains(needle), "{body}: {}", e.message);
    }
    // Marengo 2.7: InvokeModel needs the inference profile; video is async only.
    let e = err(MARENGO_27, r#"{"inputType":"text","inputText":"a dog"}"#);
    assert!(e.message.contains("inference profile"), "{}", e.message);
    let r = ok(
        "us.twelvelabs.marengo-embed-2-7-v1:0",
        r#"{"inputType":"text","inputText":"a dog"}"#,
    );
    assert_eq!(r["data"][0]["embedding"].as_array().unwrap().len(), 1024);
    let e = err(
        "us.twelvelabs.marengo-embed-2-7-v1:0",
        r#"{"inputType":"video","mediaSource":{"s3Location":{"uri":"s3://b/v.mp4"}}}"#,
    );
    assert!(e.message.contains("StartAsyncInvoke"), "{}", e.message);
    // Marengo 3.0: the base id is served, 512 dimensions; 2.7 parameters are refused.
    let r = ok(
        MARENGO_30,
        r#"{"inputType":"text","text":{"inputText":"a"}}"#,
    );
    assert_eq!(r["data"][0]["embedding"].as_array().unwrap().len(), 512);
    let e = err(
        MARENGO_30,
        r#"{"inputType":"text","text":{"inputText":"a"},"textTruncate":"end"}"#,
    );
    assert!(e.message.contains("textTruncate"), "{}", e.message);
}

#[test]
fn poisoned_inputs_are_refused() {
    let called = catalog::resolve(COHERE_V3).unwrap();
    let body = br#"{"texts":["fine","BAD one"],"input_type":"search_document"}"#;
    assert!(invoke(called, body, Some("BAD")).is_err());
    assert!(invoke(called, body, Some("nothing")).is_ok());
}
