//! The map from the worker's opaque tokens to a backend's own slots, with
//! the cheap hasher both backends use for it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::Token;

/// A map keyed by [`Token`].
pub(crate) type TokenMap<V> = HashMap<Token, V, BuildHasherDefault<TokenHasher>>;

/// Hashes the worker's `u64` tokens (a slot in the low half, its
/// generation in the high half; chosen by the worker, never by a peer): one
/// 64 × 64 → 128-bit multiply whose halves are folded together, so the low
/// bits that pick the bucket and the high bits the table compares first
/// both depend on every input bit (a plain multiply leaves the low bits
/// blind to the generation).
#[derive(Default)]
pub(crate) struct TokenHasher(u64);

const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

fn folded_multiply(n: u64) -> u64 {
    let full = u128::from(n) * u128::from(HASH_K);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = folded_multiply(self.0.rotate_left(29) ^ n);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn hash(token: Token) -> u64 {
        BuildHasherDefault::<TokenHasher>::default().hash_one(token)
    }

    #[test]
    fn consecutive_slots_and_generations_spread_over_buckets_and_tags() {
        // 256 slots of one generation, and one slot over 256 generations:
        // each set fills most of 256 buckets (low bits) and most of the
        // 128 tags the table compares (top 7 bits).
        let by_slot: Vec<u64> = (0..256u64).map(hash).collect();
        let by_generation: Vec<u64> = (0..256u64)
            .map(|generation| hash(generation << 32))
            .collect();
        for hashes in [by_slot, by_generation] {
            let mut buckets: Vec<u64> = hashes.iter().map(|h| h & 0xFF).collect();
            buckets.sort_unstable();
            buckets.dedup();
            assert!(buckets.len() > 140, "{} of 256 buckets", buckets.len());
            let mut tags: Vec<u64> = hashes.iter().map(|h| h >> 57).collect();
            tags.sort_unstable();
            tags.dedup();
            assert!(tags.len() > 80, "{} of 128 tags", tags.len());
        }
    }

    #[test]
    fn a_map_keeps_tokens_apart() {
        let mut map = TokenMap::default();
        for slot in 0..1000u64 {
            map.insert(slot | (7 << 32), slot);
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map.get(&(999 | (7 << 32))), Some(&999));
        assert_eq!(map.get(&999), None);
    }
}
