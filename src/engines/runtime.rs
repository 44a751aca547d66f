//! ONNX Runtime, loaded at run time: finding (or fetching) its shared library and starting the
//! one environment a process may have. Nothing is downloaded at build time.

use super::pypi::{self, Platform};
use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The ONNX Runtime release embedpipe is built against (`ort`'s API level 31).
pub const VERSION: &str = "1.31.1";
/// Names a library to use instead of embedpipe's own copy (`ort`'s own variable).
pub const ENV_DYLIB: &str = "ORT_DYLIB_PATH";

/// The wheel that carries the library. Its `cp311`…`cp314` builds hold the same file, so any
/// Python can download the cp312 one.
const WHEEL: &str = "onnxruntime==1.31.1";
const WHEEL_PLATFORM: Platform<'static> = Platform {
    platform: "manylinux_2_28_x86_64",
    python_version: "3.12",
};
const LIB_IN_WHEEL: &str = "onnxruntime/capi/libonnxruntime.so.1.31.1";
const LIB_NAME: &str = "libonnxruntime.so.1.31.1";
const LIB_SHA256: &str = "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3";

/// Where a system install keeps the library.
const SYSTEM_PATHS: &[&str] = &[
    "/usr/local/lib/libonnxruntime.so",
    "/usr/lib/x86_64-linux-gnu/libonnxruntime.so",
    "/usr/lib/libonnxruntime.so",
];

/// embedpipe's copy of the library.
pub fn pinned_path() -> PathBuf {
    super::files::data_dir()
        .join("runtime")
        .join(format!("onnxruntime-{VERSION}"))
        .join(LIB_NAME)
}

/// The library to load and where it was found: `$ORT_DYLIB_PATH`, embedpipe's verified copy, a
/// system install.
pub fn locate() -> Result<(PathBuf, &'static str)> {
    if let Some(p) = std::env::var_os(ENV_DYLIB) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("${ENV_DYLIB}={} is not a file", p.display());
        }
        return Ok((p, ENV_DYLIB));
    }
    let pinned = pinned_path();
    if pinned.is_file() {
        pypi::verify(&pinned, LIB_SHA256)?;
        return Ok((pinned, "embedpipe data dir"));
    }
    if let Some(p) = SYSTEM_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.is_file() && recent_enough(p))
    {
        return Ok((p.to_path_buf(), "system install"));
    }
    bail!(missing_message())
}

/// A system library is used only when its real file name says 1.31 or newer (an older one
/// would fail ort's version check, and would keep embedpipe from fetching its own).
fn recent_enough(lib: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(lib) else {
        return false;
    };
    let name = real.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut parts = name
        .trim_start_matches("libonnxruntime.so.")
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) >= (1, 31))
}

fn missing_message() -> String {
    format!(
        "ONNX Runtime {VERSION} was not found. Get it with `embedpipe models fetch` (downloads \
         the onnxruntime wheel from PyPI with python3 -m pip), or set ${ENV_DYLIB} to a \
         libonnxruntime.so ≥ 1.31 (e.g. from `pip install onnxruntime`: \
         …/site-packages/onnxruntime/capi/libonnxruntime.so.*). Looked in {} and {} (a system \
         library older than 1.31 is not used)",
        pinned_path().display(),
        SYSTEM_PATHS.join(", ")
    )
}

/// Downloads the library from PyPI into embedpipe's data dir (atomically, verified).
pub fn fetch() -> Result<PathBuf> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!(
            "embedpipe fetches ONNX Runtime for Linux x86_64 only; on this platform install it \
             (`pip install onnxruntime=={VERSION}`) and set ${ENV_DYLIB} to its library"
        );
    }
    let lib = pinned_path();
    if lib.is_file() && pypi::verify(&lib, LIB_SHA256).is_ok() {
        return Ok(lib);
    }
    let dir = lib.parent().context("library path has no folder")?;
    tracing::info!("fetching ONNX Runtime {VERSION} from PyPI ({WHEEL})");
    pypi::fetch_members(
        WHEEL,
        Some(&WHEEL_PLATFORM),
        &[(LIB_IN_WHEEL, LIB_NAME, LIB_SHA256)],
        dir,
        &|_| Ok(()),
    )?;
    Ok(lib)
}

/// The library's path, fetched first when it is missing and `download` allows.
pub fn locate_or_fetch(download: bool) -> Result<(PathBuf, &'static str)> {
    match locate() {
        Ok(found) => Ok(found),
        Err(e) if download && std::env::var_os(ENV_DYLIB).is_none() => {
            let lib = fetch().map_err(|fe| e.context(format!("{fe:#}")))?;
            Ok((lib, "embedpipe data dir"))
        }
        Err(e) => Err(e),
    }
}

/// The process's ONNX Runtime environment, started on first use. A failure is remembered: the
/// library cannot be loaded twice.
pub fn environment(download: bool) -> Result<&'static Environment> {
    static ENV: OnceLock<Environment> = OnceLock::new();
    static START: Mutex<Option<String>> = Mutex::new(None);
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let mut failed = START.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    if let Some(e) = failed.as_ref() {
        bail!("{e}");
    }
    let started = locate_or_fetch(download).and_then(|(lib, origin)| {
        tracing::debug!(lib = %lib.display(), origin, "loading ONNX Runtime");
        start(&lib).with_context(|| format!("loading ONNX Runtime from {}", lib.display()))
    });
    match started {
        Ok(env) => Ok(ENV.get_or_init(|| env)),
        Err(e) => {
            let msg = format!("{e:#}");
            *failed = Some(msg.clone());
            Err(anyhow!(msg))
        }
    }
}

fn start(lib: &Path) -> Result<Environment> {
    let builder = ort::init_from(lib).map_err(|e| anyhow!("{e}"))?;
    builder
        .with_name("embedpipe")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_system_library_of_1_31_or_newer_is_used() {
        let dir = tempfile::tempdir().unwrap();
        for (name, ok) in [
            ("libonnxruntime.so.1.31.1", true),
            ("libonnxruntime.so.1.32.0", true),
            ("libonnxruntime.so.1.19.2", false),
            ("libonnxruntime.so", false),
        ] {
            let real = dir.path().join(name);
            std::fs::write(&real, b"").unwrap();
            let link = dir.path().join(format!("link-{name}"));
            std::os::unix::fs::symlink(&real, &link).unwrap();
            assert_eq!(recent_enough(&link), ok, "{name}");
        }
    }
}
