//! Which part of a run one process does (`--shard I/N`): every worker computes the same split
//! from the same inputs without talking to the others, so running shard I again does exactly
//! shard I's work.

/// Shard `index` of `count` (0-based index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// Most shards of one run (an array job of this size is already far past what one table's
/// commit wants to merge).
pub const MAX_SHARDS: u32 = 10_000;

impl Shard {
    /// The whole run: one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// `I/N` as written on the command line.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a shard: write I/N, e.g. --shard 0/4"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("`{i}` in `{s}` is not a shard index (0, 1, ...)"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` in `{s}` is not a shard count"))?;
        Self::new(index, count)
    }

    /// Shard `index` of `count`, checked.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "the shard count must be between 1 and {MAX_SHARDS}, not {count}"
            ));
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range for {count} shards (0 to {})",
                count - 1
            ));
        }
        Ok(Self { index, count })
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// Whether this shard owns `key` (a path, a row id): by a hash every worker computes alike.
    pub fn owns(&self, key: &str) -> bool {
        self.count == 1 || shard_of(key, self.count) == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard of `key` among `count`: BLAKE3 of its UTF-8 bytes, first 8 bytes little-endian,
/// modulo the count — fixed across platforms and versions (never `std`'s randomised hasher).
pub fn shard_of(key: &str, count: u32) -> u32 {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) % count as u64) as u32
}

/// Contiguous ranges of units (row groups, files) in their given order, balanced by `sizes`:
/// the shard of each unit is where its middle row falls among `count` equal spans of the total
/// (by its first row, two files of nearly equal size would both go to the first of two shards).
/// A unit is never split; empty units go with their neighbours.
pub fn balanced(sizes: &[u64], count: u32) -> Vec<u32> {
    let total: u128 = sizes.iter().map(|&s| s as u128).sum();
    let mut start: u128 = 0;
    sizes
        .iter()
        .map(|&s| {
            let middle2 = 2 * start + s as u128;
            let shard = (middle2 * count as u128)
                .checked_div(2 * total)
                .unwrap_or(0) as u32;
            start += s as u128;
            shard.min(count - 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(Shard::parse(" 0 / 1 ").unwrap(), Shard::WHOLE);
        assert!(Shard::parse("4/4").unwrap_err().contains("out of range"));
        assert!(Shard::parse("1/0").unwrap_err().contains("between 1 and"));
        assert!(Shard::parse("a/2")
            .unwrap_err()
            .contains("not a shard index"));
        assert!(Shard::parse("3").unwrap_err().contains("write I/N"));
        assert_eq!(Shard::new(1, 3).unwrap().to_string(), "1/3");
    }

    #[test]
    fn hashes_are_pinned_and_spread() {
        // Fixed values: a change of hash would move every key to another shard between runs.
        assert_eq!(shard_of("a", 4), shard_of("a", 4));
        let pinned: Vec<u32> = ["a", "b", "doc-1", "images/cat.png"]
            .iter()
            .map(|k| shard_of(k, 1000))
            .collect();
        assert_eq!(pinned, PINNED);
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("row-{i}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
        // Every key has exactly one owner.
        for i in 0..100 {
            let key = format!("k{i}");
            let owners = (0..3)
                .filter(|&s| Shard::new(s, 3).unwrap().owns(&key))
                .count();
            assert_eq!(owners, 1);
        }
    }

    const PINNED: [u32; 4] = [143, 264, 987, 533];

    #[test]
    fn balanced_ranges_are_contiguous_and_even() {
        assert_eq!(balanced(&[10, 10, 10, 10], 2), [0, 0, 1, 1]);
        assert_eq!(balanced(&[100, 1, 1, 1, 1], 2), [0, 1, 1, 1, 1]);
        assert_eq!(balanced(&[5, 5, 5], 4), [0, 2, 3]);
        // The smaller first of two files still gets a shard of its own.
        assert_eq!(balanced(&[99, 101], 2), [0, 1]);
        assert_eq!(balanced(&[0, 0], 3), [0, 0]);
        assert_eq!(balanced(&[], 3), Vec::<u32>::new());
        let sizes: Vec<u64> = (0..1000).map(|i| 1000 + (i * 37 % 200)).collect();
        let owners = balanced(&sizes, 4);
        assert!(owners.windows(2).all(|w| w[0] <= w[1]), "contiguous");
        let mut rows = [0u64; 4];
        for (s, o) in sizes.iter().zip(&owners) {
            rows[*o as usize] += s;
        }
        let total: u64 = sizes.iter().sum();
        assert!(
            rows.iter().all(|&r| r.abs_diff(total / 4) < 1300),
            "{rows:?}"
        );
    }
}
