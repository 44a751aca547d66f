//! Layer 3, resolve: the `[[model]]` checks that need the model registry — a known id of the
//! model's provider, dimensions and batch sizes the model offers, segment lengths and family
//! parameters against its spec, and the inference profile a sync call may need. Config runs
//! them, through [`crate::config::SpecChecks`], at their places among its own model checks.

use crate::config::{did_you_mean, ConfigError, ModelConfig, Pipeline};
use embedpipe_wire::ModelSpec;
use std::ops::Range;
use toml::Spanned;

/// The spec of a model whose id [`model_id`] has accepted.
fn checked_spec(cfg: &ModelConfig) -> &'static ModelSpec {
    super::registry::spec_for(cfg).expect("model ids are checked first")
}

/// The model's id is one of its provider's, with dimensions and a batch size it offers.
pub(super) fn model_id(p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError> {
    let spec = check_model_id(p, cfg)?;
    // (An OpenAI-compatible model's dimension is the server's: any size, checked on answers.)
    let free_dimension = spec.provider == embedpipe_wire::ProviderKind::OpenAi;
    if let Some(d) = cfg.dimensions.as_ref().filter(|_| !free_dimension) {
        if !spec.dimensions.contains(d.get_ref()) {
            let allowed: Vec<String> = spec.dimensions.iter().map(|d| d.to_string()).collect();
            return Err(p
                .error(
                    d.span(),
                    format!(
                        "`{}` does not produce {}-dimensional vectors",
                        spec.id,
                        d.get_ref()
                    ),
                )
                .with_help(format!("allowed dimensions: {}", allowed.join(", "))));
        }
    }
    if let Some(b) = &cfg.batch_size {
        if *b.get_ref() == 0 || *b.get_ref() > spec.max_inputs_per_call {
            return Err(p.error(
                b.span(),
                format!(
                    "batch_size for `{}` must be between 1 and {}",
                    spec.id, spec.max_inputs_per_call
                ),
            ));
        }
    }
    Ok(())
}

/// The registry entry of the model's id, which must be a model of its provider.
fn check_model_id(p: &Pipeline, cfg: &ModelConfig) -> Result<&'static ModelSpec, ConfigError> {
    if let Some(spec) = super::registry::spec_for(cfg) {
        return Ok(spec);
    }
    if let Some(other) = embedpipe_wire::lookup(cfg.id.get_ref()) {
        return Err(p
            .error(
                cfg.provider.span(),
                format!("`{}` is a {} model", other.id, other.provider.as_str()),
            )
            .with_help(format!("set provider = \"{}\"", other.provider.as_str())));
    }
    let known: Vec<&str> = embedpipe_wire::registry()
        .iter()
        .filter(|s| s.provider == *cfg.provider.get_ref())
        .map(|s| s.id)
        .collect();
    let mut help = String::new();
    if let Some(best) = did_you_mean(cfg.id.get_ref(), known.iter().copied()) {
        help.push_str(&format!("did you mean `{best}`? "));
    }
    help.push_str(&format!(
        "known model ids for this provider: {}; a model behind an OpenAI-compatible server \
         (LiteLLM, TEI, vLLM, Ollama, OpenAI) takes provider = \"openai\" and base_url",
        known.join(", ")
    ));
    Err(p
        .error(
            cfg.id.span(),
            format!("unknown model id `{}`", cfg.id.get_ref()),
        )
        .with_help(help))
}

/// Segment lengths, then family parameters, against the model's spec.
pub(super) fn model_params(p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError> {
    let spec = checked_spec(cfg);
    check_segment_keys(p, cfg, spec)?;
    check_batch_route(p, cfg, spec)?;
    check_family_params(p, cfg, spec)
}

/// `invoke = "batch"` only for the models on AWS's batch inference list.
fn check_batch_route(p: &Pipeline, cfg: &ModelConfig, spec: &ModelSpec) -> Result<(), ConfigError> {
    match &cfg.invoke {
        Some(i) if *i.get_ref() == crate::config::Invoke::Batch && !spec.routes.batch => Err(p
            .error(i.span(), format!("{} has no batch inference route", spec.id))
            .with_help("batch inference takes amazon.titan-embed-text-v2:0 and amazon.nova-2-multimodal-embeddings-v1:0 (AWS's batch list as read for this release); use the on-demand default for this model")),
        _ => Ok(()),
    }
}

/// Segment lengths, within the family's async limits.
fn check_segment_keys(
    p: &Pipeline,
    cfg: &ModelConfig,
    spec: &ModelSpec,
) -> Result<(), ConfigError> {
    if let Some(v) = &cfg.segment_chars {
        let allowed = spec.async_limits.segment_chars;
        if !allowed.is_some_and(|(lo, hi)| (lo..=hi).contains(v.get_ref())) {
            return Err(p.error(
                v.span(),
                "segment_chars applies to Nova (long text) and is between 800 and 50000",
            ));
        }
    }
    if let Some(v) = &cfg.segment_seconds {
        let Some(range) = spec.async_limits.segment_seconds else {
            return Err(p.error(
                v.span(),
                format!(
                    "`segment_seconds` is not a parameter of `{}` (it has no async route)",
                    spec.id
                ),
            ));
        };
        let (lo, hi, whole) = (range.min, range.max, range.whole);
        let x = *v.get_ref();
        if !(lo..=hi).contains(&x) || (whole && x.fract() != 0.0) {
            return Err(p.error(
                v.span(),
                format!(
                    "segment_seconds for `{}` must be {}between {lo} and {hi}",
                    spec.id,
                    if whole { "a whole number " } else { "" }
                ),
            ));
        }
    }
    Ok(())
}

/// Family parameters: only the ones the family has, with its allowed values.
fn check_family_params(
    pipeline: &Pipeline,
    cfg: &ModelConfig,
    spec: &ModelSpec,
) -> Result<(), ConfigError> {
    let known: Vec<&str> = spec.params.iter().map(|p| p.key).collect();
    let list = |v: &[&str]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let strings: [(&str, Option<&Spanned<String>>); 6] = [
        ("input_type", cfg.input_type.as_ref()),
        ("purpose", cfg.purpose.as_ref()),
        ("truncate", cfg.truncate.as_ref()),
        ("detail_level", cfg.detail_level.as_ref()),
        ("embedding_mode", cfg.embedding_mode.as_ref()),
        ("bucket_owner", cfg.bucket_owner.as_ref()),
    ];
    let mut present: Vec<(&str, Range<usize>, Vec<&str>)> = strings
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v.span(), vec![v.get_ref().as_str()])))
        .collect();
    if let Some(t) = &cfg.embedding_types {
        present.push((
            "embedding_types",
            t.span(),
            t.get_ref().iter().map(String::as_str).collect(),
        ));
    }
    if let Some(m) = &cfg.max_tokens {
        present.push(("max_tokens", m.span(), vec![]));
    }
    if let Some(t) = &cfg.embedding_options {
        present.push((
            "embedding_options",
            t.span(),
            t.get_ref().iter().map(String::as_str).collect(),
        ));
    }
    for (key, span, values) in present {
        let Some(p) = spec.param(key) else {
            return Err(pipeline
                .error(span, format!("`{key}` is not a parameter of `{}`", spec.id))
                .with_help(format!("its parameters: {}", list(&known))));
        };
        for v in values {
            if !p.values.is_empty() && !p.values.contains(&v) {
                let mut help = String::new();
                if let Some(best) = did_you_mean(v, p.values.iter().copied()) {
                    help.push_str(&format!("did you mean `{best}`? "));
                }
                help.push_str(&format!("allowed values: {}", p.values.join(", ")));
                return Err(pipeline
                    .error(
                        span,
                        format!("`{v}` is not a valid `{key}` for `{}`", spec.id),
                    )
                    .with_help(help));
            }
        }
    }
    if let Some(t) = &cfg.embedding_types {
        if let Some(other) = t.get_ref().iter().find(|t| *t != "float") {
            return Err(pipeline
                .error(
                    t.span(),
                    format!(
                        "`{other}` embeddings cannot be stored yet: the table holds float vectors"
                    ),
                )
                .with_help(
                    "remove `embedding_types` (float vectors are always requested and stored)",
                ));
        }
    }
    if let Some(m) = &cfg.max_tokens {
        if *m.get_ref() == 0 || *m.get_ref() as usize > spec.max_input_tokens {
            return Err(pipeline.error(
                m.span(),
                format!("max_tokens must be between 1 and {}", spec.max_input_tokens),
            ));
        }
    }
    Ok(())
}

/// A family called through InvokeModel only with an inference profile must be given one,
/// unless only media steps (async invoke, base id) use the model.
pub(super) fn inference_profile(p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError> {
    let spec = checked_spec(cfg);
    // A model only media steps use is called through StartAsyncInvoke (base id) alone.
    let only_async = {
        let mut uses = p
            .file
            .embeds
            .iter()
            .filter(|e| e.get_ref().model.get_ref() == cfg.name.get_ref())
            .peekable();
        uses.peek().is_some() && uses.all(|e| e.get_ref().media.is_some())
    };
    if let Some(r) = embedpipe_wire::resolve(cfg.id.get_ref()) {
        if spec.routes.sync_needs_profile && r.profile.is_none() && !only_async {
            let profiles: Vec<String> = spec
                .profiles
                .iter()
                .map(|p| format!("`{p}{}`", spec.id))
                .collect();
            return Err(p
                .error(
                    cfg.id.span(),
                    format!(
                        "`{}` is called through InvokeModel only with a cross-region inference profile id",
                        spec.id
                    ),
                )
                .with_help(format!("use {} (the profile of your region)", profiles.join(" or "))));
        }
    }
    Ok(())
}
