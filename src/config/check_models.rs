//! The `[[model]]` and `[[quota]]` checks that need no model registry and no data: unique
//! model names, and every per-model key that is not checked against the model's spec — async
//! route keys, connection and retry keys, quota groups and prices, keys only Bedrock (or only
//! local) models take. The checks against the spec (id, dimensions, batch size, family
//! parameters, inference profile) are the resolve layer's, run here through [`SpecChecks`] at
//! their places.

use super::{did_you_mean, ConfigError, ModelConfig, Pipeline, Provider, SpecChecks};
use std::collections::HashSet;
use std::ops::Range;
use toml::Spanned;

impl Pipeline {
    fn check_quotas(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for q in &self.file.quotas {
            let g = q.get_ref();
            if !names.insert(g.name.get_ref().as_str()) {
                return Err(self.error(
                    g.name.span(),
                    format!("quota group `{}` is declared twice", g.name.get_ref()),
                ));
            }
            if g.requests_per_minute.is_none() && g.tokens_per_minute.is_none() {
                return Err(self
                    .error(
                        q.span(),
                        format!("quota group `{}` sets no limit", g.name.get_ref()),
                    )
                    .with_help("set requests_per_minute, tokens_per_minute or both"));
            }
            self.check_rates(&g.requests_per_minute, &g.tokens_per_minute)?;
        }
        Ok(())
    }

    /// Requests and tokens per minute, when set, are at least one.
    fn check_rates(
        &self,
        requests: &Option<Spanned<u32>>,
        tokens: &Option<Spanned<u32>>,
    ) -> Result<(), ConfigError> {
        match [requests, tokens]
            .into_iter()
            .flatten()
            .find(|r| *r.get_ref() == 0)
        {
            Some(r) => Err(self.error(r.span(), "a rate limit must be at least 1 per minute")),
            None => Ok(()),
        }
    }

    pub(super) fn check_models(&self, specs: &dyn SpecChecks) -> Result<(), ConfigError> {
        self.check_quotas()?;
        let mut names = HashSet::new();
        for m in &self.file.models {
            let cfg = m.get_ref();
            if !names.insert(cfg.name.get_ref().as_str()) {
                return Err(self.error(
                    cfg.name.span(),
                    format!("model name `{}` is used twice", cfg.name.get_ref()),
                ));
            }
            // Id, dimensions and batch size; from here the provider is the spec's.
            specs.model_id(self, cfg)?;
            self.check_model_params(cfg, specs)?;
            let provider = *cfg.provider.get_ref();
            if provider != Provider::Local {
                for (key, span) in [
                    ("path", cfg.path.as_ref().map(|s| s.span())),
                    ("download", cfg.download.as_ref().map(|s| s.span())),
                    ("variant", cfg.variant.as_ref().map(|s| s.span())),
                    ("pooling", cfg.pooling.as_ref().map(|s| s.span())),
                    ("threads", cfg.threads.as_ref().map(|s| s.span())),
                ] {
                    if let Some(span) = span {
                        return Err(
                            self.error(span, format!("`{key}` applies only to local models"))
                        );
                    }
                }
            }
            if provider == Provider::Bedrock {
                for (key, span) in [
                    ("query_prefix", cfg.query_prefix.as_ref().map(|s| s.span())),
                    (
                        "document_prefix",
                        cfg.document_prefix.as_ref().map(|s| s.span()),
                    ),
                ] {
                    if let Some(span) = span {
                        return Err(self
                            .error(span, format!("`{key}` applies only to local and OpenAI-compatible models"))
                            .with_help("Bedrock models take `input_type` / `purpose` for queries and documents"));
                    }
                }
            }
            if provider != Provider::OpenAi {
                if let Some((key, span)) = openai_only_keys(cfg).next() {
                    return Err(self
                        .error(
                            span,
                            format!("`{key}` applies only to OpenAI-compatible models"),
                        )
                        .with_help(
                            "set provider = \"openai\" for a server speaking POST /v1/embeddings",
                        ));
                }
            }
        }
        Ok(())
    }

    /// An OpenAI-compatible model: where the server is, its key and headers from the
    /// environment, the vector size, the encoding and the limits; no Bedrock-only or S3 keys.
    fn check_openai_keys(&self, cfg: &ModelConfig) -> Result<(), ConfigError> {
        let Some(url) = &cfg.base_url else {
            return Err(self
                .error(cfg.provider.span(), "an OpenAI-compatible model needs `base_url`")
                .with_help("the server's URL up to /v1, e.g. base_url = \"http://localhost:4000/v1\" (a LiteLLM proxy), \"http://localhost:8080/v1\" (TEI), \"http://localhost:11434/v1\" (Ollama), \"https://api.openai.com/v1\""));
        };
        if let Err(why) = check_base_url(&url.get_ref().to_string()) {
            return Err(self
                .error(url.span(), format!("`base_url` {why}"))
                .with_help("give the URL up to /v1, e.g. \"http://localhost:4000/v1\"; embedpipe adds /embeddings"));
        }
        match &cfg.dimensions {
            None => {
                return Err(self
                    .error(cfg.id.span(), "an OpenAI-compatible model needs `dimensions`")
                    .with_help("the size of the server's vectors, e.g. dimensions = 1536 (text-embedding-3-small), 768 (nomic-embed-text), 384 (bge-small); every answer is checked against it"))
            }
            Some(d) if !(1..=65_536).contains(d.get_ref()) => {
                return Err(self.error(d.span(), "dimensions must be between 1 and 65536"))
            }
            Some(_) => {}
        }
        if let Some(f) = &cfg.encoding_format {
            if !["float", "base64"].contains(&f.get_ref().as_str()) {
                return Err(self
                    .error(f.span(), format!("unknown encoding_format `{}`", f.get_ref()))
                    .with_help("`float` (the default) or `base64` (smaller answers; OpenAI, TEI, vLLM and Ollama honour it)"));
            }
        }
        if let Some(k) = &cfg.api_key_env {
            let name = k.get_ref();
            if name.starts_with("sk-") || name.len() > 128 || !is_env_name(name) {
                return Err(self
                    .error(k.span(), "`api_key_env` names an environment variable; this is not a variable name")
                    .with_help("never put the key itself in the file: export OPENAI_API_KEY=... and write api_key_env = \"OPENAI_API_KEY\""));
            }
        }
        if let Some(h) = &cfg.headers_env {
            for (header, var) in h.get_ref() {
                if header.is_empty()
                    || !header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(
                        self.error(h.span(), format!("`{header}` is not an HTTP header name"))
                    );
                }
                if header.eq_ignore_ascii_case("authorization") && cfg.api_key_env.is_some() {
                    return Err(
                        self.error(h.span(), "`Authorization` is set by `api_key_env` already")
                    );
                }
                if !is_env_name(var) {
                    return Err(self
                        .error(h.span(), format!("header `{header}`: `{var}` is not an environment variable name"))
                        .with_help("headers_env maps a header name to the environment variable holding its value: { \"x-litellm-api-key\" = \"LITELLM_KEY\" }"));
                }
            }
        }
        if let Some(b) = &cfg.batch_size {
            if !(1..=2048).contains(b.get_ref()) {
                return Err(self.error(
                    b.span(),
                    "batch_size must be between 1 and 2048 (OpenAI's most inputs per request)",
                ));
            }
        }
        if let Some(t) = &cfg.max_input_tokens {
            if *t.get_ref() == 0 {
                return Err(self.error(t.span(), "max_input_tokens must be at least 1"));
            }
        }
        if let Some(t) = &cfg.max_request_tokens {
            if *t.get_ref() == 0 {
                return Err(self.error(t.span(), "max_request_tokens must be at least 1"));
            }
        }
        let bedrock_only = [
            ("region", cfg.region.as_ref().map(|s| s.span())),
            ("endpoint_url", cfg.endpoint_url.as_ref().map(|s| s.span())),
        ]
        .into_iter()
        .chain(async_route_keys(cfg))
        .chain(batch_keys(cfg));
        if let Some((key, Some(span))) = bedrock_only.into_iter().find(|(_, s)| s.is_some()) {
            let help = if key == "endpoint_url" {
                "an OpenAI-compatible server is reached at `base_url`"
            } else {
                "OpenAI-compatible servers take text through POST /v1/embeddings only"
            };
            return Err(self
                .error(span, format!("`{key}` applies only to Bedrock models"))
                .with_help(help));
        }
        Ok(())
    }

    /// Every per-model key, in a fixed order: async route keys, segment lengths and family
    /// parameters (against the spec), connection and retry keys, the quota group, prices, keys
    /// only Bedrock models take, and the inference profile a sync call may need (against the
    /// spec).
    fn check_model_params(
        &self,
        cfg: &ModelConfig,
        specs: &dyn SpecChecks,
    ) -> Result<(), ConfigError> {
        self.check_async_keys(cfg)?;
        specs.model_params(self, cfg)?;
        self.check_connection_keys(cfg)?;
        self.check_quota_reference(cfg)?;
        self.check_prices(cfg)?;
        match *cfg.provider.get_ref() {
            Provider::Local => {
                self.check_no_bedrock_keys(cfg)?;
                self.check_local_keys(cfg)?;
            }
            Provider::OpenAi => self.check_openai_keys(cfg)?,
            Provider::Bedrock => self.check_batch_keys(cfg)?,
        }
        specs.inference_profile(self, cfg)
    }

    /// Async invoke (video/audio): the bucket owner, S3 locations, jobs in flight and timings.
    fn check_async_keys(&self, cfg: &ModelConfig) -> Result<(), ConfigError> {
        if let Some(o) = &cfg.bucket_owner {
            if o.get_ref().len() != 12 || !o.get_ref().bytes().all(|b| b.is_ascii_digit()) {
                return Err(self.error(o.span(), "bucket_owner is a 12-digit AWS account id"));
            }
        }
        for (key, uri) in [
            ("output_s3_uri", &cfg.output_s3_uri),
            ("staging_s3_uri", &cfg.staging_s3_uri),
        ] {
            if let Some(u) = uri {
                if let Err(e) = crate::util::S3Uri::parse(&u.get_ref().to_string()) {
                    return Err(self
                        .error(u.span(), format!("`{key}`: {e}"))
                        .with_help("write it as s3://<bucket>/<prefix>"));
                }
            }
        }
        if let Some(m) = &cfg.max_jobs {
            if !(1..=1000).contains(m.get_ref()) {
                return Err(self.error(m.span(), "max_jobs must be between 1 and 1000"));
            }
        }
        for (key, v, lo, hi) in [
            (
                "job_timeout_secs",
                &cfg.job_timeout_secs,
                0.0,
                7.0 * 86400.0,
            ),
            ("poll_secs", &cfg.poll_secs, 0.0, 3600.0),
        ] {
            if let Some(v) = v {
                if !(*v.get_ref() > lo && *v.get_ref() <= hi) {
                    return Err(self.error(
                        v.span(),
                        format!("{key} must be above {lo} and at most {hi}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Connection, concurrency, rate limits and retries of the model's calls.
    fn check_connection_keys(&self, cfg: &ModelConfig) -> Result<(), ConfigError> {
        if let Some(t) = &cfg.timeout_secs {
            if !(*t.get_ref() > 0.0 && *t.get_ref() <= 3600.0) {
                return Err(self.error(
                    t.span(),
                    "timeout_secs must be more than 0 and at most 3600 (an hour)",
                ));
            }
        }
        for (key, url) in [
            ("endpoint_url", &cfg.endpoint_url),
            ("s3_endpoint_url", &cfg.s3_endpoint_url),
        ] {
            if let Some(u) = url {
                if let Err(why) = check_endpoint_url(u.get_ref()) {
                    return Err(self
                        .error(u.span(), format!("`{key}` {why}"))
                        .with_help("give the scheme, host and port only, e.g. \"https://bedrock-runtime.us-east-1.amazonaws.com\" or \"http://127.0.0.1:4566\" (the emulator)"));
                }
            }
        }
        if let Some(c) = &cfg.concurrency {
            if *c.get_ref() == 0 || *c.get_ref() > 1024 {
                return Err(self.error(c.span(), "concurrency must be between 1 and 1024"));
            }
        }
        self.check_rates(&cfg.requests_per_minute, &cfg.tokens_per_minute)?;
        if let Some(a) = &cfg.max_attempts {
            if *a.get_ref() == 0 || *a.get_ref() > 100 {
                return Err(self.error(a.span(), "max_attempts must be between 1 and 100"));
            }
        }
        if let Some(d) = &cfg.retry_deadline_secs {
            if !(*d.get_ref() > 0.0 && *d.get_ref() <= 86_400.0) {
                return Err(self.error(
                    d.span(),
                    "retry_deadline_secs must be more than 0 and at most 86400 (a day)",
                ));
            }
        }
        if let Some(l) = &cfg.linger_ms {
            if *l.get_ref() > 60_000 {
                return Err(self.error(l.span(), "linger_ms must be at most 60000 (a minute)"));
            }
        }
        Ok(())
    }

    /// `quota = "name"` must name a declared `[[quota]]` group.
    fn check_quota_reference(&self, cfg: &ModelConfig) -> Result<(), ConfigError> {
        if let Some(q) = &cfg.quota {
            let names = self
                .file
                .quotas
                .iter()
                .map(|g| g.get_ref().name.get_ref().as_str());
            if !names.clone().any(|n| n == q.get_ref()) {
                let mut help = String::new();
                if let Some(best) = did_you_mean(q.get_ref(), names.clone()) {
                    help.push_str(&format!("did you mean `{best}`? "));
                }
                let known: Vec<&str> = names.collect();
                help.push_str(&if known.is_empty() {
                    format!(
                        "declare it: [[quota]] name = \"{}\" requests_per_minute = ...",
                        q.get_ref()
                    )
                } else {
                    format!("declared quota groups: {}", known.join(", "))
                });
                return Err(self
                    .error(q.span(), format!("unknown quota group `{}`", q.get_ref()))
                    .with_help(help));
            }
        }
        Ok(())
    }

    /// Batch inference: a role and an S3 prefix, record counts within the service's limits; the
    /// batch keys only with `invoke = "batch"`.
    fn check_batch_keys(&self, cfg: &ModelConfig) -> Result<(), ConfigError> {
        let batch = cfg
            .invoke
            .as_ref()
            .is_some_and(|i| *i.get_ref() == super::Invoke::Batch);
        if !batch {
            if let Some((key, Some(span))) = batch_keys(cfg)
                .into_iter()
                .find(|(k, s)| *k != "invoke" && s.is_some())
            {
                return Err(self
                    .error(span, format!("`{key}` applies only to batch inference"))
                    .with_help("set invoke = \"batch\" in this [[model]] table to send its inputs as batch jobs"));
            }
            return Ok(());
        }
        let Some(role) = &cfg.role_arn else {
            return Err(self
                .error(cfg.invoke.as_ref().map_or(cfg.name.span(), |i| i.span()), "batch inference needs `role_arn`")
                .with_help("the service role Bedrock assumes to read the records and write the results, e.g. role_arn = \"arn:aws:iam::123456789012:role/embedpipe-batch\" (see the README's batch section for its policy)"));
        };
        let role_text = role.get_ref().to_string();
        if !is_role_arn(&role_text) {
            return Err(self
                .error(role.span(), "`role_arn` is not an IAM role ARN")
                .with_help("write it as arn:aws:iam::<12-digit account>:role/<name>"));
        }
        let Some(uri) = &cfg.batch_s3_uri else {
            return Err(self
                .error(cfg.invoke.as_ref().map_or(cfg.name.span(), |i| i.span()), "batch inference needs `batch_s3_uri`")
                .with_help("the S3 prefix for the JSONL records and the jobs' results, e.g. batch_s3_uri = \"s3://my-bucket/embedpipe-batch/\""));
        };
        if let Err(e) = crate::util::S3Uri::parse(&uri.get_ref().to_string()) {
            return Err(self
                .error(uri.span(), format!("`batch_s3_uri`: {e}"))
                .with_help("write it as s3://<bucket>/<prefix>"));
        }
        if let Some(n) = &cfg.records_per_job {
            if !(1..=50_000).contains(n.get_ref()) {
                return Err(self.error(n.span(), "records_per_job must be between 1 and 50000 (Bedrock's default records per job)"));
            }
        }
        if let Some(n) = &cfg.min_records_per_job {
            if *n.get_ref() == 0 {
                return Err(self.error(n.span(), "min_records_per_job must be at least 1"));
            }
        }
        let per_job = cfg
            .records_per_job
            .as_ref()
            .map_or(10_000, |n| *n.get_ref());
        let min = cfg
            .min_records_per_job
            .as_ref()
            .map_or(100, |n| *n.get_ref());
        if per_job < min {
            let span = cfg
                .records_per_job
                .as_ref()
                .or(cfg.min_records_per_job.as_ref())
                .map_or(cfg.name.span(), |n| n.span());
            return Err(self
                .error(span, format!("records_per_job ({per_job}) is below min_records_per_job ({min}): no job could be submitted"))
                .with_help("raise records_per_job (up to 50000) or, if your account's quota allows smaller jobs, lower min_records_per_job"));
        }
        if let Some(h) = &cfg.job_timeout_hours {
            if !(*h.get_ref() > 0.0 && *h.get_ref() <= 24.0 * 14.0) {
                return Err(self.error(
                    h.span(),
                    "job_timeout_hours must be above 0 and at most 336 (two weeks)",
                ));
            }
        }
        Ok(())
    }

    /// Price overrides are zero or positive numbers.
    fn check_prices(&self, cfg: &ModelConfig) -> Result<(), ConfigError> {
        if let Some(p) = &cfg.prices {
            let o = p.get_ref();
            let all = [
                o.per_1k_tokens,
                o.per_image,
                o.per_query,
                o.per_video_second,
                o.per_audio_second,
                o.batch_per_1k_tokens,
                o.batch_per_image,
            ];
            if all.iter().flatten().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(self.error(p.span(), "prices must be zero or positive numbers"));
            }
        }
        Ok(())
    }

    /// A local model takes none of the keys that only Bedrock calls use.
    /// The local engine's own keys: known values only.
    fn check_local_keys(&self, cfg: &ModelConfig) -> Result<(), ConfigError> {
        for (key, value, allowed) in [
            ("variant", &cfg.variant, &["fp32", "int8"][..]),
            ("pooling", &cfg.pooling, &["mean", "cls"][..]),
        ] {
            if let Some(v) = value {
                if !allowed.contains(&v.get_ref().to_ascii_lowercase().as_str()) {
                    return Err(self.error(
                        v.span(),
                        format!("`{key}` is one of {}", allowed.join(", ")),
                    ));
                }
            }
        }
        if let Some(t) = &cfg.threads {
            if !(1..=512).contains(t.get_ref()) {
                return Err(self.error(t.span(), "threads must be between 1 and 512"));
            }
        }
        let custom = embedpipe_wire::resolve(cfg.id.get_ref())
            .is_some_and(|r| r.spec.id == embedpipe_wire::families::local::CUSTOM.id);
        if custom && cfg.path.is_none() {
            return Err(self
                .error(cfg.id.span(), "a custom local model needs `path`")
                .with_help("point `path` at a folder with the ONNX export and tokenizer.json, and set `dimensions`"));
        }
        if custom && cfg.dimensions.is_none() {
            return Err(self
                .error(cfg.id.span(), "a custom local model needs `dimensions`")
                .with_help("the size of the model's vectors, e.g. `dimensions = 768`; it is checked when the model loads"));
        }
        Ok(())
    }

    fn check_no_bedrock_keys(&self, cfg: &ModelConfig) -> Result<(), ConfigError> {
        let bedrock_only = [
            ("region", cfg.region.as_ref().map(|s| s.span())),
            ("endpoint_url", cfg.endpoint_url.as_ref().map(|s| s.span())),
            ("timeout_secs", cfg.timeout_secs.as_ref().map(|s| s.span())),
            ("concurrency", cfg.concurrency.as_ref().map(|s| s.span())),
            ("max_attempts", cfg.max_attempts.as_ref().map(|s| s.span())),
            (
                "retry_deadline_secs",
                cfg.retry_deadline_secs.as_ref().map(|s| s.span()),
            ),
            ("linger_ms", cfg.linger_ms.as_ref().map(|s| s.span())),
            ("quota", cfg.quota.as_ref().map(|s| s.span())),
            (
                "requests_per_minute",
                cfg.requests_per_minute.as_ref().map(|s| s.span()),
            ),
            (
                "tokens_per_minute",
                cfg.tokens_per_minute.as_ref().map(|s| s.span()),
            ),
            ("prices", cfg.prices.as_ref().map(|s| s.span())),
        ];
        let mut bedrock_only = bedrock_only
            .into_iter()
            .chain(async_route_keys(cfg))
            .chain(batch_keys(cfg));
        if let Some((key, Some(span))) = bedrock_only.find(|(_, s)| s.is_some()) {
            return Err(self.error(span, format!("`{key}` applies only to Bedrock models")));
        }
        Ok(())
    }
}

/// `[("key", its span when set), ...]` for the named `ModelConfig` fields.
macro_rules! key_spans {
    ($cfg:expr; $($key:ident),+ $(,)?) => {
        [$((stringify!($key), $cfg.$key.as_ref().map(|s| s.span()))),+]
    };
}

/// The keys of Bedrock's async route (media jobs in S3), with their places when set.
fn async_route_keys(cfg: &ModelConfig) -> [(&'static str, Option<Range<usize>>); 7] {
    key_spans!(cfg; output_s3_uri, staging_s3_uri, s3_endpoint_url, max_jobs, job_timeout_secs,
        poll_secs, segment_seconds)
}

/// The keys of Bedrock batch inference, with their places when set.
fn batch_keys(cfg: &ModelConfig) -> [(&'static str, Option<Range<usize>>); 6] {
    key_spans!(cfg; invoke, role_arn, batch_s3_uri, records_per_job, min_records_per_job,
        job_timeout_hours)
}

/// `arn:aws[-partition]:iam::<12 digits>:role/<name>`.
fn is_role_arn(s: &str) -> bool {
    let mut parts = s.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty())
}

/// The keys only OpenAI-compatible models take, those set in `cfg`.
fn openai_only_keys(cfg: &ModelConfig) -> impl Iterator<Item = (&'static str, Range<usize>)> + '_ {
    key_spans!(cfg; base_url, api_key_env, headers_env, encoding_format, send_dimensions,
        max_input_tokens, max_request_tokens)
    .into_iter()
    .filter_map(|(k, s)| s.map(|s| (k, s)))
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An OpenAI-compatible base URL: `http(s)://host[:port][/path]`, no query and no credentials;
/// `/embeddings` is added to it. (The messages do not repeat the URL: `${VAR}`s in it are
/// expanded, and may hold a secret.)
pub(super) fn check_base_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "is not a URL".to_string())?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("uses `{other}://`; only http:// and https:// work")),
        None => return Err("has no scheme (http:// or https://)".into()),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("holds credentials (user:password@); give the key through api_key_env".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if uri.query().is_some() {
        return Err("has a query (?...); keys go in api_key_env or headers_env".into());
    }
    if uri.path().trim_end_matches('/').ends_with("/embeddings") {
        return Err("ends in /embeddings; embedpipe adds it".into());
    }
    Ok(())
}

/// An endpoint override must be a plain `http(s)://host[:port]` URL: anything else fails every
/// call of the run (a service failure), so it is refused before any.
pub(super) fn check_endpoint_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("uses `{other}://`; only http:// and https:// work")),
        None => return Err(format!("`{url}` has no scheme (http:// or https://)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{url}` has a path or query; the SDK adds the operation's own path"
        ));
    }
    Ok(())
}
