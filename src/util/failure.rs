//! Ground floor: why a row failed. Every layer that gives up on a row (sources, prepare,
//! dispatch, jobs) names the reason with a [`FailureKind`]; the dead-letter file, the summary's
//! `failures_by_kind` and the service-failure rule read it. One enum instead of strings, so a
//! misspelt kind is a compile error and the rule that stops a run is a `match`, not a string
//! comparison.
//!
//! The text of each kind ([`FailureKind::as_str`]) is part of embedpipe's output (the JSONL
//! `kind` field, the summary keys): it never changes.

use super::retry::ErrorClass;
use serde::{Serialize, Serializer};

/// The step name of rows that failed before any embed step: unreadable rows and repeated ids.
pub const READ_STEP: &str = "read";

/// Why a row was dead-lettered. Each variant is the CamelCase of its text, except
/// [`FailureKind::Call`] (the error class's own text) and [`FailureKind::UnknownRejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    // Reading the source.
    /// A CSV record with the wrong field count, or a quote left open.
    MalformedRow,
    /// A CSV value that does not parse as its column's type.
    BadValue,
    /// A null, empty or whitespace-only id.
    MissingId,
    /// An id that is no stable key (a float, or a value that cannot be read as text).
    BadId,
    /// An id the source had earlier, or (append) the table has already.
    DuplicateId,
    /// An image-folder file whose content is not PNG, JPEG, GIF or WebP.
    NotAnImage,
    /// An image-folder file whose header cannot be read.
    CorruptImage,
    /// An image-folder file over `max_image_bytes`.
    TooLarge,
    /// A file that cannot be stat'ed, read or walked.
    Unreadable,

    // Preparing and checking an input (the wire pre-flight and the image check).
    EmptyInput,
    WrongModality,
    InputTooLong,
    UnsupportedImageFormat,
    /// Over the model's bytes, body or pixel limit.
    ImageTooLarge,
    /// An image that does not decode (or is cut short).
    UnreadableImage,

    // Model calls.
    /// A call failed (after its retries) with this class; also a local model's failure
    /// (`model_error`). Its text is the class's.
    Call(ErrorClass),

    // Media inputs and async jobs.
    BadMediaUri,
    /// A local media file that cannot be read (or is missing), or an `s3://` object whose head
    /// failed.
    MediaUnreadable,
    /// An `s3://` media object that does not exist.
    MediaNotFound,
    UnsupportedMedia,
    /// The upload of a local media file to the staging prefix failed.
    StagingFailed,
    /// The job's model input could not be built.
    Request,
    /// The job ledger could not be written.
    Ledger,
    JobFailed,
    JobTimeout,
    /// A finished job's result files could not be read or parsed.
    JobResults,
    /// A record of a batch inference job that the service answered with an error.
    BatchRecord,
    /// A batch inference job that ended without results (Failed, Stopped, Expired): the
    /// service's or the account's trouble (role, bucket, quota), so it stops an overwrite from
    /// committing a table without its rows; the next run submits them again.
    BatchJobFailed,

    /// A pre-flight rejection code of the wire crate that this enum does not name: the wire
    /// crate hands codes over as `&'static str` and cannot depend on this one, so a code it adds
    /// later could be unknown here. Kept as it is, so the dead letter still says what the wire
    /// crate said. Made only by [`FailureKind::from_wire`]; never a service failure.
    UnknownRejection(&'static str),
}

impl FailureKind {
    /// Every named kind (all but [`FailureKind::UnknownRejection`]).
    pub const ALL: &[FailureKind] = &[
        Self::MalformedRow,
        Self::BadValue,
        Self::MissingId,
        Self::BadId,
        Self::DuplicateId,
        Self::NotAnImage,
        Self::CorruptImage,
        Self::TooLarge,
        Self::Unreadable,
        Self::EmptyInput,
        Self::WrongModality,
        Self::InputTooLong,
        Self::UnsupportedImageFormat,
        Self::ImageTooLarge,
        Self::UnreadableImage,
        Self::Call(ErrorClass::Throttled),
        Self::Call(ErrorClass::ModelNotReady),
        Self::Call(ErrorClass::ServerError),
        Self::Call(ErrorClass::Timeout),
        Self::Call(ErrorClass::Network),
        Self::Call(ErrorClass::Validation),
        Self::Call(ErrorClass::AccessDenied),
        Self::Call(ErrorClass::Credentials),
        Self::Call(ErrorClass::NotFound),
        Self::Call(ErrorClass::QuotaExceeded),
        Self::Call(ErrorClass::ModelError),
        Self::Call(ErrorClass::Mismatch),
        Self::Call(ErrorClass::Other),
        Self::BadMediaUri,
        Self::MediaUnreadable,
        Self::MediaNotFound,
        Self::UnsupportedMedia,
        Self::StagingFailed,
        Self::Request,
        Self::Ledger,
        Self::JobFailed,
        Self::JobTimeout,
        Self::JobResults,
        Self::BatchRecord,
        Self::BatchJobFailed,
    ];

    /// The kind's text in dead letters and summaries.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MalformedRow => "malformed_row",
            Self::BadValue => "bad_value",
            Self::MissingId => "missing_id",
            Self::BadId => "bad_id",
            Self::DuplicateId => "duplicate_id",
            Self::NotAnImage => "not_an_image",
            Self::CorruptImage => "corrupt_image",
            Self::TooLarge => "too_large",
            Self::Unreadable => "unreadable",
            Self::EmptyInput => "empty_input",
            Self::WrongModality => "wrong_modality",
            Self::InputTooLong => "input_too_long",
            Self::UnsupportedImageFormat => "unsupported_image_format",
            Self::ImageTooLarge => "image_too_large",
            Self::UnreadableImage => "unreadable_image",
            Self::Call(class) => class.as_str(),
            Self::BadMediaUri => "bad_media_uri",
            Self::MediaUnreadable => "media_unreadable",
            Self::MediaNotFound => "media_not_found",
            Self::UnsupportedMedia => "unsupported_media",
            Self::StagingFailed => "staging_failed",
            Self::Request => "request",
            Self::Ledger => "ledger",
            Self::JobFailed => "job_failed",
            Self::JobTimeout => "job_timeout",
            Self::JobResults => "job_results",
            Self::BatchRecord => "batch_record",
            Self::BatchJobFailed => "batch_job_failed",
            Self::UnknownRejection(code) => code,
        }
    }

    /// The named kind whose text is `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// The kind of a wire pre-flight rejection code (`embedpipe_wire::Rejection`'s first half;
    /// also what the pipeline's image check returns through it). Every code the wire crate has
    /// today is named; one it adds later stays as it is ([`FailureKind::UnknownRejection`]).
    pub fn from_wire(code: &'static str) -> Self {
        Self::parse(code).unwrap_or(Self::UnknownRejection(code))
    }

    /// Whether the service (or the way to it) failed, not the row's input: the service-level
    /// error classes past their retries, what stops InvokeModel at once but async jobs only per
    /// row (access, credentials, unknown model), and the media route's own staging in S3 and
    /// its ledger. A run stops once more than `max_service_failures` rows failed so.
    pub fn is_service_level(&self) -> bool {
        match self {
            Self::Call(class) => {
                ErrorClass::SERVICE_LEVEL.contains(class)
                    || matches!(
                        class,
                        ErrorClass::AccessDenied | ErrorClass::Credentials | ErrorClass::NotFound
                    )
            }
            Self::StagingFailed | Self::Ledger | Self::BatchJobFailed => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serialised as its text (`"empty_input"`), as dead letters have always carried it.
impl Serialize for FailureKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why one row failed, and in which step (`read` before any step): the first failure of a row,
/// which its dead letter reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFailure {
    pub step: String,
    pub kind: FailureKind,
    pub message: String,
}

impl RowFailure {
    pub fn new(step: impl Into<String>, kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            kind,
            message: message.into(),
        }
    }

    /// A failure before any embed step (step [`READ_STEP`]).
    pub fn read(kind: FailureKind, message: impl Into<String>) -> Self {
        Self::new(READ_STEP, kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for k in FailureKind::ALL {
            assert!(seen.insert(k.as_str()), "{k} twice");
            assert_eq!(FailureKind::parse(k.as_str()), Some(*k));
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(
                serde_json::to_string(k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert_eq!(FailureKind::parse("\0skipped"), None);
    }

    #[test]
    fn wire_codes_are_named_and_unknown_ones_kept() {
        for (code, kind) in [
            ("wrong_modality", FailureKind::WrongModality),
            (
                "unsupported_image_format",
                FailureKind::UnsupportedImageFormat,
            ),
            ("image_too_large", FailureKind::ImageTooLarge),
            ("empty_input", FailureKind::EmptyInput),
            ("input_too_long", FailureKind::InputTooLong),
            ("unreadable_image", FailureKind::UnreadableImage),
        ] {
            assert_eq!(FailureKind::from_wire(code), kind);
        }
        let new = FailureKind::from_wire("too_many_frames");
        assert_eq!(new, FailureKind::UnknownRejection("too_many_frames"));
        assert_eq!(new.as_str(), "too_many_frames");
        assert!(!new.is_service_level());
    }

    #[test]
    fn service_level_kinds_are_the_rule_of_the_run() {
        let service: Vec<&str> = FailureKind::ALL
            .iter()
            .filter(|k| k.is_service_level())
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            service,
            [
                "throttled",
                "model_not_ready",
                "server_error",
                "timeout",
                "network",
                "access_denied",
                "credentials",
                "not_found",
                "quota_exceeded",
                "other",
                "staging_failed",
                "ledger",
                "batch_job_failed"
            ]
        );
    }
}
