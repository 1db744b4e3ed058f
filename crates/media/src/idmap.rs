//! Maps keyed by our own numbers: leg ids, ports, mix ids, participant ids.
//!
//! Their keys are never a stranger's bytes, so nobody can choose keys that all fall in
//! one bucket, and a keyed hash (the standard library's SipHash) buys nothing. A
//! multiply-rotate hash (as in rustc's FxHash) is a few instructions per integer, and it is
//! the same every run: iteration order, and with it the order of each tick's packets,
//! replays exactly.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A [`HashMap`] for keys the program made up itself.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// See the [module documentation](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_spread_and_hash_the_same_every_time() {
        let mut m: IdMap<u64, u64> = IdMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m[&i] == i * 2));
        let order: Vec<u64> = m.keys().copied().take(20).collect();
        let mut again: IdMap<u64, u64> = IdMap::default();
        for i in 0..10_000 {
            again.insert(i, 0);
        }
        assert_eq!(again.keys().copied().take(20).collect::<Vec<_>>(), order);
    }
}
