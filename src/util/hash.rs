//! Ground floor: the content hash that decides whether a row must be embedded again.

/// A stable hash of a model input under a model fingerprint (model id + parameters).
pub fn content_hash(fingerprint: &str, input: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(fingerprint.as_bytes());
    h.update(&[0]);
    h.update(input);
    hex::encode(&h.finalize().as_bytes()[..16])
}
