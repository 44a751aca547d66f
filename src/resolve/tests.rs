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
