//! The [`Codec`] trait, one implementation per family (in [`crate::families`]), and the generic
//! entry points the pipeline calls: they do the checks every family shares and ask the spec's
//! codec for the rest, so callers never name a family.

use crate::spec::ModelSpec;
use crate::vocab::{
    wire_err, Image, Input, MediaRef, Modality, ParseError, Parsed, Rejection, Segment, Truncate,
    Usage, WireError,
};
use crate::Params;
use serde_json::Value;

/// A family's wire format and quirks. Implementations are stateless (a flag for the variant at
/// most) and live in `families/`; a [`ModelSpec`] points at its family's codec.
pub trait Codec: Send + Sync + std::fmt::Debug {
    /// The InvokeModel body for `inputs` (all of one kind; [`build_request`] has checked their
    /// number against `max_inputs_per_call`).
    fn build_request(
        &self,
        spec: &ModelSpec,
        params: &Params,
        inputs: &[Input<'_>],
    ) -> Result<Value, WireError>;

    /// Parses an InvokeModel response body (the family picks the fast float reader or
    /// serde_json). [`parse_response`] checks the vector count and dimensions afterwards.
    fn parse_response(
        &self,
        spec: &ModelSpec,
        params: &Params,
        body: &[u8],
    ) -> Result<Parsed, WireError>;

    /// Checks a parsed answer against what was asked, beyond count and dimension (which
    /// [`parse_response`] checks for every family). Default: nothing more.
    fn check_answer(&self, params: &Params, parsed: &Parsed) -> Result<(), ParseError> {
        let _ = (params, parsed);
        Ok(())
    }

    /// The `modelInput` of StartAsyncInvoke for one media file.
    fn build_async(
        &self,
        spec: &ModelSpec,
        params: &Params,
        media: &MediaRef<'_>,
    ) -> Result<Value, WireError> {
        let _ = (params, media);
        wire_err(format!("{} has no async invoke route", spec.id))
    }

    /// The parameters for embedding a search query against vectors made with `params` (the
    /// query-side input type where the family has one). Default: the same parameters.
    fn query_params(&self, params: &Params) -> Params {
        params.clone()
    }

    /// The billable units of one successful call. `pixels` gives an image's pixel count when
    /// its header can be read (the wire layer decodes no images). Default: [`billed_usage`].
    fn usage(
        &self,
        inputs: &[Input<'_>],
        parsed: &Parsed,
        pixels: &dyn Fn(&Image<'_>) -> Option<u64>,
    ) -> Usage {
        let _ = pixels;
        billed_usage(inputs, parsed)
    }

    /// Where a finished async job's results are, in its output folder; `None` without an async
    /// route.
    fn async_results(&self) -> Option<AsyncResults> {
        None
    }

    /// Reads an [`AsyncResults::Manifest`] file: the result files it lists, as (embedding kind,
    /// S3 URI), or why the job produced none.
    fn parse_async_manifest(&self, body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
        let _ = body;
        wire_err("the model's async jobs list no result files")
    }

    /// Reads one result file of an async job: its segments, and how many were skipped (failed
    /// segments). `kind` is the manifest's embedding kind (empty for
    /// [`AsyncResults::Segments`]).
    fn parse_async_segments(
        &self,
        kind: &str,
        body: &[u8],
    ) -> Result<(Vec<Segment>, usize), WireError> {
        let _ = (kind, body);
        wire_err("the model has no async results")
    }
}

/// How a family's async job lays out its results in the job's output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncResults {
    /// This file holds every segment: read it with [`Codec::parse_async_segments`] (kind `""`).
    Segments(&'static str),
    /// This file lists the result files ([`Codec::parse_async_manifest`]); each is read with
    /// [`Codec::parse_async_segments`] under its kind.
    Manifest(&'static str),
}

/// Builds the InvokeModel JSON body for `inputs` (all of one kind, at most
/// `max_inputs_per_call`).
pub fn build_request(
    spec: &ModelSpec,
    params: &Params,
    inputs: &[Input<'_>],
) -> Result<Value, WireError> {
    if inputs.is_empty() || inputs.len() > spec.max_inputs_per_call {
        return wire_err(format!(
            "{} takes 1 to {} inputs per call, got {}",
            spec.id,
            spec.max_inputs_per_call,
            inputs.len()
        ));
    }
    spec.codec.build_request(spec, params, inputs)
}

/// Parses a response body for a call of `n` inputs. A body that is not the format is
/// [`ParseError::Unusable`]; vectors of another dimension (or what the family's
/// [`Codec::check_answer`] refuses) are [`ParseError::Mismatch`].
pub fn parse_response(
    spec: &ModelSpec,
    params: &Params,
    body: &[u8],
    n: usize,
) -> Result<Parsed, ParseError> {
    let parsed = spec.codec.parse_response(spec, params, body)?;
    if parsed.vectors.len() != n {
        return Err(ParseError::Unusable(WireError(format!(
            "{} returned {} vectors for {} inputs",
            spec.id,
            parsed.vectors.len(),
            n
        ))));
    }
    if let Some(v) = parsed.vectors.iter().find(|v| v.len() != params.dimension) {
        return Err(ParseError::Mismatch(format!(
            "{} returned {}-dimensional vectors, the pipeline expects {}",
            spec.id,
            v.len(),
            params.dimension
        )));
    }
    spec.codec.check_answer(params, &parsed)?;
    Ok(parsed)
}

/// The `modelInput` of StartAsyncInvoke for one media file.
pub fn build_async(
    spec: &ModelSpec,
    params: &Params,
    media: &MediaRef<'_>,
) -> Result<Value, WireError> {
    spec.codec.build_async(spec, params, media)
}

/// The billable units of one successful call; `pixels` counts an image's pixels (see
/// [`Codec::usage`]; [`unknown_pixels`] when none can be read).
pub fn usage(
    spec: &ModelSpec,
    inputs: &[Input<'_>],
    parsed: &Parsed,
    pixels: &dyn Fn(&Image<'_>) -> Option<u64>,
) -> Usage {
    spec.codec.usage(inputs, parsed, pixels)
}

/// A pixel counter that knows no image's size (families that bill by pixels assume the largest).
pub fn unknown_pixels(_: &Image<'_>) -> Option<u64> {
    None
}

/// What every family bills: the reported tokens (or a client-side estimate of the texts') and
/// one image per image input.
pub fn billed_usage(inputs: &[Input<'_>], parsed: &Parsed) -> Usage {
    let mut u = Usage::default();
    match parsed.input_tokens {
        Some(t) => u.input_tokens = t,
        None => {
            u.input_tokens = inputs
                .iter()
                .filter_map(|i| i.text())
                .map(estimate_tokens)
                .sum();
            u.tokens_estimated = u.input_tokens > 0;
        }
    }
    u.images = inputs.iter().filter(|i| i.image().is_some()).count() as u64;
    u
}

/// Client-side token estimate for services that return no count (≈ 4 characters per token).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// L2-normalises in place (zero vectors stay zero).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Checks one input against the model's limits before anything is sent. Returns the text to send
/// when it had to be cut (the truncation policy allows it), or the reason to dead-letter it.
/// `check_image` runs last on an image that passed every other check: the pipeline's pixel and
/// decode check (it decodes: for images, call this on rayon).
pub fn preflight(
    spec: &ModelSpec,
    params: &Params,
    input: &Input<'_>,
    check_image: impl Fn(&ModelSpec, &Image<'_>) -> Result<(), Rejection>,
) -> Result<Option<String>, Rejection> {
    let mut cut = None;
    if let Some(text) = input.text() {
        cut = check_text(spec, params, text)?;
    }
    if let Some(img) = input.image() {
        if !spec.modalities.contains(&Modality::Image) {
            return Err((
                "wrong_modality",
                format!("{} does not take images", spec.id),
            ));
        }
        let allowed = spec.limits.image_formats;
        if !allowed.contains(&img.format) {
            let names: Vec<&str> = allowed.iter().map(|f| f.as_str()).collect();
            return Err((
                "unsupported_image_format",
                format!(
                    "{} images are not accepted by {}; it takes {}",
                    img.format.as_str(),
                    spec.id,
                    names.join(", ")
                ),
            ));
        }
        if let Some(max) = spec.limits.max_image_bytes {
            if img.bytes.len() as u64 > max {
                return Err((
                    "image_too_large",
                    format!(
                        "the image has {} bytes, over the {max}-byte limit of {}",
                        img.bytes.len(),
                        spec.id
                    ),
                ));
            }
        }
        if img.bytes.len().div_ceil(3) * 4 > spec.limits.max_body_bytes {
            return Err((
                "image_too_large",
                format!(
                    "the image is too large for one request ({} bytes after base64; the limit is {})",
                    img.bytes.len().div_ceil(3) * 4,
                    spec.limits.max_body_bytes
                ),
            ));
        }
        check_image(spec, img)?;
    }
    Ok(cut)
}

/// The text half of [`preflight`]: modality, emptiness and the character limit.
fn check_text(spec: &ModelSpec, params: &Params, text: &str) -> Result<Option<String>, Rejection> {
    if !spec.modalities.contains(&Modality::Text) {
        return Err(("wrong_modality", format!("{} does not take text", spec.id)));
    }
    if text.trim().is_empty() {
        return Err(("empty_input", "the text is empty".into()));
    }
    let Some(max) = spec.limits.max_chars else {
        return Ok(None);
    };
    let n = text.chars().count();
    if n <= max {
        return Ok(None);
    }
    Ok(Some(match params.truncation() {
        Truncate::None => {
            return Err((
                "input_too_long",
                format!(
                    "the text has {n} characters, over the {max}-character limit of {}; \
                     set `truncate` in its [[model]] table to cut it instead",
                    spec.id
                ),
            ))
        }
        Truncate::End => text.chars().take(max).collect(),
        Truncate::Start => text.chars().skip(n - max).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::{cohere, marengo, nova, titan_text};

    #[test]
    fn usage_uses_reported_tokens_or_estimates() {
        let parsed = Parsed {
            input_tokens: Some(9),
            ..Default::default()
        };
        let u = usage(
            &titan_text::V2,
            &[Input::Text("abcdefgh")],
            &parsed,
            &unknown_pixels,
        );
        assert_eq!((u.input_tokens, u.tokens_estimated), (9, false));
        let u = usage(
            &nova::SPEC,
            &[Input::Text("abcdefgh")],
            &Parsed::default(),
            &unknown_pixels,
        );
        assert_eq!((u.input_tokens, u.tokens_estimated), (2, true));
        let u = usage(
            &marengo::V3_0,
            &[Input::Text("abc")],
            &Parsed::default(),
            &unknown_pixels,
        );
        assert_eq!(u.queries, 1);
    }

    #[test]
    fn queries_use_the_query_side_input_type() {
        let p = Params::defaults(&cohere::V4);
        assert_eq!(p.input_type.as_deref(), Some("search_document"));
        let q = p.for_query(&cohere::V4);
        assert_eq!(q.input_type.as_deref(), Some("search_query"));
        assert_eq!(q.dimension, p.dimension);
        let n = Params::defaults(&nova::SPEC).for_query(&nova::SPEC);
        assert_eq!(n.input_type.as_deref(), Some("GENERIC_RETRIEVAL"));
        let mut c = Params::defaults(&cohere::V3_ENGLISH);
        c.input_type = Some("clustering".into());
        assert_eq!(
            c.for_query(&cohere::V3_ENGLISH).input_type.as_deref(),
            Some("clustering")
        );
    }
}
