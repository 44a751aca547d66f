//! Layer 3, resolve: tests of the checks against the model registry, through the full load
//! ([`super::parse`]); config's own checks are tested in `config`.

use super::parse as parse_pipeline;
use crate::config::{ConfigError, Pipeline};
use std::path::Path;

use crate::config::tests::GOOD;

fn parse(text: &str) -> Result<Pipeline, ConfigError> {
    parse_pipeline(Path::new("pipelines/p.toml"), text)
}

fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// Line (1-based) of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle")]
        .matches('\n')
        .count()
        + 1
}

#[test]
fn good_file_passes_the_registry_checks() {
    let p = parse(GOOD).unwrap();
    assert_eq!(
        super::spec_of(&p, 0).id,
        "sentence-transformers/all-MiniLM-L6-v2"
    );
}

#[test]
fn registry_errors_keep_their_place_among_configs_own() {
    // The model's id is checked before the sink (models come before sink).
    let text = GOOD
        .replace(
            "sentence-transformers/all-MiniLM-L6-v2",
            "sentence-transformers/all-MiniLM-L12-v2",
        )
        .replace("table = \"articles\"", "table = \"articles_runs\"");
    assert!(err(&text).message.contains("unknown model id"));
    // Within a model: dimensions (spec) before the Bedrock-only keys of a local model.
    let text = GOOD.replace(
        "provider = \"local\"",
        "provider = \"local\"\ndimensions = 768\nlinger_ms = 5",
    );
    assert!(err(&text).message.contains("768"));
}

#[test]
fn unknown_model_id_lists_known_ids() {
    let text = GOOD.replace(
        "sentence-transformers/all-MiniLM-L6-v2",
        "sentence-transformers/all-MiniLM-L12-v2",
    );
    let e = err(&text);
    assert!(e.message.contains("unknown model id"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "id = \"sentence")));
    assert_eq!(e.column, Some(6));
    assert!(e
        .help
        .clone()
        .unwrap()
        .contains("sentence-transformers/all-MiniLM-L6-v2"));
}

#[test]
fn dimension_not_offered_lists_allowed() {
    let text = GOOD.replace(
        "provider = \"local\"",
        "provider = \"local\"\ndimensions = 768",
    );
    let e = err(&text);
    assert!(e.message.contains("768"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "dimensions")));
    assert!(e.help.clone().unwrap().contains("allowed dimensions: 384"));
}

#[test]
fn image_input_to_text_model_is_rejected() {
    let text = GOOD.replace("text = \"{title}\\n{body}\"", "image = \"bytes\"");
    let e = err(&text);
    assert!(e.message.contains("does not accept image input"), "{e}");
    assert!(e.help.clone().unwrap().contains("text"));
}

#[test]
fn an_s3_sink_keeps_its_side_files_in_the_same_prefix() {
    use super::{Overrides, Retention, Settings};
    use crate::util::Location;
    let text = GOOD
        .replace("uri = \"db\"", "uri = \"s3://lake/indexes/db/\"")
        .replace(
            "path = \"data.parquet\"",
            "path = \"s3://data/in/**/*.parquet\"",
        );
    let p = parse(&text).unwrap();
    let s = Settings::resolve(&p, &Overrides::default()).unwrap();
    assert!(s.uses_s3());
    let t = &s.sink.target;
    assert_eq!(t.uri, "s3://lake/indexes/db");
    assert!(t.local_dir.is_none());
    assert_eq!(
        s.sink.failures.to_string(),
        "s3://lake/indexes/db/articles_failures.jsonl"
    );
    assert_eq!(
        t.jobs_location().to_string(),
        "s3://lake/indexes/db/articles_jobs/"
    );
    assert!(matches!(s.source.paths[0].resolved, Location::S3(_)));
    // LanceDB's own default window.
    assert_eq!(
        s.sink.retention,
        Retention::Younger(std::time::Duration::from_secs(7 * 86_400))
    );
    let local = Settings::resolve(&parse(GOOD).unwrap(), &Overrides::default()).unwrap();
    assert!(!local.uses_s3());
    assert_eq!(
        local.sink.target.jobs_location(),
        Location::Local(std::path::PathBuf::from("pipelines/db/articles_jobs.jsonl"))
    );
}

#[test]
fn storage_keys_are_checked_where_they_are_written() {
    let with = |storage: &str, sink: &str| {
        let text = format!(
            "[storage]\n{storage}\n{}",
            GOOD.replace("uri = \"db\"", sink)
        );
        parse(&text)
    };
    let e = with("s3_endpoint_url = \"http://10.0.0.5:9000\"", "uri = \"db\"").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("plain HTTP"), "{e}");
    assert!(with(
        "s3_endpoint_url = \"http://127.0.0.1:9000\"",
        "uri = \"s3://b/db\""
    )
    .is_ok());
    let e = with("", "uri = \"gs://b/db\"").unwrap_err();
    assert!(e.message.contains("`gs://` is not supported"), "{e}");
    let e = with("", "uri = \"s3://Bad_Bucket/db\"").unwrap_err();
    assert!(e.message.contains("not a valid bucket name"), "{e}");
    let e = with("", "uri = \"db\"\nkeep_versions = 0").unwrap_err();
    assert!(e.message.contains("at least 1"), "{e}");
    let e = with("", "uri = \"db\"\nkeep_versions = \"7 days\"").unwrap_err();
    assert!(e.message.contains("not a unit"), "{e}");
    let e = with("secret = \"x\"", "uri = \"db\"").unwrap_err();
    assert!(e.message.contains("secret"), "{e}");
}

/// `GOOD` with its model served by an OpenAI-compatible server; `extra` lines are added to the
/// `[[model]]` table.
fn openai(extra: &str) -> String {
    GOOD.replace(
        "provider = \"local\"\nid = \"sentence-transformers/all-MiniLM-L6-v2\"",
        &format!(
            "provider = \"openai\"\nmodel = \"text-embedding-3-small\"\nbase_url = \"http://localhost:4000/v1\"\n{extra}"
        ),
    )
}

#[test]
fn openai_models_resolve_with_the_servers_name() {
    let p = parse(&openai(
        "dimensions = 512\napi_key_env = \"OPENAI_API_KEY\"\nencoding_format = \"base64\"\nheaders_env = { \"x-litellm-api-key\" = \"LITELLM_KEY\" }\ndocument_prefix = \"passage: \"",
    ))
    .unwrap();
    let m = super::ModelSettings::resolve(&p, 0, &Default::default());
    assert_eq!(m.spec.id, "openai-compatible");
    assert_eq!(m.model_id(), "text-embedding-3-small");
    assert_eq!(m.dimension, 512);
    assert_eq!(m.params.model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(m.params.encoding_format.as_deref(), Some("base64"));
    assert_eq!(m.params.document_prefix.as_deref(), Some("passage: "));
    assert!(m.params.send_dimensions);
    assert_eq!(m.batch_size, 32);
    assert_eq!(
        m.connection.base_url.as_deref(),
        Some("http://localhost:4000/v1")
    );
    assert_eq!(m.connection.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(
        m.connection.headers_env,
        vec![("x-litellm-api-key".to_string(), "LITELLM_KEY".to_string())]
    );
    assert!(
        m.fingerprint.contains("text-embedding-3-small"),
        "{}",
        m.fingerprint
    );
    // `--emulator` sends the calls to its /v1.
    let emu = super::Overrides {
        endpoint_url: Some("http://127.0.0.1:4566".into()),
        emulator_credentials: true,
        s3_endpoint_url: None,
    };
    let m = super::ModelSettings::resolve(&p, 0, &emu);
    assert_eq!(
        m.connection.base_url.as_deref(),
        Some("http://127.0.0.1:4566/v1")
    );
}

#[test]
fn openai_config_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "needs `dimensions`", "model = "),
        (
            "dimensions = 512\nencoding_format = \"binary\"",
            "unknown encoding_format",
            "encoding_format",
        ),
        (
            "dimensions = 512\napi_key_env = \"sk-abcdefghijklmnopqrstuvwx\"",
            "looks like a literal API key",
            "api_key_env",
        ),
        (
            "dimensions = 512\napi_key_env = \"MY KEY\"",
            "not a variable name",
            "api_key_env",
        ),
        (
            "dimensions = 512\napi_key = \"abc\"",
            "literal secret",
            "api_key =",
        ),
        (
            "dimensions = 512\nregion = \"us-east-1\"",
            "only to Bedrock",
            "region",
        ),
        (
            "dimensions = 512\nvariant = \"int8\"",
            "only to local models",
            "variant",
        ),
        (
            "dimensions = 512\nbatch_size = 4096",
            "between 1 and 2048",
            "batch_size",
        ),
        ("dimensions = 0", "between 1 and 65536", "dimensions = 0"),
        (
            "dimensions = 512\ninput_type = \"search_query\"",
            "not a parameter",
            "input_type",
        ),
        (
            "dimensions = 512\nheaders_env = { \"x-key\" = \"not a var\" }",
            "not an environment variable name",
            "headers_env",
        ),
    ];
    for (extra, message, at) in cases {
        let text = openai(extra);
        let e = err(&text);
        assert!(e.message.contains(message), "{extra}: {e}");
        assert_eq!(e.line, Some(line_of(&text, at)), "{extra}: {e}");
        if let Some(h) = &e.help {
            assert!(!h.contains("sk-abcdefghijklmnopqrstuvwx"), "{h}");
        }
    }
    let text = openai("dimensions = 512").replace("base_url = \"http://localhost:4000/v1\"\n", "");
    assert!(err(&text).message.contains("needs `base_url`"));
    let text = openai("dimensions = 512").replace("/v1\"", "/v1/embeddings\"");
    assert!(err(&text).message.contains("ends in /embeddings"));
    let text = openai("dimensions = 512").replace("http://localhost", "http://me:pw@localhost");
    let e = err(&text);
    assert!(
        e.message.contains("holds credentials") && !e.message.contains("pw"),
        "{e}"
    );
    // Header names that look like secrets are fine in headers_env: its values are names.
    let text = openai("dimensions = 512\nheaders_env = { Authorization = \"GATEWAY_TOKEN\" }");
    parse(&text).unwrap();
    // OpenAI-only keys on other providers.
    let text = GOOD.replace(
        "provider = \"local\"",
        "provider = \"local\"\nencoding_format = \"float\"",
    );
    let e = err(&text);
    assert!(
        e.message.contains("only to OpenAI-compatible models"),
        "{e}"
    );
}

/// `GOOD` with its model on Bedrock; `extra` lines are added to the `[[model]]` table.
fn bedrock(id: &str, extra: &str) -> String {
    GOOD.replace(
        "provider = \"local\"\nid = \"sentence-transformers/all-MiniLM-L6-v2\"",
        &format!("provider = \"bedrock\"\nid = \"{id}\"\nregion = \"us-east-1\"\n{extra}"),
    )
}

const BATCH: &str = "invoke = \"batch\"\nrole_arn = \"arn:aws:iam::123456789012:role/batch\"\nbatch_s3_uri = \"s3://bucket/batch\"";

#[test]
fn batch_models_resolve_with_half_prices_and_their_limits() {
    let p = parse(&bedrock(
        "amazon.titan-embed-text-v2:0",
        &format!("{BATCH}\nrecords_per_job = 2000\njob_timeout_hours = 48"),
    ))
    .unwrap();
    let m = super::ModelSettings::resolve(&p, 0, &Default::default());
    let b = m.batch.expect("batch settings");
    assert_eq!(b.records_per_job, 2000);
    assert_eq!(b.min_records_per_job, 100);
    assert_eq!(b.timeout, std::time::Duration::from_secs(48 * 3600));
    assert_eq!(b.prefix.to_string(), "s3://bucket/batch/");
    assert_eq!(b.prices.per_1k_tokens, m.prices.per_1k_tokens / 2.0);
    // The same vectors either way: the route is not part of the fingerprint.
    let on_demand = parse(&bedrock("amazon.titan-embed-text-v2:0", "")).unwrap();
    let o = super::ModelSettings::resolve(&on_demand, 0, &Default::default());
    assert_eq!(o.fingerprint, m.fingerprint);
    assert!(o.batch.is_none());
}

#[test]
fn batch_settings_are_checked_where_they_are_written() {
    let text = bedrock("cohere.embed-english-v3", BATCH);
    let e = err(&text);
    assert!(e.message.contains("no batch inference route"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "invoke =")));
    let text = bedrock(
        "amazon.titan-embed-text-v2:0",
        "invoke = \"batch\"\nbatch_s3_uri = \"s3://bucket/batch\"",
    );
    let e = err(&text);
    assert!(e.message.contains("needs `role_arn`"), "{e}");
    let text = bedrock(
        "amazon.titan-embed-text-v2:0",
        &BATCH.replace("arn:aws:iam::123456789012:role/batch", "my-role"),
    );
    let e = err(&text);
    assert!(e.message.contains("not an IAM role ARN"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "role_arn")));
    let text = bedrock(
        "amazon.titan-embed-text-v2:0",
        &format!("{BATCH}\nrecords_per_job = 60000"),
    );
    assert!(err(&text).message.contains("records_per_job"), "{text}");
    let text = bedrock("amazon.titan-embed-text-v2:0", "records_per_job = 500");
    let e = err(&text);
    assert!(e.message.contains("only to batch inference"), "{e}");
    let e = err(&openai(&format!("dimensions = 512\n{BATCH}")));
    assert!(e.message.contains("no batch inference route"), "{e}");
}
