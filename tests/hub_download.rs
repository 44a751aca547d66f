//! The Hub downloader against a local server that answers as huggingface.co does: `resolve/`
//! HEADs with ETags, the LFS file redirected to a CDN path, ranges, and faults on demand.

mod common;

use common::hub_server::{sha256_hex, Faults, HubServer, ServedFile, ServedRepo};
use embedpipe::engines::hub::{cached_snapshot, Hub, HubFile};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

const REPO: &str = "org/tiny-model";
const REPO_FOLDER: &str = "models--org--tiny-model";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const CONFIG: &[u8] = br#"{"hidden_size": 8, "num_layers": 1}"#;
/// The git blob id the Hub sends as the ETag of a small (non-LFS) file (the downloader checks it:
/// SHA-1 of `blob <len>\0` and the content).
const CONFIG_ETAG: &str = "1ffc7f3986d8a1c3578718febcf64a4f2ca52d7c";
/// The git id of the LFS pointer: the Hub sends it as ETag, but the blob is named by the sha256.
const POINTER_ETAG: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d";
const MODEL_PATH: &str = "onnx/model.onnx";
const MODEL_SIZE: usize = 300_000;
const TOKEN: &str = "hf_secret123";

fn model_bytes() -> Vec<u8> {
    (0..MODEL_SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn both_files(model_sha256: Option<&str>) -> [HubFile<'_>; 2] {
    [
        HubFile {
            path: "config.json",
            sha256: None,
        },
        HubFile {
            path: MODEL_PATH,
            sha256: model_sha256,
        },
    ]
}

/// The Hub stand-in serving [`REPO`] at [`COMMIT`]: `config.json` in git, the model in LFS.
fn start(faults: Faults) -> HubServer {
    let files = vec![
        ServedFile::git("config.json", CONFIG).with_etag(CONFIG_ETAG),
        ServedFile::lfs(MODEL_PATH, model_bytes()).with_etag(POINTER_ETAG),
    ];
    HubServer::start(vec![ServedRepo::new(REPO, COMMIT, files)], faults)
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join(REPO_FOLDER)
}

/// Names in `blobs/`, sorted (leftover `.incomplete` or staging files would show here).
fn blob_names(cache: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(repo_dir(cache).join("blobs")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether anything (even a dangling link) is at `path`.
fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[tokio::test]
async fn downloads_into_the_hf_layout_then_reuses_it_without_a_request() {
    let server = start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(&server.endpoint(), None, cache.path().to_owned()).unwrap();
    let model = model_bytes();
    let sha = sha256_hex(&model);
    let names = ["config.json", MODEL_PATH];
    assert_eq!(cached_snapshot(cache.path(), REPO, COMMIT, &names), None);

    let snapshot = hub
        .download(REPO, COMMIT, &both_files(Some(&sha)))
        .await
        .unwrap();

    assert_eq!(
        snapshot,
        repo_dir(cache.path()).join("snapshots").join(COMMIT)
    );
    assert_eq!(std::fs::read(snapshot.join("config.json")).unwrap(), CONFIG);
    assert_eq!(std::fs::read(snapshot.join(MODEL_PATH)).unwrap(), model);
    // Blobs are named by X-Linked-Etag (LFS) or ETag (git id), and nothing else is left there.
    let mut expected_blobs = vec![sha.clone(), CONFIG_ETAG.to_owned()];
    expected_blobs.sort();
    assert_eq!(blob_names(cache.path()), expected_blobs);
    if cfg!(unix) {
        let model_link = std::fs::read_link(snapshot.join(MODEL_PATH)).unwrap();
        assert_eq!(model_link, Path::new("../../../blobs").join(&sha));
        let config_link = std::fs::read_link(snapshot.join("config.json")).unwrap();
        assert_eq!(config_link, Path::new("../../blobs").join(CONFIG_ETAG));
    }
    // The LFS bytes came from the redirect's target, once.
    assert_eq!(server.cdn_gets().len(), 1);
    assert_eq!(
        cached_snapshot(cache.path(), REPO, COMMIT, &names),
        Some(snapshot.clone())
    );

    let before = server.requests().len();
    let again = hub
        .download(REPO, COMMIT, &both_files(Some(&sha)))
        .await
        .unwrap();
    assert_eq!(again, snapshot);
    let after = server.requests();
    assert_eq!(
        after.len(),
        before,
        "a verified snapshot needs no request: {:?}",
        &after[before..]
    );
}

#[tokio::test]
async fn a_cut_download_resumes_with_a_range_request() {
    let server = start(Faults {
        cut_first_lfs_get: true,
        ..Faults::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(&server.endpoint(), None, cache.path().to_owned()).unwrap();

    let snapshot = hub.download(REPO, COMMIT, &both_files(None)).await.unwrap();

    assert_eq!(
        std::fs::read(snapshot.join(MODEL_PATH)).unwrap(),
        model_bytes()
    );
    let gets = server.cdn_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    let resumed_at: Option<usize> = gets[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
    assert!(
        resumed_at.is_some_and(|n| n > 0 && n <= MODEL_SIZE / 2),
        "{gets:?}"
    );
    // Starting over would send 1.5x the file; resuming sends each byte about once.
    let sent: usize = gets.iter().map(|r| r.body_bytes).sum();
    assert!(
        sent * 4 < MODEL_SIZE * 5,
        "{sent} bytes sent for a {MODEL_SIZE}-byte file"
    );
    assert!(blob_names(cache.path())
        .iter()
        .all(|n| !n.ends_with(".incomplete")));
}

#[tokio::test]
async fn a_partial_file_from_an_earlier_run_is_resumed() {
    let server = start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let model = model_bytes();
    let sha = sha256_hex(&model);
    let blobs = repo_dir(cache.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.incomplete")), &model[..100_000]).unwrap();
    let hub = Hub::new(&server.endpoint(), None, cache.path().to_owned()).unwrap();

    let snapshot = hub.download(REPO, COMMIT, &both_files(None)).await.unwrap();

    assert_eq!(std::fs::read(snapshot.join(MODEL_PATH)).unwrap(), model);
    let gets = server.cdn_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(gets[0].body_bytes, MODEL_SIZE - 100_000);
}

#[tokio::test]
async fn corrupt_content_is_refused_and_leaves_nothing_behind() {
    let server = start(Faults {
        corrupt_lfs: true,
        ..Faults::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(&server.endpoint(), None, cache.path().to_owned()).unwrap();
    let sha = sha256_hex(&model_bytes());

    let error = hub
        .download(REPO, COMMIT, &both_files(None))
        .await
        .unwrap_err();

    let message = format!("{error:#}");
    assert!(message.contains("sha256"), "{message}");
    assert!(message.contains(MODEL_PATH), "{message}");
    let snapshot = repo_dir(cache.path()).join("snapshots").join(COMMIT);
    assert!(!present(&snapshot.join(MODEL_PATH)));
    assert!(!present(&repo_dir(cache.path()).join("blobs").join(&sha)));
    assert_eq!(blob_names(cache.path()), vec![CONFIG_ETAG.to_owned()]);
    let names = ["config.json", MODEL_PATH];
    assert_eq!(cached_snapshot(cache.path(), REPO, COMMIT, &names), None);
}

#[tokio::test]
async fn a_private_repo_needs_the_token_which_never_shows() {
    let server = start(Faults {
        token: Some(TOKEN),
        ..Faults::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let files = both_files(None);

    let anonymous = Hub::new(&server.endpoint(), None, cache.path().to_owned()).unwrap();
    let error = anonymous.download(REPO, COMMIT, &files).await.unwrap_err();
    assert!(format!("{error:#}").contains("HF_TOKEN"), "{error:#}");

    let wrong = Hub::new(
        &server.endpoint(),
        Some("hf_wrong999".to_owned()),
        cache.path().to_owned(),
    )
    .unwrap();
    let error = wrong.download(REPO, COMMIT, &files).await.unwrap_err();
    let message = format!("{error:#} {error:?}");
    assert!(message.contains("HF_TOKEN"), "{message}");
    assert!(!message.contains("hf_wrong999"), "{message}");

    let hub = Hub::new(
        &server.endpoint(),
        Some(TOKEN.to_owned()),
        cache.path().to_owned(),
    )
    .unwrap();
    let snapshot = hub.download(REPO, COMMIT, &files).await.unwrap();
    assert_eq!(
        std::fs::read(snapshot.join(MODEL_PATH)).unwrap(),
        model_bytes()
    );
    let bearer = format!("Bearer {TOKEN}");
    let gets = server.cdn_gets();
    assert!(gets
        .iter()
        .all(|r| r.authorization.as_deref() == Some(bearer.as_str())));

    assert!(!format!("{hub:?}").contains(TOKEN), "{hub:?}");
    let missing = [HubFile {
        path: "missing.bin",
        sha256: None,
    }];
    let error = hub.download(REPO, COMMIT, &missing).await.unwrap_err();
    let message = format!("{error:#} {error:?}");
    assert!(message.contains("has no file missing.bin"), "{message}");
    assert!(!message.contains(TOKEN), "{message}");
}

#[tokio::test]
async fn a_pinned_sha256_that_differs_is_an_error_and_nothing_enters_the_snapshot() {
    let server = start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(&server.endpoint(), None, cache.path().to_owned()).unwrap();
    let served = sha256_hex(&model_bytes());
    let pinned = "ab".repeat(32);

    let error = hub
        .download(REPO, COMMIT, &both_files(Some(&pinned)))
        .await
        .unwrap_err();

    let message = format!("{error:#}");
    for part in [REPO, MODEL_PATH, "sha256", pinned.as_str(), served.as_str()] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    let snapshot = repo_dir(cache.path()).join("snapshots").join(COMMIT);
    assert!(!present(&snapshot.join(MODEL_PATH)));
    assert_eq!(blob_names(cache.path()), vec![CONFIG_ETAG.to_owned()]);
}

#[tokio::test]
async fn an_unreachable_hub_names_hf_endpoint() {
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(&format!("http://{closed}"), None, cache.path().to_owned()).unwrap();

    let error = hub
        .download(REPO, COMMIT, &both_files(None))
        .await
        .unwrap_err();

    let message = format!("{error:#}");
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("HF_ENDPOINT"), "{message}");
}

#[tokio::test]
async fn names_that_would_leave_the_cache_or_move_are_refused_before_any_request() {
    let server = start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(&server.endpoint(), None, cache.path().to_owned()).unwrap();
    let escaping = [HubFile {
        path: "../../outside",
        sha256: None,
    }];

    assert!(hub
        .download("../org", COMMIT, &both_files(None))
        .await
        .is_err());
    assert!(hub.download(REPO, "main", &both_files(None)).await.is_err());
    assert!(hub.download(REPO, COMMIT, &escaping).await.is_err());

    assert!(server.requests().is_empty());
    assert!(!present(&cache.path().join("outside")));
}
