//! A Hugging Face Hub stand-in on loopback, serving the repos a test gives it as huggingface.co
//! does: `resolve/<revision>/<path>` answers HEAD and GET with an ETag and `X-Repo-Commit`; an
//! LFS file is a 302 to a CDN path with `X-Linked-Etag` (its sha256) and `X-Linked-Size`; bytes
//! honour `Range: bytes=N-`; faults on demand. std threads only (no async runtime): it serves
//! clients in this process and child processes alike.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One file of a served repo.
#[derive(Clone)]
pub struct ServedFile {
    /// Path inside the repo (`onnx/model.onnx`).
    pub path: String,
    pub content: Arc<[u8]>,
    /// A git file: its blob id, sent as ETag. An LFS file: its pointer's id, sent as a weak
    /// ETag (the blob is named by the sha256 in `X-Linked-Etag`).
    pub etag: String,
    pub lfs: bool,
}

impl ServedFile {
    /// A small file kept in git (config, tokenizer): served on `resolve/` itself.
    pub fn git(path: &str, content: impl Into<Arc<[u8]>>) -> ServedFile {
        let content: Arc<[u8]> = content.into();
        ServedFile {
            path: path.to_owned(),
            etag: git_id(&content),
            content,
            lfs: false,
        }
    }

    /// A file kept in LFS (weights): `resolve/` redirects to the CDN.
    pub fn lfs(path: &str, content: impl Into<Arc<[u8]>>) -> ServedFile {
        let content: Arc<[u8]> = content.into();
        let pointer = format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
            sha256_hex(&content),
            content.len()
        );
        ServedFile {
            path: path.to_owned(),
            etag: git_id(pointer.as_bytes()),
            content,
            lfs: true,
        }
    }

    /// The same file with a given ETag (for a test that names the blob it expects).
    pub fn with_etag(mut self, etag: &str) -> ServedFile {
        self.etag = etag.to_owned();
        self
    }
}

/// A repo at one revision, with its files.
pub struct ServedRepo {
    /// `org/name`.
    pub repo: String,
    /// The commit sha the files are served at.
    pub revision: String,
    pub files: Vec<ServedFile>,
}

impl ServedRepo {
    pub fn new(repo: &str, revision: &str, files: Vec<ServedFile>) -> ServedRepo {
        ServedRepo {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            files,
        }
    }
}

#[derive(Default, Clone, Copy)]
pub struct Faults {
    /// The first GET of an LFS file's bytes stops after half its body (the connection is closed).
    pub cut_first_lfs_get: bool,
    /// LFS bytes are served with one byte flipped; the headers still give the true sha256.
    pub corrupt_lfs: bool,
    /// Every request without `Authorization: Bearer <token>` is answered 401.
    pub token: Option<&'static str>,
}

/// One request as the server saw it, with the body bytes it wrote back.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub body_bytes: usize,
}

/// A running server; it serves until the test process ends.
pub struct HubServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HubServer {
    /// HTTP/1.1 on 127.0.0.1, a thread per connection, `Connection: close` on every answer.
    pub fn start(repos: Vec<ServedRepo>, faults: Faults) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut files = HashMap::new();
        let mut cdn = HashMap::new();
        for repo in repos {
            for file in repo.files {
                let sha256 = sha256_hex(&file.content);
                if file.lfs {
                    cdn.insert(sha256.clone(), Arc::clone(&file.content));
                }
                let url = format!("/{}/resolve/{}/{}", repo.repo, repo.revision, file.path);
                files.insert(
                    url,
                    Route {
                        revision: repo.revision.clone(),
                        file,
                        sha256,
                    },
                );
            }
        }
        let shared = Arc::new(Shared {
            faults,
            files,
            cdn,
            cut_done: AtomicBool::new(false),
            seen: Arc::clone(&seen),
        });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || shared.handle(stream));
            }
        });
        HubServer { addr, seen }
    }

    /// The value for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// GETs of LFS bytes (the redirects' target).
    pub fn cdn_gets(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/cdn/"))
            .collect()
    }
}

/// A `resolve/` URL's file.
struct Route {
    revision: String,
    file: ServedFile,
    sha256: String,
}

struct Shared {
    faults: Faults,
    /// By `/<repo>/resolve/<revision>/<path>`.
    files: HashMap<String, Route>,
    /// LFS bytes by sha256 (`/cdn/<sha256>`).
    cdn: HashMap<String, Arc<[u8]>>,
    cut_done: AtomicBool,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct Reply {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    /// The body is `bytes[start..]` (a range starts past 0).
    bytes: Arc<[u8]>,
    start: usize,
    /// Send only this much of the body (Content-Length still announces all of it), then close.
    cut_at: Option<usize>,
}

impl Reply {
    fn new(status: &'static str, body: &[u8]) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            bytes: Arc::from(body),
            start: 0,
            cut_at: None,
        }
    }

    fn with(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }

    fn body(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// `bytes`, or the part a `Range: bytes=N-` asks for.
    fn content(bytes: &Arc<[u8]>, range: Option<&str>) -> Reply {
        let start: Option<usize> =
            range.and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
        let total = bytes.len();
        match start {
            None => Reply {
                bytes: Arc::clone(bytes),
                ..Reply::new("200 OK", &[])
            },
            Some(start) if start >= total => Reply::new("416 Range Not Satisfiable", &[])
                .with("Content-Range", format!("bytes */{total}")),
            Some(start) => Reply {
                bytes: Arc::clone(bytes),
                start,
                ..Reply::new("206 Partial Content", &[])
            }
            .with(
                "Content-Range",
                format!("bytes {start}-{}/{total}", total - 1),
            ),
        }
    }
}

impl Shared {
    fn handle(&self, mut stream: TcpStream) {
        let Some((method, path, headers)) = read_request(&stream) else {
            return;
        };
        let range = headers.get("range").cloned();
        let authorization = headers.get("authorization").cloned();
        let reply = self.route(&method, &path, range.as_deref(), authorization.as_deref());
        let full = reply.body();
        let body = match method.as_str() {
            "HEAD" => &[][..],
            _ => &full[..reply.cut_at.unwrap_or(full.len())],
        };
        // Recorded before the answer is written, so the client never outruns the log.
        self.seen.lock().unwrap().push(Seen {
            method,
            path,
            range,
            authorization,
            body_bytes: body.len(),
        });
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            reply.status,
            full.len()
        );
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
        let _ = stream.shutdown(Shutdown::Write);
    }

    fn route(&self, method: &str, path: &str, range: Option<&str>, auth: Option<&str>) -> Reply {
        if let Some(token) = self.faults.token {
            if auth != Some(format!("Bearer {token}").as_str()) {
                return Reply::new("401 Unauthorized", b"Invalid credentials");
            }
        }
        if let Some(route) = self.files.get(path) {
            let file = &route.file;
            let commit = route.revision.clone();
            if !file.lfs {
                return Reply::content(&file.content, range)
                    .with("ETag", format!("\"{}\"", file.etag))
                    .with("X-Repo-Commit", commit);
            }
            let sha = &route.sha256;
            return Reply::new("302 Found", &[])
                .with("Location", format!("/cdn/{sha}"))
                .with("ETag", format!("W/\"{}\"", file.etag))
                .with("X-Linked-Etag", format!("\"{sha}\""))
                .with("X-Linked-Size", file.content.len().to_string())
                .with("X-Repo-Commit", commit);
        }
        let Some(stored) = path.strip_prefix("/cdn/").and_then(|sha| self.cdn.get(sha)) else {
            return Reply::new("404 Not Found", b"Entry not found");
        };
        let bytes: Arc<[u8]> = if self.faults.corrupt_lfs {
            let mut bytes = stored.to_vec();
            let middle = bytes.len() / 3;
            bytes[middle] ^= 0xff;
            Arc::from(bytes)
        } else {
            Arc::clone(stored)
        };
        let mut reply = Reply::content(&bytes, range);
        let cut = method == "GET"
            && self.faults.cut_first_lfs_get
            && !self.cut_done.swap(true, Ordering::SeqCst);
        if cut {
            reply.cut_at = Some(reply.body().len() / 2);
        }
        reply
    }
}

/// Request line and headers (names lowercased); these requests have no body.
fn read_request(stream: &TcpStream) -> Option<(String, String, HashMap<String, String>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        // The blank line (or EOF) ends the headers.
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Some((method, path, headers))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Git's object id of `content` (SHA-1 of `blob <len>\0` and the content): the Hub's ETag of a
/// plain file, which the downloader checks.
fn git_id(content: &[u8]) -> String {
    use sha1::{Digest as _, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(content);
    hex::encode(hasher.finalize())
}
