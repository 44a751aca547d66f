//! The local model against an independent reference (tests/fixtures/minilm_reference.py).

mod common;

use embedpipe::engines::catalogue::Variant;
use embedpipe::engines::local::LocalModel;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The numpy reference (tests/fixtures/minilm_reference.py): sentences, vectors, token counts.
fn reference() -> serde_json::Value {
    let path = common::repo().join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sentences(fixture: &serde_json::Value) -> Vec<&str> {
    let all = fixture["sentences"].as_array().unwrap();
    all.iter().map(|s| s.as_str().unwrap()).collect()
}

fn vectors(fixture: &serde_json::Value) -> Vec<Vec<f32>> {
    let all = fixture["vectors"].as_array().unwrap();
    all.iter()
        .map(|v| {
            let v = v.as_array().unwrap();
            v.iter().map(|x| x.as_f64().unwrap() as f32).collect()
        })
        .collect()
}

#[test]
fn local_model_matches_reference() {
    common::ensure_model();
    let fixture = reference();
    let sentences = sentences(&fixture);
    let expected = vectors(&fixture);
    let model = LocalModel::catalogue("all-MiniLM-L6-v2", Variant::Fp32, None).unwrap();
    assert_eq!(model.dimension(), 384);

    // All at once (padded to the longest, so masking matters) and one by one must both agree.
    let batch = model.embed_blocking(&sentences).unwrap();
    let token_counts: u64 = fixture["token_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(
        batch.tokens, token_counts,
        "same tokenisation, including truncation at 256"
    );
    for (i, want) in expected.iter().enumerate() {
        let got = &batch.vectors[i * 384..(i + 1) * 384];
        let c = cosine(got, want);
        assert!(c >= 0.9999, "sentence {i} ({:?}): cosine {c}", sentences[i]);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        let single = model.embed_blocking(&[sentences[i]]).unwrap();
        assert!(cosine(&single.vectors, want) >= 0.999, "sentence {i} alone");
    }
}

#[test]
fn similar_sentences_are_closer_than_unrelated_ones() {
    common::ensure_model();
    let model = LocalModel::catalogue("all-MiniLM-L6-v2", Variant::Fp32, None).unwrap();
    let e = model
        .embed_blocking(&[
            "A cat sits on the mat.",
            "A kitten is sitting on a rug.",
            "Quarterly earnings beat expectations.",
        ])
        .unwrap();
    let v = |i: usize| &e.vectors[i * 384..(i + 1) * 384];
    assert!(cosine(v(0), v(1)) > cosine(v(0), v(2)) + 0.2);
}

#[test]
fn a_huge_field_is_cut_to_what_the_model_reads() {
    common::ensure_model();
    let model = LocalModel::catalogue("all-MiniLM-L6-v2", Variant::Fp32, None).unwrap();
    let words = "The telescope observed a distant galaxy, rich in dust and young stars. ";
    let huge = words.repeat(5 * 1024 * 1024 / words.len());
    // Only a bounded prefix is tokenized, whatever the field's size (memory per input).
    let prefix = model.readable_prefix(&huge).unwrap();
    assert!(
        prefix.len() <= 64 * 1024,
        "prefix of {} bytes",
        prefix.len()
    );
    // ... and it gives exactly the vector of the text the model reads (its first 256 tokens).
    let first_words: String = huge.split(' ').take(400).collect::<Vec<_>>().join(" ");
    let a = model.embed_blocking(&[huge.as_str()]).unwrap();
    let b = model.embed_blocking(&[first_words.as_str()]).unwrap();
    assert_eq!(a.tokens, 256);
    assert!(
        cosine(&a.vectors, &b.vectors) > 0.999_999,
        "{}",
        cosine(&a.vectors, &b.vectors)
    );
}

/// The quantized export (`variant = "int8"`, from PyPI): the same tokens, vectors close to the
/// reference (not equal: it is chosen explicitly, as a different vector space).
#[test]
fn int8_variant_reads_the_same_tokens_and_stays_close_to_the_reference() {
    common::ensure_model();
    let fixture = reference();
    let sentences = sentences(&fixture);
    let int8 = LocalModel::catalogue("all-MiniLM-L6-v2", Variant::Int8, Some(2)).unwrap();
    let fp32 = LocalModel::catalogue("all-MiniLM-L6-v2", Variant::Fp32, Some(2)).unwrap();
    let a = int8.embed_blocking(&sentences).unwrap();
    let b = fp32.embed_blocking(&sentences).unwrap();
    assert_eq!(a.tokens, b.tokens);
    let mut exact = true;
    for (i, want) in vectors(&fixture).iter().enumerate() {
        let got = &a.vectors[i * 384..(i + 1) * 384];
        let c = cosine(got, want);
        assert!(c >= 0.99, "sentence {i}: int8 cosine {c}");
        exact &= c > 0.999_999;
    }
    assert!(
        !exact,
        "the int8 model gave fp32's vectors: it was not loaded"
    );
}

/// A retrieval model's prefix counts against its limit: the counter sees what the model reads.
#[test]
fn the_token_counter_counts_the_prefix_the_model_reads() {
    use embedpipe::util::tokens::TokenCounter;
    common::ensure_model();
    let dir = embedpipe::engines::files::locate(&embedpipe::engines::files::Wanted {
        spec: embedpipe::engines::catalogue::CATALOGUE[0].spec,
        variant: Variant::Fp32,
        path: None,
    })
    .unwrap()
    .dir;
    let tokenizer = embedpipe::engines::onnx::load_tokenizer(&dir).unwrap();
    let plain = embedpipe::engines::onnx::TokenizerCounter::new(tokenizer.clone(), "", "m", 256);
    let prefixed =
        embedpipe::engines::onnx::TokenizerCounter::new(tokenizer, "passage: ", "m", 256);
    let text = "The telescope observed a distant galaxy.";
    assert_eq!(plain.count(text), 9, "[CLS], 7 word pieces, [SEP]");
    assert_eq!(prefixed.count(text), 11, "and `passage`, `:`");
}
