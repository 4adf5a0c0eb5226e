//! Sampling origins θ₀ from a model's vocabulary embeddings.
//!
//! The paper's recipe: numpy's legacy generator seeded once (1024), one stream producing origins
//! 0, 1, 2, … in turn, each origin `np.random.choice(5000, 200, replace=False)` of which the first
//! R ids are used. [`Mt19937`] and [`legacy_choice`] reproduce numpy's `RandomState` bit for bit,
//! so the same seed gives the authors' token ids.
//!
//! peft's `SAMPLE_VOCAB` draws ids with replacement from the whole vocabulary with torch's
//! generator, which cannot be reproduced outside torch; [`Sampling::SampleVocab`] draws the same
//! way from [`SplitMix64`] seeded by the user.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::merge::SplitMix64;

/// How origin token ids are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// The paper: ids below `below` without replacement, `draw` per origin (first R used).
    VocabBelow { below: usize, draw: usize },
    /// peft's SAMPLE_VOCAB: ids from the whole vocabulary, with replacement.
    SampleVocab,
}

impl Sampling {
    /// The paper's default: `choice(5000, 200, replace=False)`.
    pub const PAPER: Self = Self::VocabBelow { below: 5000, draw: 200 };

    /// A short name stored in run files, e.g. `vocab-below-5000`.
    pub fn describe(&self) -> String {
        match self {
            Self::VocabBelow { below, .. } => format!("vocab-below-{below}"),
            Self::SampleVocab => "sample-vocab".into(),
        }
    }
}

/// The most token ids [`origin_token_ids`] draws in one call (count × tokens): 256 MB of ids.
pub const MAX_ORIGIN_IDS: usize = 1 << 26;

/// Token ids of origins 0..count, R each.
pub fn origin_token_ids(
    sampling: Sampling,
    count: usize,
    tokens: usize,
    seed: u64,
    vocab_size: usize,
) -> Result<Vec<Vec<u32>>> {
    let invalid = |reason| Error::InvalidParameter {
        name: "origins",
        value: format!("{sampling:?}, {count} origins of R = {tokens}"),
        reason,
    };
    // Bounded before anything is sized by them (`--count 1000000000` asked for 24 GB): at most
    // one origin per vocabulary entry and a prompt no longer than the vocabulary, and at most
    // [`MAX_ORIGIN_IDS`] ids in all.
    if count > vocab_size {
        return Err(invalid("more origins than the vocabulary has tokens"));
    }
    if tokens > vocab_size || count.saturating_mul(tokens) > MAX_ORIGIN_IDS {
        return Err(invalid(
            "more token ids than the vocabulary has, or than MAX_ORIGIN_IDS (2^26) in all",
        ));
    }
    match sampling {
        Sampling::VocabBelow { below, draw } => {
            if below > vocab_size {
                return Err(invalid("the id bound exceeds the vocabulary"));
            }
            if tokens > draw || draw > below {
                return Err(invalid("needs R <= ids drawn <= id bound"));
            }
            let seed = u32::try_from(seed).map_err(|_| invalid("numpy's legacy seed must fit in 32 bits"))?;
            let mut rng = Mt19937::new(seed);
            Ok((0..count)
                .map(|_| {
                    legacy_choice(&mut rng, below, draw)[..tokens]
                        .iter()
                        .map(|&i| i as u32)
                        .collect()
                })
                .collect())
        }
        Sampling::SampleVocab => {
            if vocab_size == 0 {
                return Err(invalid("empty vocabulary"));
            }
            let mut rng = SplitMix64::new(seed);
            Ok((0..count)
                .map(|_| {
                    (0..tokens)
                        .map(|_| (rng.next_u64() % vocab_size as u64) as u32)
                        .collect()
                })
                .collect())
        }
    }
}

/// numpy legacy `RandomState.choice(n, size, replace=False)`: the first `size` entries of
/// `permutation(n)`, which shuffles `arange(n)` from the end with `random_interval`.
pub fn legacy_choice(rng: &mut Mt19937, n: usize, size: usize) -> Vec<usize> {
    let mut arr: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        arr.swap(i, j);
    }
    arr.truncate(size);
    arr
}

/// The Mersenne Twister MT19937 with numpy's legacy seeding (`init_genrand`).
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mt19937 {{ index: {} }}", self.index)
    }
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    next ^= 0x9908_b0df;
                }
                self.state[i] = next;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_interval(max)`: uniform in [0, max] by masked rejection.
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        if max <= 0xffff_ffff {
            loop {
                let v = u64::from(self.next_u32()) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = ((u64::from(self.next_u32()) << 32) | u64::from(self.next_u32())) & mask;
            if v <= max {
                return v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 32 (14): `tpv origins --count 1000000000` aborted on a 24 GB allocation.
    #[test]
    fn counts_beyond_the_vocabulary_are_refused_before_allocating() {
        for sampling in [Sampling::PAPER, Sampling::SampleVocab] {
            let err = origin_token_ids(sampling, 1_000_000_000, 8, 1024, 49152)
                .unwrap_err()
                .to_string();
            assert!(err.contains("more origins than the vocabulary"), "{err}");
            assert!(origin_token_ids(sampling, 3, 1 << 20, 1024, 49152).is_err());
            assert!(
                origin_token_ids(sampling, 49152, 49152, 1024, 49152).is_err(),
                "2^31 ids in all"
            );
        }
        assert_eq!(
            origin_token_ids(Sampling::SampleVocab, 100, 100, 1, 49152)
                .unwrap()
                .len(),
            100
        );
    }

    #[test]
    fn reproduces_numpy_legacy_streams() {
        // np.random.seed(1024)
        // a = np.random.choice(5000, 200, replace=False); b = np.random.choice(5000, 200, replace=False)
        // a[:8] -> [340, 3961, 561, 3623, 2427, 1281, 689, 591]
        // b[:8] -> [3909, 3223, 6, 3876, 188, 4663, 1732, 4389]
        let ids = origin_token_ids(Sampling::PAPER, 2, 8, 1024, 49152).unwrap();
        assert_eq!(ids[0], [340, 3961, 561, 3623, 2427, 1281, 689, 591]);
        assert_eq!(ids[1], [3909, 3223, 6, 3876, 188, 4663, 1732, 4389]);
        // np.random.RandomState(1024).permutation(10) -> [2, 3, 7, 0, 6, 8, 5, 4, 9, 1]
        assert_eq!(
            legacy_choice(&mut Mt19937::new(1024), 10, 10),
            [2, 3, 7, 0, 6, 8, 5, 4, 9, 1]
        );
    }

    #[test]
    fn sample_vocab_is_seeded_and_in_range() {
        let a = origin_token_ids(Sampling::SampleVocab, 3, 50, 7, 100).unwrap();
        assert_eq!(a, origin_token_ids(Sampling::SampleVocab, 3, 50, 7, 100).unwrap());
        assert!(a.iter().flatten().all(|&i| i < 100));
        assert!(origin_token_ids(Sampling::PAPER, 1, 300, 1024, 49152).is_err());
        assert!(origin_token_ids(Sampling::PAPER, 1, 10, 1024, 100).is_err());
    }
}
