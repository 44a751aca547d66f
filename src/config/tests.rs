use super::*;

/// A valid pipeline file, shared with resolve's tests.
pub(crate) const GOOD: &str = r#"
[source]
type = "parquet"
path = "data.parquet"

[[model]]
name = "minilm"
provider = "local"
id = "sentence-transformers/all-MiniLM-L6-v2"

[[embed]]
model = "minilm"
text = "{title}\n{body}"

[sink]
uri = "db"
table = "articles"
"#;

/// Config's own checks: every check against a model's spec passes here (those are the resolve
/// layer's, tested there).
struct NoSpecChecks;

impl SpecChecks for NoSpecChecks {
    fn model_id(&self, _: &Pipeline, _: &ModelConfig) -> Result<(), ConfigError> {
        Ok(())
    }

    fn model_params(&self, _: &Pipeline, _: &ModelConfig) -> Result<(), ConfigError> {
        Ok(())
    }

    fn inference_profile(&self, _: &Pipeline, _: &ModelConfig) -> Result<(), ConfigError> {
        Ok(())
    }

    fn media_route(
        &self,
        _: &Pipeline,
        _: &EmbedConfig,
        _: Range<usize>,
        _: usize,
    ) -> Result<(), ConfigError> {
        Ok(())
    }

    fn media_modality(
        &self,
        _: &Pipeline,
        _: &Spanned<String>,
        _: usize,
    ) -> Result<(), ConfigError> {
        Ok(())
    }

    fn step_input(
        &self,
        _: &Pipeline,
        _: &Spanned<EmbedConfig>,
        _: usize,
        _: &StepInput,
    ) -> Result<(), ConfigError> {
        Ok(())
    }
}

fn parse(text: &str) -> Result<Pipeline, ConfigError> {
    Pipeline::parse_with(Path::new("pipelines/p.toml"), text, &NoSpecChecks)
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
fn good_file_parses_with_defaults() {
    let p = parse(GOOD).unwrap();
    assert_eq!(p.steps.len(), 1);
    assert_eq!(p.steps[0].vector, "vector");
    assert_eq!(p.steps[0].name, "vector");
    assert_eq!(p.write_mode(), WriteMode::Create);
    assert_eq!(p.steps[0].input.columns(), vec!["title", "body"]);
    assert_eq!(p.resolve("x.parquet"), PathBuf::from("pipelines/x.parquet"));
    assert_eq!(
        p.resolve("../data/./x.parquet"),
        PathBuf::from("data/x.parquet")
    );
    assert_eq!(p.resolve("../../x"), PathBuf::from("../x"));
}

#[test]
fn toml_syntax_error_has_line_and_column() {
    let text = GOOD.replace("table = \"articles\"", "table = \"articles");
    let e = err(&text);
    assert!(e.message.starts_with("invalid TOML"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "table = ")));
    assert!(e.column.is_some());
    assert!(e.to_string().contains("pipelines/p.toml:"), "{e}");
}

#[test]
fn misspelt_key_suggests_the_right_one() {
    let text = GOOD.replace("path = \"data.parquet\"", "paht = \"data.parquet\"");
    let e = err(&text);
    assert_eq!(e.message, "unknown key `paht`");
    assert_eq!(e.line, Some(line_of(&text, "paht")));
    assert_eq!(e.column, Some(1));
    let help = e.help.clone().unwrap();
    assert!(help.contains("did you mean `path`?"), "{help}");
    assert!(help.contains("allowed keys:"), "{help}");
}

#[test]
fn bad_enum_value_lists_allowed_values() {
    let text = GOOD.replace(
        "table = \"articles\"",
        "table = \"articles\"\nmode = \"overwrit\"",
    );
    let e = err(&text);
    assert_eq!(e.line, Some(line_of(&text, "mode =")));
    let help = e.help.clone().unwrap();
    assert!(
        help.contains("did you mean `overwrite`?") && help.contains("create, overwrite, append"),
        "{help}"
    );
}

#[test]
fn missing_env_var_is_named_with_position() {
    let text = GOOD.replace(
        "uri = \"db\"",
        "uri = \"${EMBEDPIPE_TEST_SURELY_UNSET_VAR}/db\"",
    );
    let e = err(&text);
    assert!(
        e.message
            .contains("`EMBEDPIPE_TEST_SURELY_UNSET_VAR` is not set"),
        "{e}"
    );
    assert_eq!(e.line, Some(line_of(&text, "uri =")));
}

#[test]
fn env_var_is_interpolated() {
    std::env::set_var("EMBEDPIPE_TEST_DB_DIR", "/tmp/somewhere");
    let text = GOOD.replace("uri = \"db\"", "uri = \"${EMBEDPIPE_TEST_DB_DIR}/db\"");
    let p = parse(&text).unwrap();
    assert_eq!(p.sink().uri.get_ref().0, "/tmp/somewhere/db");
}

#[test]
fn literal_aws_secrets_are_rejected_without_echoing_them() {
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let text = GOOD.replace(
        "provider = \"local\"",
        &format!("provider = \"local\"\naws_secret_access_key = \"{secret}\""),
    );
    let e = err(&text);
    assert_eq!(e.line, Some(line_of(&text, "aws_secret_access_key")));
    let shown = format!("{}{}", e.message, e.help.clone().unwrap());
    assert!(shown.contains("credential chain"), "{shown}");
    assert!(!shown.contains(secret));

    let text = GOOD.replace("table = \"articles\"", "table = \"AKIAIOSFODNN7EXAMPLE\"");
    let e = err(&text);
    assert!(e.message.contains("AWS access key id"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "AKIA")));
}

#[test]
fn unknown_model_reference_suggests() {
    let text = GOOD.replace("model = \"minilm\"", "model = \"minlm\"");
    let e = err(&text);
    assert!(e.message.contains("no [[model]] named `minlm`"), "{e}");
    assert!(e.help.clone().unwrap().contains("did you mean `minilm`?"));
}

#[test]
fn step_needs_exactly_one_input() {
    let text = GOOD.replace(
        "text = \"{title}\\n{body}\"",
        "text = \"{title}\"\ncolumn = \"body\"",
    );
    let e = err(&text);
    assert!(e.message.contains("conflicts"), "{e}");
    let text = GOOD.replace("text = \"{title}\\n{body}\"", "");
    assert!(err(&text).message.contains("has no input"));
}

#[test]
fn template_errors() {
    assert!(Template::parse("{title").unwrap_err().contains("unclosed"));
    assert!(Template::parse("no placeholders")
        .unwrap_err()
        .contains("no `{column}`"));
    assert!(Template::parse("a } b {x}").unwrap_err().contains("stray"));
    let t = Template::parse("{{literal}} {x}").unwrap();
    assert_eq!(t.parts[0], TemplatePart::Literal("{literal} ".into()));
}

#[test]
fn csv_only_keys_on_parquet_are_rejected() {
    let text = GOOD.replace(
        "path = \"data.parquet\"",
        "path = \"data.parquet\"\ndelimiter = \";\"",
    );
    let e = err(&text);
    assert!(e.message.contains("only to csv"), "{e}");
}

#[test]
fn duplicate_vector_columns_are_rejected() {
    let text = format!("{GOOD}\n[[embed]]\nmodel = \"minilm\"\ncolumn = \"title\"\n");
    let e = err(&text);
    assert!(e.message.contains("vector column `vector`"), "{e}");
}

const BEDROCK: &str = r#"
[source]
type = "parquet"
path = "data.parquet"

[[quota]]
name = "titan"
requests_per_minute = 600

[[model]]
name = "titan"
provider = "bedrock"
id = "amazon.titan-embed-text-v2:0"
quota = "titan"
retry_deadline_secs = 120
linger_ms = 5

[[embed]]
model = "titan"
column = "title"

[sink]
uri = "db"
table = "articles"
"#;

#[test]
fn quota_groups_and_dispatch_keys_are_checked() {
    let p = parse(BEDROCK).unwrap();
    assert_eq!(p.file.quotas.len(), 1);
    assert_eq!(p.model(0).quota.as_ref().unwrap().get_ref(), "titan");

    let text = BEDROCK.replace("quota = \"titan\"", "quota = \"titna\"");
    let e = err(&text);
    assert_eq!(e.message, "unknown quota group `titna`");
    assert_eq!(e.line, Some(line_of(&text, "quota = \"titna\"")));
    assert!(e.help.clone().unwrap().contains("did you mean `titan`?"));

    let text = BEDROCK.replace("requests_per_minute = 600\n", "");
    let e = err(&text);
    assert_eq!(e.message, "quota group `titan` sets no limit");
    assert_eq!(e.line, Some(line_of(&text, "[[quota]]")));

    let text = BEDROCK.replace(
        "requests_per_minute = 600\n",
        "requests_per_minute = 600\n[[quota]]\nname = \"titan\"\ntokens_per_minute = 5\n",
    );
    assert_eq!(err(&text).message, "quota group `titan` is declared twice");

    for (from, to) in [
        ("requests_per_minute = 600", "requests_per_minute = 0"),
        ("linger_ms = 5", "linger_ms = 5\ntokens_per_minute = 0"),
    ] {
        let text = BEDROCK.replace(from, to);
        let e = err(&text);
        assert_eq!(e.message, "a rate limit must be at least 1 per minute");
        assert_eq!(e.line, Some(line_of(&text, &to[to.len() - 20..])));
    }

    let text = BEDROCK.replace("retry_deadline_secs = 120", "retry_deadline_secs = 0");
    let e = err(&text);
    assert!(e.message.starts_with("retry_deadline_secs must be"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "retry_deadline_secs")));

    let text = BEDROCK.replace("linger_ms = 5", "linger_ms = 600000");
    assert!(err(&text).message.starts_with("linger_ms must be"));

    // Dispatch keys mean nothing for the local model.
    let text = GOOD.replace(
        "id = \"sentence-transformers/all-MiniLM-L6-v2\"",
        "id = \"sentence-transformers/all-MiniLM-L6-v2\"\nlinger_ms = 5",
    );
    assert_eq!(
        err(&text).message,
        "`linger_ms` applies only to Bedrock models"
    );
}

#[test]
fn env_references_expand_in_every_string_value_and_templates_keep_columns() {
    std::env::set_var("EMBEDPIPE_TEST_TABLE_12", "from_env");
    let text = GOOD
        .replace(
            "table = \"articles\"",
            "table = \"${EMBEDPIPE_TEST_TABLE_12}\"",
        )
        .replace(
            "text = \"{title}\\n{body}\"",
            "text = \"${EMBEDPIPE_TEST_TABLE_12}: {title}\"",
        );
    let p = parse(&text).unwrap();
    assert_eq!(p.sink().table.get_ref(), "from_env");
    // `${VAR}` is the environment, `{column}` a column.
    assert_eq!(p.steps[0].input.columns(), vec!["title"]);
    match &p.steps[0].input {
        StepInput::Template(t) => {
            assert_eq!(t.parts[0], TemplatePart::Literal("from_env: ".to_string()))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn credential_variables_and_key_ids_in_templates_are_refused() {
    let text = GOOD.replace(
        "text = \"{title}\\n{body}\"",
        "text = \"{title} ${AWS_SECRET_ACCESS_KEY}\"",
    );
    let e = err(&text);
    assert!(e.to_string().contains("credential"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "${AWS_SECRET")));
    let text = GOOD.replace(
        "text = \"{title}\\n{body}\"",
        "text = \"key AKIAIOSFODNN7EXAMPLE {title}\"",
    );
    let e = err(&text);
    assert!(e.to_string().contains("access key id"), "{e}");
    assert_eq!(
        redact_key_ids("Credential=AKIAIOSFODNN7EXAMPLE/2026"),
        "Credential=AKIA****************/2026"
    );
}

#[test]
fn run_log_names_are_reserved() {
    let e = err(&GOOD.replace("table = \"articles\"", "table = \"articles_runs\""));
    assert!(e.to_string().contains("reserved"), "{e}");
    assert!(e.to_string().contains("run log of table `articles`"), "{e}");
}

#[test]
fn vector_columns_may_not_take_embedpipes_own_columns() {
    for name in ["id", "embedded_at"] {
        let text = GOOD.replace(
            "text = \"{title}\\n{body}\"",
            &format!("text = \"{{title}}\"\nvector = \"{name}\""),
        );
        let e = err(&text);
        assert!(e.to_string().contains("embedpipe writes itself"), "{e}");
        assert_eq!(e.line, Some(line_of(&text, "vector = ")), "{e}");
    }
}

#[test]
fn endpoint_urls_are_checked_and_ranges_say_what_they_take() {
    let bedrock = |extra: &str| {
        GOOD.replace(
            "provider = \"local\"\nid = \"sentence-transformers/all-MiniLM-L6-v2\"",
            &format!("provider = \"bedrock\"\nid = \"amazon.titan-embed-text-v2:0\"\n{extra}"),
        )
    };
    for bad in [
        "not a url",
        "ftp://host",
        "http://127.0.0.1:4566/some/path",
        "127.0.0.1:4566",
    ] {
        let text = bedrock(&format!("endpoint_url = \"{bad}\""));
        let e = err(&text);
        assert!(e.to_string().contains("`endpoint_url`"), "{bad}: {e}");
        assert_eq!(e.line, Some(line_of(&text, "endpoint_url")), "{bad}");
    }
    assert!(parse(&bedrock("endpoint_url = \"http://127.0.0.1:4566\"")).is_ok());
    assert!(parse(&bedrock(
        "endpoint_url = \"https://bedrock-runtime.us-east-1.amazonaws.com/\""
    ))
    .is_ok());
    let e = err(&bedrock("timeout_secs = 0"));
    assert!(
        e.to_string().contains("more than 0 and at most 3600"),
        "{e}"
    );
}

#[test]
fn local_engine_keys_take_known_values_and_custom_models_need_path_and_dimensions() {
    let local = "id = \"sentence-transformers/all-MiniLM-L6-v2\"";
    let with = |extra: &str| GOOD.replace(local, &format!("{local}\n{extra}"));
    assert!(parse(&with("variant = \"int8\"\npooling = \"cls\"\nthreads = 2")).is_ok());
    let text = with("variant = \"int4\"");
    let e = err(&text);
    assert!(e.message.contains("`variant` is one of fp32, int8"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "variant")));
    let e = err(&with("pooling = \"max\""));
    assert!(e.message.contains("`pooling` is one of mean, cls"), "{e}");
    let e = err(&with("threads = 0"));
    assert!(e.message.contains("threads"), "{e}");

    let custom = GOOD.replace(local, "id = \"custom\"");
    let e = err(&custom);
    assert!(e.message.contains("needs `path`"), "{e}");
    let e = err(&custom.replace("id = \"custom\"", "id = \"custom\"\npath = \"m\""));
    assert!(e.message.contains("needs `dimensions`"), "{e}");
    assert!(parse(&custom.replace(
        "id = \"custom\"",
        "id = \"custom\"\npath = \"m\"\ndimensions = 768"
    ))
    .is_ok());

    // Local-only keys on a Bedrock model are refused by name.
    let bedrock = GOOD
        .replace("provider = \"local\"", "provider = \"bedrock\"")
        .replace(
            local,
            "id = \"amazon.titan-embed-text-v2:0\"\nquery_prefix = \"q: \"",
        );
    let e = err(&bedrock);
    assert!(
        e.message
            .contains("`query_prefix` applies only to local and OpenAI-compatible models"),
        "{e}"
    );
}
