//! Logging on stderr: the tracing subscriber the flags ask for (`-v`, `-vv`, `-q`,
//! `--log-format`, or `EMBEDPIPE_LOG`), writing through [`RedactingStderr`] so credentials never
//! reach the terminal or a log collector.

use super::LogFormat;
use std::sync::Arc;

/// Installs the subscriber (once; a second call changes nothing).
pub(super) fn init(format: LogFormat, verbose: u8, quiet: bool) {
    // The local S3 server of `--emulator` logs what it answers; the client reports it. The AWS
    // credential chain warns once per call about each source it could not use (one per call in
    // flight, many lines each); when none works, the run stops with one error that says where
    // credentials come from, so by default those warnings are left to `-v`.
    let default = if quiet {
        "error,s3s=off,s3s_fs=off"
    } else {
        match verbose {
            0 => "warn,lance=error,aws_config=error,s3s=off,s3s_fs=off,embedpipe=info",
            1 => "warn,lance=error,s3s=off,s3s_fs=off,embedpipe=debug",
            _ => "info,embedpipe=trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMBEDPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr::from_env())
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Log output with credentials taken out: at `-vv` the AWS SDK logs signing details that hold
/// the access key id. Every event is one write, so each is redacted whole.
#[derive(Clone)]
struct RedactingStderr {
    /// Values of the credential variables set in the environment.
    secrets: Arc<Vec<String>>,
}

impl RedactingStderr {
    fn from_env() -> Self {
        let secrets = std::env::vars()
            .filter(|(k, v)| crate::config::is_credential_variable(k) && v.len() >= 8)
            .map(|(_, v)| v)
            .collect();
        Self {
            secrets: Arc::new(secrets),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut clean = crate::config::redact_key_ids(&text);
        for s in self.secrets.iter() {
            if clean.contains(s.as_str()) {
                clean = clean.replace(s.as_str(), "<redacted>");
            }
        }
        std::io::stderr().write_all(clean.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
