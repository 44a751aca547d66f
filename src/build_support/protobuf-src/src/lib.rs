//! Drop-in replacement for `protobuf-src` backed by `protoc-bin-vendored`.
use std::path::PathBuf;

/// Path to a `protoc` binary usable from build scripts.
pub fn protoc() -> PathBuf {
    protoc_bin_vendored::protoc_bin_path()
        .expect("protoc-bin-vendored ships no protoc for this platform; set PROTOC to a protoc binary")
}

/// Path to the well-known `.proto` include directory.
pub fn include() -> PathBuf {
    protoc_bin_vendored::include_path()
        .expect("protoc-bin-vendored ships no protobuf includes for this platform")
}
