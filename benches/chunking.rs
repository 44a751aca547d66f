//! Chunking throughput (a bench binary; run with `cargo bench --bench chunking`, release
//! profile).
//!
//! 1. Each strategy on one core: an ~8 MB English-like document (paragraphs of sentences from a
//!    fixed word list, some markdown headings) plus a ~2 MB CJK and emoji mix, split with the
//!    estimate counter at 256 tokens and an overlap of 32, repeated until a second has passed:
//!    MB/s per core and the number of chunks.
//! 2. `split_all` over 64 documents on the rayon pool: aggregate MB/s and the core count.
//!
//! The target is at least 20 MB/s per core for `recursive`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use embedpipe::prepare::chunk::{ChunkStrategy, Chunker, Limit};
use embedpipe::util::tokens::EstimateCounter;

const STRATEGIES: [ChunkStrategy; 4] = [
    ChunkStrategy::Recursive,
    ChunkStrategy::Markdown,
    ChunkStrategy::Sentences,
    ChunkStrategy::Fixed,
];

/// The word list of the English-like text (split at spaces).
const WORDS: &str = "the of and to in is that for it as was with be by on not he this are or \
    his from at which but have an had they you were their one all we can her has there been \
    if more when will would who so no model vector index search pipeline document embedding \
    chunk boundary paragraph sentence throughput tokenizer incremental dataset retrieval \
    semantic 2024 42 e.g. (see above) \"quoted\" well-known state-of-the-art however,";

/// Pieces of the CJK and emoji mix (split at spaces).
const CJK: &str =
    "日本語 の 文章 を 分割 します 検索 ベクトル 索引 モデル 漢字 かな 東京 天気 明日 \
    👍🏽 👨\u{200d}👩\u{200d}👧\u{200d}👦 🇯🇵 é";

/// xorshift64*: deterministic across runs and machines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// English-like markdown of about `bytes` bytes.
fn english(rng: &mut Rng, bytes: usize) -> String {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut s = String::with_capacity(bytes + 1024);
    let mut section = 0;
    while s.len() < bytes {
        if rng.below(12) == 0 {
            section += 1;
            let level = 1 + rng.below(3);
            s.push_str(&"#".repeat(level));
            s.push_str(&format!(" Section {section}\n\n"));
        }
        for k in 0..2 + rng.below(6) {
            if k > 0 {
                s.push(' ');
            }
            let n = 4 + rng.below(20);
            for w in 0..n {
                if w > 0 {
                    s.push(' ');
                }
                let word = words[rng.below(words.len())];
                if w == 0 {
                    let mut c = word.chars();
                    if let Some(first) = c.next() {
                        s.extend(first.to_uppercase());
                        s.push_str(c.as_str());
                    }
                } else {
                    s.push_str(word);
                }
            }
            s.push_str([".", ".", ".", "?", "!"][rng.below(5)]);
        }
        s.push_str("\n\n");
    }
    s
}

/// CJK sentences (no spaces) with emoji, about `bytes` bytes.
fn cjk(rng: &mut Rng, bytes: usize) -> String {
    let pieces: Vec<&str> = CJK.split_whitespace().collect();
    let mut s = String::with_capacity(bytes + 1024);
    while s.len() < bytes {
        for _ in 0..1 + rng.below(5) {
            for _ in 0..3 + rng.below(25) {
                s.push_str(pieces[rng.below(pieces.len())]);
            }
            s.push_str(["。", "！", "？", "。"][rng.below(4)]);
        }
        s.push_str("\n\n");
    }
    s
}

fn chunker(strategy: ChunkStrategy) -> Chunker {
    let limit = Limit {
        counter: Arc::new(EstimateCounter),
        max: 256,
    };
    match Chunker::new(strategy, vec![limit], 32) {
        Ok(c) => c,
        Err(e) => panic!("bench chunker: {e}"),
    }
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn main() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut text = english(&mut rng, 8_000_000);
    text.push_str(&cjk(&mut rng, 2_000_000));
    println!(
        "chunking: {:.1} MB of text, estimate counter, max 256 tokens, overlap 32",
        text.len() as f64 / 1e6
    );
    println!(
        "{:<10} {:>14} {:>10}",
        "strategy", "MB/s per core", "chunks"
    );
    for strategy in STRATEGIES {
        let c = chunker(strategy);
        let start = Instant::now();
        let mut runs = 0;
        let mut chunks = 0;
        while runs == 0 || start.elapsed() < Duration::from_secs(1) {
            chunks = c.split(&text).len();
            runs += 1;
        }
        let rate = mb_per_s(text.len() * runs, start.elapsed());
        println!("{:<10} {:>14.1} {:>10}", strategy.as_str(), rate, chunks);
    }

    let docs: Vec<String> = (0..64)
        .map(|i| {
            if i % 4 == 3 {
                cjk(&mut rng, 40_000)
            } else {
                english(&mut rng, 160_000)
            }
        })
        .collect();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let total: usize = docs.iter().map(String::len).sum();
    let cores = rayon::current_num_threads();
    println!(
        "split_all: 64 documents, {:.1} MB, rayon pool of {cores} threads",
        total as f64 / 1e6
    );
    println!("{:<10} {:>14} {:>10}", "strategy", "MB/s total", "chunks");
    for strategy in STRATEGIES {
        let c = chunker(strategy);
        let start = Instant::now();
        let mut runs = 0;
        let mut chunks = 0;
        while runs == 0 || start.elapsed() < Duration::from_secs(1) {
            chunks = c.split_all(&refs).iter().map(Vec::len).sum::<usize>();
            runs += 1;
        }
        let rate = mb_per_s(total * runs, start.elapsed());
        println!("{:<10} {:>14.1} {:>10}", strategy.as_str(), rate, chunks);
    }
}
