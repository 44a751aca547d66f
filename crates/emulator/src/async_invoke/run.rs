//! Running a job: wait its duration, read the input from S3, fail it when asked to (test
//! markers, the failure rate), and write the result files its family lays out. Also the
//! segmenting every family's results share.

use super::{media_seconds, Job, Task};
use crate::s3_client::{S3Client, S3Uri};
use crate::settings::Settings;
use crate::vectors;
use std::time::Duration;

/// What a finished job's result files are made from.
pub(crate) struct Finished<'a> {
    pub(crate) task: &'a Task,
    /// The model's base id (seeds the vectors).
    pub(crate) model: &'a str,
    /// The input's bytes.
    pub(crate) media: &'a [u8],
    /// The input's duration in seconds (0 for a text).
    pub(crate) duration: f64,
    /// The job's output URI as submitted.
    pub(crate) output: &'a str,
    /// `<output>/<invocation id>`.
    pub(crate) folder: &'a S3Uri,
}

impl Finished<'_> {
    /// The vector of segment `i` of the embedding kind `kind`.
    pub(crate) fn vector(&self, kind: &str, i: usize) -> Vec<f32> {
        let mut seed = self.media[..self.media.len().min(4096)].to_vec();
        seed.extend_from_slice(format!("{kind}#{i}").as_bytes());
        vectors::bytes(self.model, &seed, self.task.dimension, false)
    }
}

/// Waits the job's duration, reads the input, writes the results; `Err` is the failure message.
pub(super) async fn run_job(settings: &Settings, job: &Job, task: &Task) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(settings.async_job_ms)).await;
    let Some(endpoint) = &settings.s3_endpoint else {
        return Err("the emulator has no S3 endpoint configured (s3_endpoint)".into());
    };
    let s3 = S3Client::connect(endpoint, Duration::from_secs(60)).await;
    let input = S3Uri::parse(&task.input_uri).map_err(|e| e.to_string())?;
    let media = s3.get(&input).await.map_err(|_| {
        format!(
            "Unable to access the input {}: the object does not exist or is not readable.",
            task.input_uri
        )
    })?;
    // Test markers, in the key or at the end of the file.
    let marked = |m: &str| task.input_uri.contains(m) || media.ends_with(m.as_bytes());
    if marked("stall") {
        std::future::pending::<()>().await;
    }
    if marked("poison") {
        return Err("The media could not be processed: INVALID_CONTENT".into());
    }
    if settings.async_failure_rate > 0.0 && fastrand::f64() < settings.async_failure_rate {
        return Err("Internal error while processing the job (injected failure).".into());
    }
    let duration = if task.modality == "text" {
        0.0
    } else {
        media_seconds(&media).ok_or_else(|| {
            format!(
                "The input {} is not a supported {} file.",
                task.input_uri, task.modality
            )
        })?
    };
    let id = job.arn.rsplit('/').next().expect("arn");
    let folder = S3Uri::parse(&job.output)
        .map_err(|e| e.to_string())?
        .join(id);
    let finished = Finished {
        task,
        model: &job.model_id,
        media: &media,
        duration,
        output: &job.output,
        folder: &folder,
    };
    let route = task
        .model
        .service
        .async_route
        .as_ref()
        .expect("a job's family has an async route");
    let files = (route.results)(&finished);
    for (uri, body) in files {
        s3.put_bytes(&uri, body)
            .await
            .map_err(|e| format!("Unable to write results: {e:#}"))?;
    }
    Ok(())
}

/// Text segments of at most `max` characters, cut at whitespace where there is one:
/// (start, end) character positions, end exclusive.
pub(crate) fn text_segments(text: &str, max: usize) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut end = (start + max).min(chars.len());
        if end < chars.len() {
            if let Some(ws) = (start + 1..end).rev().find(|&i| chars[i].is_whitespace()) {
                end = ws + 1;
            }
        }
        out.push((start, end));
        start = end;
    }
    out
}

/// Segment bounds: fixed lengths (the last one shorter), over the whole duration.
pub(crate) fn segments(duration: f64, len: f64) -> Vec<(f64, f64)> {
    let n = (duration / len).ceil().max(1.0) as usize;
    (0..n)
        .map(|i| (i as f64 * len, ((i + 1) as f64 * len).min(duration)))
        .collect()
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_segments_cut_at_whitespace() {
        assert_eq!(text_segments("aaaa bbbb cccc", 10), vec![(0, 10), (10, 14)]);
        assert_eq!(
            text_segments("abcdefghij", 4),
            vec![(0, 4), (4, 8), (8, 10)]
        );
        assert!(text_segments("", 5).is_empty());
    }

    #[test]
    fn fixed_segments_cover_the_duration() {
        assert_eq!(
            segments(12.0, 5.0),
            vec![(0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]
        );
        assert_eq!(segments(0.5, 5.0), vec![(0.0, 0.5)]);
    }
}
