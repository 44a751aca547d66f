//! Downloads model files from the Hugging Face Hub into the cache layout `huggingface_hub` uses
//! (`models--org--name/{blobs,snapshots}`), so Python tools and embedpipe share the files.
//! Downloads resume after a cut, are verified before they enter a snapshot, and never hold a
//! whole file in memory.

use anyhow::{anyhow, bail, ensure, Context, Result};
use reqwest::header::{HeaderMap, ACCEPT_ENCODING, RANGE};
use reqwest::{redirect, RequestBuilder, StatusCode, Url};
use sha2::{Digest, Sha256};
use std::fmt;
#[cfg(unix)]
use std::os::unix::fs::symlink;
#[cfg(windows)]
use std::os::windows::fs::symlink_file as symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Attempts per file within one `download` call; each one resumes where the last stopped.
const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);
/// Same-host redirects followed on HEAD before the metadata (renamed repos).
const MAX_HOPS: usize = 5;

/// One file of a repository snapshot, with its sha256 when the catalogue pins it.
#[derive(Debug, Clone, Copy)]
pub struct HubFile<'a> {
    pub path: &'a str,
    pub sha256: Option<&'a str>,
}

/// A Hub endpoint with its credentials and the local cache it fills.
pub struct Hub {
    endpoint: Url,
    token: Option<String>,
    cache: PathBuf,
    /// HEAD must see the redirect itself: its headers carry the LFS sha256 and the CDN location.
    head_client: reqwest::Client,
    /// GET follows redirects; reqwest drops `Authorization` when one leaves the host.
    get_client: reqwest::Client,
}

/// Written by hand so the token can never reach a log line or an error.
impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache", &self.cache)
            .finish()
    }
}

/// What a HEAD on `resolve/` says about a file.
struct Remote {
    /// Blob name: the sha256 for LFS files, the git object id otherwise.
    etag: String,
    size: Option<u64>,
    /// Where the bytes are (the CDN for LFS files).
    url: Url,
}

/// The outcome of one GET attempt that did not fail for good.
enum Attempt {
    Done,
    Retry(anyhow::Error),
}

impl Hub {
    /// `HF_ENDPOINT` (default https://huggingface.co); the token from `HF_TOKEN`, then
    /// `HUGGING_FACE_HUB_TOKEN`, then the file `huggingface-cli login` writes; the cache as
    /// [`default_cache`] finds it.
    pub fn from_env() -> Result<Hub> {
        let endpoint = non_empty_var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let cache = default_cache().context(
            "no Hugging Face cache folder: set HF_HUB_CACHE or HF_HOME (no home folder found)",
        )?;
        Hub::new(&endpoint, token_from_env(), cache)
    }

    /// An explicit endpoint (a mirror, a test server), token and cache folder.
    pub fn new(endpoint: &str, token: Option<String>, cache: PathBuf) -> Result<Hub> {
        let endpoint = Url::parse(endpoint)
            .ok()
            .filter(|url| !url.cannot_be_a_base())
            .with_context(|| format!("the Hub endpoint {endpoint:?} (HF_ENDPOINT) is not a URL"))?;
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("embedpipe/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
        };
        Ok(Hub {
            endpoint,
            token: token.filter(|t| !t.is_empty()),
            cache,
            head_client: builder().redirect(redirect::Policy::none()).build()?,
            get_client: builder().build()?,
        })
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// Downloads `files` of `repo` at `revision` (a pinned commit sha) into the cache and returns
    /// the snapshot folder `<cache>/models--<org>--<name>/snapshots/<revision>/`. Files already
    /// present and verified are not downloaded again, nor asked about: a commit never changes.
    pub async fn download(
        &self,
        repo: &str,
        revision: &str,
        files: &[HubFile<'_>],
    ) -> Result<PathBuf> {
        let repo_dir = self.cache.join(repo_folder(repo)?);
        // A branch would need `refs/` and moves under a pinned sha256: the catalogue pins commits.
        ensure!(
            is_commit(revision),
            "revision {revision:?} of {repo} is not a 40-hex commit sha"
        );
        files
            .iter()
            .try_for_each(|file| check_relative(file.path))?;
        let snapshot = repo_dir.join("snapshots").join(revision);
        for file in files {
            if already_verified(&snapshot.join(file.path), file.sha256).await? {
                continue;
            }
            let remote = self.head(repo, revision, file.path).await?;
            let what = format!("{repo} {} at {revision}", file.path);
            self.fetch_blob(&what, &repo_dir, file.sha256, &remote)
                .await?;
            link_into_snapshot(&repo_dir, &snapshot, file.path, &remote.etag).await?;
        }
        tokio::fs::create_dir_all(&snapshot).await?;
        Ok(snapshot)
    }

    /// HEAD without following the CDN redirect: the metadata is on the Hub's own answer.
    async fn head(&self, repo: &str, revision: &str, path: &str) -> Result<Remote> {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("the Hub endpoint {} is not a base URL", self.endpoint))?
            .pop_if_empty()
            .extend(repo.split('/'))
            .push("resolve")
            .push(revision)
            .extend(path.split('/'));
        for _ in 0..MAX_HOPS {
            let request = self.head_client.head(url.as_str());
            let response = self
                .authorize(request, &url)
                .header(ACCEPT_ENCODING, "identity")
                .send()
                .await
                .map_err(|e| self.transport_error(e))?;
            let status = response.status();
            if !status.is_success() && !status.is_redirection() {
                return Err(self.status_error(status, repo, revision, path));
            }
            let headers = response.headers();
            let location = if status.is_redirection() {
                let next = header(headers, "location").and_then(|l| url.join(l).ok());
                Some(next.with_context(|| format!("the Hub redirected {path} of {repo} nowhere"))?)
            } else {
                None
            };
            let linked_etag = header(headers, "x-linked-etag");
            match location {
                // A same-host redirect (renamed repo, cached small file): the metadata is at its
                // end. An LFS answer carries it already, and its target is the bytes.
                Some(next) if linked_etag.is_none() && next.origin() == url.origin() => {
                    url = next;
                    continue;
                }
                _ => {}
            }
            let etag = linked_etag.or_else(|| header(headers, "etag"));
            let Some(etag) = etag.map(normalize_etag) else {
                bail!("the Hub sent no ETag for {path} of {repo}");
            };
            ensure!(
                is_safe_name(etag),
                "the Hub sent an unusable ETag {etag:?} for {path} of {repo}"
            );
            // A redirect's Content-Length is that of the redirect's own body.
            let length = match location {
                Some(_) => None,
                None => header(headers, "content-length"),
            };
            let size = header(headers, "x-linked-size")
                .or(length)
                .and_then(|s| s.parse().ok());
            return Ok(Remote {
                etag: etag.to_owned(),
                size,
                url: location.unwrap_or(url),
            });
        }
        bail!("too many redirects from the Hub for {path} of {repo}")
    }

    /// Puts the verified file at `blobs/<etag>`, downloading (and resuming) only when missing.
    /// `what` names the file in messages.
    async fn fetch_blob(
        &self,
        what: &str,
        repo_dir: &Path,
        pinned: Option<&str>,
        remote: &Remote,
    ) -> Result<()> {
        let blobs = repo_dir.join("blobs");
        let blob = blobs.join(&remote.etag);
        // The pin wins; else an LFS etag is the content's sha256.
        let expected = pinned.or_else(|| is_sha256(&remote.etag).then_some(remote.etag.as_str()));
        if tokio::fs::try_exists(&blob).await? {
            // Blobs are renamed into place only once verified: rehash only against another pin.
            return match expected.filter(|e| !e.eq_ignore_ascii_case(&remote.etag)) {
                Some(pin) => verify(&blob, Some(pin), remote.size, what).await,
                None => Ok(()),
            };
        }
        tokio::fs::create_dir_all(&blobs).await?;
        // One downloader per blob across processes (sharded workers may share a cache volume):
        // the others wait, then find the blob in place.
        // The lock lives where huggingface_hub keeps its own (`<cache>/.locks/<repo>/`).
        let locks = match (repo_dir.parent(), repo_dir.file_name()) {
            (Some(cache), Some(name)) => cache.join(".locks").join(name),
            _ => blobs.clone(),
        };
        tokio::fs::create_dir_all(&locks).await?;
        let _lock = lock_file(locks.join(format!("{}.lock", remote.etag))).await?;
        if tokio::fs::try_exists(&blob).await? {
            return Ok(());
        }
        let partial = blobs.join(format!("{}.incomplete", remote.etag));
        tracing::info!(file = what, bytes = remote.size, "downloading from the Hub");
        let mut attempt = 1;
        loop {
            match self.get_once(remote, &partial, what).await? {
                Attempt::Done => break,
                Attempt::Retry(error) if attempt < ATTEMPTS => {
                    tracing::warn!("{what}: {error:#}; resuming (attempt {})", attempt + 1);
                    tokio::time::sleep(BACKOFF * attempt).await;
                    attempt += 1;
                }
                Attempt::Retry(error) => {
                    return Err(error.context(format!("downloading {what}: gave up")));
                }
            }
        }
        let checked = match expected {
            None if is_git_sha1(&remote.etag) => {
                verify_git_blob(&partial, &remote.etag, what).await
            }
            _ => verify(&partial, expected, remote.size, what).await,
        };
        if let Err(error) = checked {
            tokio::fs::remove_file(&partial).await.ok();
            return Err(error);
        }
        tokio::fs::rename(&partial, &blob).await?;
        Ok(())
    }

    /// One GET into `partial`, continuing from its length with a `Range` request.
    async fn get_once(&self, remote: &Remote, partial: &Path, what: &str) -> Result<Attempt> {
        let mut have = tokio::fs::metadata(partial)
            .await
            .map_or(0, |meta| meta.len());
        if remote.size.is_some_and(|size| have > size) {
            tokio::fs::remove_file(partial).await?;
            have = 0;
        }
        // Complete from an earlier attempt: only the check remains.
        if have > 0 && remote.size == Some(have) {
            return Ok(Attempt::Done);
        }
        let mut request = self
            .authorize(self.get_client.get(remote.url.as_str()), &remote.url)
            .header(ACCEPT_ENCODING, "identity");
        if have > 0 {
            request = request.header(RANGE, format!("bytes={have}-"));
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_connect() => return Err(self.transport_error(e)),
            Err(e) => return Ok(Attempt::Retry(e.into())),
        };
        let resumed = header(response.headers(), "content-range")
            .is_some_and(|range| range.starts_with(&format!("bytes {have}-")));
        let append = match response.status() {
            StatusCode::OK => false,
            StatusCode::PARTIAL_CONTENT if resumed => true,
            // A 416 (complete, or corrupt) or a range from elsewhere: the partial file is no use.
            StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                tokio::fs::remove_file(partial).await.ok();
                let error = anyhow!("the server did not resume at byte {have}; restarting");
                return Ok(Attempt::Retry(error));
            }
            status if status.is_server_error() => {
                return Ok(Attempt::Retry(anyhow!("the server answered {status}")));
            }
            status => bail!("the download server answered {status} for {what}"),
        };
        let mut options = tokio::fs::OpenOptions::new();
        options.create(true);
        if append {
            options.append(true);
        } else {
            options.write(true).truncate(true);
        }
        let mut out = options.open(partial).await?;
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => out.write_all(&bytes).await?,
                Ok(None) => break,
                Err(e) => {
                    out.flush().await?;
                    return Ok(Attempt::Retry(
                        anyhow::Error::new(e).context("connection cut"),
                    ));
                }
            }
        }
        out.flush().await?;
        let written = out.metadata().await?.len();
        match remote.size {
            Some(size) if written < size => Ok(Attempt::Retry(anyhow!(
                "the body ended after {written} of {size} bytes"
            ))),
            _ => Ok(Attempt::Done),
        }
    }

    /// The bearer token, sent only to the Hub's own host (not to a CDN elsewhere).
    fn authorize(&self, request: RequestBuilder, url: &Url) -> RequestBuilder {
        let same_host = url.host_str() == self.endpoint.host_str()
            && url.port_or_known_default() == self.endpoint.port_or_known_default();
        match &self.token {
            Some(token) if same_host => request.bearer_auth(token),
            _ => request,
        }
    }

    fn status_error(
        &self,
        status: StatusCode,
        repo: &str,
        revision: &str,
        path: &str,
    ) -> anyhow::Error {
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if self.token.is_none() => anyhow!(
                "repo {repo} needs a token: set HF_TOKEN (the Hub answered {status}; it answers \
                 the same for a repo that does not exist)"
            ),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => anyhow!(
                "the Hub refused the token for repo {repo} ({status}): check HF_TOKEN, and for a \
                 gated model accept its terms on the Hub"
            ),
            StatusCode::NOT_FOUND => anyhow!("{repo} has no file {path} at revision {revision}"),
            status => anyhow!("the Hub answered {status} for {path} of {repo} at {revision}"),
        }
    }

    fn transport_error(&self, error: reqwest::Error) -> anyhow::Error {
        let unreachable = error.is_connect() || error.is_timeout();
        let error = anyhow::Error::new(error);
        if !unreachable {
            return error.context("request to the Hugging Face Hub failed");
        }
        error.context(format!(
            "the Hugging Face Hub at {} is unreachable: set HF_ENDPOINT to use a mirror; \
             offline, point `path` at a model folder or pre-fill the Hugging Face cache ({})",
            self.endpoint,
            self.cache.display()
        ))
    }
}

/// The snapshot folder of `repo` at `revision` in `cache`, when it holds every one of `files`
/// (no network).
pub fn cached_snapshot(
    cache: &Path,
    repo: &str,
    revision: &str,
    files: &[&str],
) -> Option<PathBuf> {
    let folder = repo_folder(repo).ok().filter(|_| is_commit(revision))?;
    let snapshot = cache.join(folder).join("snapshots").join(revision);
    // `exists` follows links: a dangling one (blob deleted) does not count.
    let complete = snapshot.is_dir()
        && files
            .iter()
            .all(|f| check_relative(f).is_ok() && snapshot.join(f).exists());
    complete.then_some(snapshot)
}

/// The default cache folder: `HF_HUB_CACHE`, then `$HF_HOME/hub`, then
/// `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub` (huggingface_hub's rules).
pub fn default_cache() -> Option<PathBuf> {
    env_path("HF_HUB_CACHE")
        .or_else(|| env_path("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| hf_home().map(|home| home.join("hub")))
}

fn hf_home() -> Option<PathBuf> {
    env_path("HF_HOME").or_else(|| {
        let cache =
            env_path("XDG_CACHE_HOME").or_else(|| dirs::home_dir().map(|h| h.join(".cache")));
        cache.map(|c| c.join("huggingface"))
    })
}

/// `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, then the file `huggingface-cli login` writes.
fn token_from_env() -> Option<String> {
    let file = || env_path("HF_TOKEN_PATH").or_else(|| hf_home().map(|h| h.join("token")));
    let token = non_empty_var("HF_TOKEN")
        .or_else(|| non_empty_var("HUGGING_FACE_HUB_TOKEN"))
        .or_else(|| std::fs::read_to_string(file()?).ok())?;
    Some(token.trim().to_owned()).filter(|t| !t.is_empty())
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether the snapshot holds `local` already, verified. A link named by the pinned sha256 was
/// verified before it was made; anything else under a pin is hashed again.
async fn already_verified(local: &Path, pinned: Option<&str>) -> Result<bool> {
    // Follows the link: a dangling one is not there.
    if !tokio::fs::try_exists(local).await.unwrap_or(false) {
        return Ok(false);
    }
    let Some(pinned) = pinned else {
        return Ok(true);
    };
    let target = tokio::fs::read_link(local).await.ok();
    let blob_name = target
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    if blob_name.is_some_and(|name| name.eq_ignore_ascii_case(pinned)) {
        return Ok(true);
    }
    Ok(sha256_of(local.to_owned())
        .await?
        .eq_ignore_ascii_case(pinned))
}

/// Size first (a cut transfer), then the sha256 when one is known.
async fn verify(path: &Path, sha256: Option<&str>, size: Option<u64>, what: &str) -> Result<()> {
    let len = tokio::fs::metadata(path).await?.len();
    if let Some(size) = size {
        ensure!(
            len == size,
            "{what}: the Hub announced {size} bytes, got {len}"
        );
    }
    if let Some(expected) = sha256 {
        let got = sha256_of(path.to_owned()).await?;
        ensure!(
            got.eq_ignore_ascii_case(expected),
            "sha256 mismatch for {what}: expected {expected}, got {got}"
        );
    }
    Ok(())
}

/// Hashes on the blocking pool: model files run to hundreds of megabytes.
async fn sha256_of(path: PathBuf) -> Result<String> {
    tokio::task::spawn_blocking(move || -> Result<String> {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await?
}

/// `snapshots/<commit>/<path>` → `../…/blobs/<etag>`, staged in `blobs/` and renamed into
/// place (so the snapshot never shows a half-made entry); a copy where symlinks are refused
/// (Windows without developer mode).
async fn link_into_snapshot(
    repo_dir: &Path,
    snapshot: &Path,
    path: &str,
    etag: &str,
) -> Result<()> {
    let local = snapshot.join(path);
    let Some(parent) = local.parent() else {
        bail!("{path:?} is not a file path");
    };
    tokio::fs::create_dir_all(parent).await?;
    // One `..` per folder between the link and the repo folder.
    let depth = Path::new(path).components().count() + 1;
    let target: PathBuf = std::iter::repeat_n("..", depth).collect();
    let target = target.join("blobs").join(etag);
    let blobs = repo_dir.join("blobs");
    let staged = blobs.join(format!("{etag}.{}.linking", std::process::id()));
    tokio::fs::remove_file(&staged).await.ok();
    if symlink(&target, &staged).is_err() {
        tokio::fs::copy(blobs.join(etag), &staged).await?;
    }
    tokio::fs::rename(&staged, &local).await?;
    Ok(())
}

/// `org/name` → `models--org--name`, refusing ids that would step outside the cache.
fn repo_folder(repo: &str) -> Result<String> {
    ensure!(
        repo.split('/').count() <= 2 && check_relative(repo).is_ok(),
        "{repo:?} is not a Hub model id (expected org/name)"
    );
    Ok(format!("models--{}", repo.replace('/', "--")))
}

/// A `/`-separated relative path with no empty, `.` or `..` part: it becomes a local path.
fn check_relative(path: &str) -> Result<()> {
    let ok = path
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'));
    ensure!(ok, "{path:?} is not a relative path inside a repo");
    Ok(())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

/// `W/"abc"` → `abc`.
fn normalize_etag(raw: &str) -> &str {
    raw.trim().trim_start_matches("W/").trim_matches('"')
}

/// Etags become file names: letters, digits, `-` and `_` only.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Holds an exclusive lock on `path` (created if missing) until the returned file is dropped.
async fn lock_file(path: PathBuf) -> Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    })
    .await
    .context("the lock thread stopped")?
}

/// A plain git file's ETag is its git blob id: SHA-1 of `blob <len>\0` and the content.
fn is_git_sha1(etag: &str) -> bool {
    etag.len() == 40 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn verify_git_blob(path: &Path, etag: &str, what: &str) -> Result<()> {
    use sha1::{Digest, Sha1};
    let path = path.to_path_buf();
    let got = tokio::task::spawn_blocking(move || -> Result<String> {
        let len = std::fs::metadata(&path)?.len();
        let mut hasher = Sha1::new();
        hasher.update(format!("blob {len}\0").as_bytes());
        std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .context("the hashing thread stopped")??;
    if !got.eq_ignore_ascii_case(etag) {
        bail!("{what}: git blob id is {got}, the Hub says {etag} (corrupt download)");
    }
    Ok(())
}
