//! [`IdSet`]: "was this id seen?" in memory that does not grow past a few
//! bytes per id: exact up to a size, a Bloom filter above it.
//!
//! A Bloom filter never answers "no" for an id it was given; it answers
//! "yes" for an id it was not given with a small probability (the false
//! positive rate). Every filter draws a fresh random seed, so two filters
//! over the same ids err on different ids.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

/// Ids kept exactly below this many; above, a Bloom filter.
pub(crate) const EXACT_LIMIT: u64 = 200_000;

/// The false-positive rate of the Bloom filters made here.
pub(crate) const FALSE_POSITIVE_RATE: f64 = 0.001;

/// A set of ids: exact when small, a Bloom filter when large.
#[derive(Debug)]
pub(crate) enum IdSet {
    /// Every id.
    Exact(HashSet<String>),
    /// A filter: no false negatives, false positives at its rate.
    Bloom(Bloom),
}

impl IdSet {
    /// A set for about `expected` ids.
    pub(crate) fn for_ids(expected: u64) -> Self {
        if expected <= EXACT_LIMIT {
            Self::Exact(HashSet::new())
        } else {
            Self::Bloom(Bloom::new(expected, FALSE_POSITIVE_RATE))
        }
    }

    /// Adds an id.
    pub(crate) fn insert(&mut self, id: &str) {
        match self {
            Self::Exact(set) => {
                set.insert(id.to_owned());
            }
            Self::Bloom(bloom) => bloom.insert(id),
        }
    }

    /// Whether `id` was added (a Bloom filter may say yes when it was not).
    pub(crate) fn contains(&self, id: &str) -> bool {
        match self {
            Self::Exact(set) => set.contains(id),
            Self::Bloom(bloom) => bloom.contains(id),
        }
    }

    /// Whether its "no" and "yes" are both exact.
    pub(crate) fn is_exact(&self) -> bool {
        matches!(self, Self::Exact(_))
    }
}

/// The ids the cache should hold (what the source has), for telling a
/// lost key from one the source never had: exact while small (ids removed
/// on delete), then a Bloom filter that grows by adding layers, each twice
/// the last, so its false-positive rate stays near [`FALSE_POSITIVE_RATE`]
/// per layer whatever the table grows to. A filter never forgets an id, so
/// a deleted one stays "maybe" (its tombstone says deleted meanwhile).
#[derive(Debug)]
pub(crate) struct Members {
    exact: Option<HashSet<Box<str>>>,
    /// (filter, ids it was sized for, ids added).
    layers: Vec<(Bloom, u64, u64)>,
    exact_limit: u64,
}

impl Members {
    /// A set for about `expected` ids, exact up to `exact_limit`.
    pub(crate) fn new(expected: u64, exact_limit: u64) -> Self {
        let mut members = Self {
            exact: Some(HashSet::new()),
            layers: Vec::new(),
            exact_limit,
        };
        if expected > exact_limit {
            members.exact = None;
            members.add_layer(expected.saturating_add(expected / 4).max(1024));
        }
        members
    }

    /// About `expected` ids are coming: a set that would outgrow its exact
    /// limit becomes a filter sized for them now.
    pub(crate) fn reserve(&mut self, expected: u64) {
        let Some(exact) = &mut self.exact else {
            return;
        };
        if expected <= self.exact_limit {
            return;
        }
        let ids = std::mem::take(exact);
        self.exact = None;
        self.add_layer(expected.saturating_add(expected / 4).max(1024));
        for id in &ids {
            self.insert_filtered(id);
        }
    }

    fn add_layer(&mut self, capacity: u64) {
        self.layers
            .push((Bloom::new(capacity, FALSE_POSITIVE_RATE), capacity, 0));
    }

    /// Adds an id.
    pub(crate) fn insert(&mut self, id: &str) {
        if let Some(exact) = &mut self.exact {
            if exact.contains(id) {
                return;
            }
            exact.insert(id.into());
            if exact.len() as u64 > self.exact_limit {
                // Too many to keep exactly: into a filter with room to grow.
                let ids = std::mem::take(exact);
                self.exact = None;
                self.add_layer((ids.len() as u64).saturating_mul(2).max(1024));
                for id in &ids {
                    self.insert_filtered(id);
                }
            }
            return;
        }
        self.insert_filtered(id);
    }

    fn insert_filtered(&mut self, id: &str) {
        let full = self.layers.last().is_none_or(|(_, cap, n)| n >= cap);
        if full {
            let next = self
                .layers
                .last()
                .map_or(1024, |(_, cap, _)| cap.saturating_mul(2));
            self.add_layer(next);
        }
        if let Some((bloom, _, n)) = self.layers.last_mut() {
            bloom.insert(id);
            *n += 1;
        }
    }

    /// Forgets an id (exact sets only: a filter cannot).
    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(exact) = &mut self.exact {
            exact.remove(id);
        }
    }

    /// Whether `id` may be held (always true for an id added and not
    /// removed).
    pub(crate) fn contains(&self, id: &str) -> bool {
        match &self.exact {
            Some(exact) => exact.contains(id),
            None => self.layers.iter().any(|(bloom, _, _)| bloom.contains(id)),
        }
    }

    /// Whether its answers are exact.
    pub(crate) fn is_exact(&self) -> bool {
        self.exact.is_some()
    }

    /// About how many bytes it holds.
    pub(crate) fn bytes(&self) -> usize {
        match &self.exact {
            // The table's slots plus each boxed id.
            Some(exact) => {
                exact.capacity() * (std::mem::size_of::<Box<str>>() + 1)
                    + exact.iter().map(|id| id.len()).sum::<usize>()
            }
            None => self.layers.iter().map(|(b, _, _)| b.bytes()).sum(),
        }
    }
}

/// A Bloom filter over strings: `k` bit positions per item from two 64-bit
/// hashes (double hashing), with a random seed per filter.
#[derive(Debug)]
pub(crate) struct Bloom {
    bits: Vec<u64>,
    /// Bits in the filter (a multiple of 64).
    m: u64,
    k: u32,
    seed: RandomState,
}

impl Bloom {
    /// A filter for about `n` items at false-positive rate `p`.
    pub(crate) fn new(n: u64, p: f64) -> Self {
        let n = n.max(1) as f64;
        let ln2 = std::f64::consts::LN_2;
        let m = (-(n * p.ln()) / (ln2 * ln2)).ceil().max(64.0) as u64;
        let words = m.div_ceil(64);
        let k = ((m as f64 / n) * ln2).round().clamp(1.0, 16.0) as u32;
        Self {
            bits: vec![0; usize::try_from(words).unwrap_or(usize::MAX)],
            m: words * 64,
            k,
            seed: RandomState::new(),
        }
    }

    fn hashes(&self, item: &str) -> (u64, u64) {
        let h1 = self.seed.hash_one(item);
        // Odd, so the k positions do not repeat early.
        let h2 = self.seed.hash_one((item, 0x9e37_79b9_7f4a_7c15u64)) | 1;
        (h1, h2)
    }

    fn positions(&self, item: &str) -> impl Iterator<Item = u64> + '_ {
        let (h1, h2) = self.hashes(item);
        (0..u64::from(self.k)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.m)
    }

    /// Adds an item.
    pub(crate) fn insert(&mut self, item: &str) {
        let (h1, h2) = self.hashes(item);
        for i in 0..u64::from(self.k) {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % self.m;
            if let Some(word) = self.bits.get_mut((bit / 64) as usize) {
                *word |= 1 << (bit % 64);
            }
        }
    }

    /// Whether the item may have been added (never false for one that was).
    pub(crate) fn contains(&self, item: &str) -> bool {
        self.positions(item).all(|bit| {
            self.bits
                .get((bit / 64) as usize)
                .is_some_and(|word| word & (1 << (bit % 64)) != 0)
        })
    }

    /// Bytes the filter holds.
    pub(crate) fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bloom_filter_never_forgets_and_errs_near_its_rate() {
        let n = 100_000u64;
        let mut bloom = Bloom::new(n, FALSE_POSITIVE_RATE);
        for i in 0..n {
            bloom.insert(&format!("in-{i}"));
        }
        assert!((0..n).all(|i| bloom.contains(&format!("in-{i}"))));
        let false_positives = (0..n)
            .filter(|i| bloom.contains(&format!("out-{i}")))
            .count();
        let rate = false_positives as f64 / n as f64;
        assert!(rate < FALSE_POSITIVE_RATE * 3.0, "{rate}");
        // About 1.8 bytes per id at 0.1 %.
        assert!(bloom.bytes() < 2 * n as usize, "{}", bloom.bytes());
    }

    #[test]
    fn small_sets_are_exact_and_large_ones_filters() {
        let mut small = IdSet::for_ids(10);
        small.insert("a");
        assert!(small.is_exact() && small.contains("a") && !small.contains("b"));
        assert!(!IdSet::for_ids(EXACT_LIMIT + 1).is_exact());
    }

    #[test]
    fn members_stay_exact_while_small_then_grow_a_filter_that_forgets_nothing() {
        let mut m = Members::new(0, 1_000);
        m.insert("a");
        m.remove("a");
        assert!(m.is_exact() && !m.contains("a"));
        // Past the exact limit, and then past the first layer's capacity.
        for i in 0..10_000 {
            m.insert(&format!("in-{i}"));
        }
        assert!(!m.is_exact());
        assert!((0..10_000).all(|i| m.contains(&format!("in-{i}"))));
        let false_positives = (0..10_000)
            .filter(|i| m.contains(&format!("out-{i}")))
            .count();
        assert!(false_positives < 60, "{false_positives}");
        // A filter cannot forget.
        m.remove("in-1");
        assert!(m.contains("in-1"));
    }
}
