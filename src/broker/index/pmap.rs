//! A persistent hash map (a hash array mapped trie in the CHAMP layout) for the wide parts
//! of the topic trie: the children of a node and the subscribers of a filter.
//!
//! Cloning a map is one `Arc` increment, and an edit of a clone copies only the branches on
//! the key's hash path (at most 13 branches of at most 32 entries) instead of the whole map.
//! So a subscribe under `devices/` with 100 000 devices, or a client joining a filter that
//! 100 000 clients share, copies a few hundred pointers, not 100 000 entries.
//!
//! Hashes are 64 bits, consumed 5 bits per level; keys whose whole hashes are equal end up
//! in an overflow list one level below the last. The hasher is std's `RandomState`, keyed
//! randomly once per process, so clients cannot pick topic levels that collide on purpose,
//! and partial collisions only add levels. Depth is bounded by the hash width (14 levels),
//! so the little recursion here is bounded too.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, OnceLock};

const BITS: u32 = 5;
/// Shifts at or past this are below the last level: only whole-hash collisions get there.
const OVERFLOW_SHIFT: u32 = 64;

pub(super) struct PersistentMap<K, V> {
    root: Option<Arc<Branch<K, V>>>,
    len: usize,
}

/// One level: entries stored here (`leaf_map`) and sub-branches (`sub_map`), each indexed by
/// the popcount of the bits below its own bit. A bit is in at most one of the two maps.
struct Branch<K, V> {
    leaf_map: u32,
    sub_map: u32,
    leaves: Vec<Leaf<K, V>>,
    subs: Vec<Arc<Branch<K, V>>>,
    /// Used only by branches at `OVERFLOW_SHIFT`: entries whose full hashes are equal.
    overflow: Vec<Leaf<K, V>>,
}

#[derive(Clone)]
struct Leaf<K, V> {
    hash: u64,
    key: K,
    value: V,
}

fn hash_of<Q: Hash + ?Sized>(key: &Q) -> u64 {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    STATE.get_or_init(RandomState::new).hash_one(key)
}

/// The bit of `hash` for the level at `shift` (`shift < 64`).
fn bit(hash: u64, shift: u32) -> u32 {
    1 << (hash.checked_shr(shift).unwrap_or(0) & 31)
}

fn index(map: u32, bit: u32) -> usize {
    (map & (bit - 1)).count_ones() as usize
}

impl<K, V> Default for Branch<K, V> {
    fn default() -> Self {
        Branch {
            leaf_map: 0,
            sub_map: 0,
            leaves: Vec::new(),
            subs: Vec::new(),
            overflow: Vec::new(),
        }
    }
}

impl<K: Clone, V: Clone> Clone for Branch<K, V> {
    fn clone(&self) -> Self {
        Branch {
            leaf_map: self.leaf_map,
            sub_map: self.sub_map,
            leaves: self.leaves.clone(),
            subs: self.subs.clone(),
            overflow: self.overflow.clone(),
        }
    }
}

impl<K, V> Branch<K, V> {
    fn is_empty(&self) -> bool {
        self.leaves.is_empty() && self.subs.is_empty() && self.overflow.is_empty()
    }

    /// The branch's only entry, if it has exactly one and no sub-branches.
    fn take_single(&mut self) -> Option<Leaf<K, V>> {
        if !self.subs.is_empty() || self.leaves.len() + self.overflow.len() != 1 {
            return None;
        }
        self.leaf_map = 0;
        self.leaves.pop().or_else(|| self.overflow.pop())
    }

    fn insert_leaf(&mut self, bit: u32, leaf: Leaf<K, V>) -> usize {
        let i = index(self.leaf_map, bit);
        self.leaf_map |= bit;
        self.leaves.insert(i, leaf);
        i
    }
}

impl<K, V> Clone for PersistentMap<K, V> {
    fn clone(&self) -> Self {
        PersistentMap {
            root: self.root.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for PersistentMap<K, V> {
    fn default() -> Self {
        PersistentMap { root: None, len: 0 }
    }
}

impl<K, V> PersistentMap<K, V> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` on every entry, in no particular order; recursion depth is bounded by the 14
    /// hash levels.
    pub(super) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        fn walk<K, V>(branch: &Branch<K, V>, f: &mut impl FnMut(&K, &V)) {
            for leaf in branch.leaves.iter().chain(&branch.overflow) {
                f(&leaf.key, &leaf.value);
            }
            for sub in &branch.subs {
                walk(sub, f);
            }
        }
        if let Some(root) = &self.root {
            walk(root, &mut f);
        }
    }

    /// Empties the map and returns the values it alone owned. Branches still shared with a
    /// clone are only released (a reference count decrement), so this never walks into
    /// another owner's data and never recurses.
    pub(super) fn take_owned_values(&mut self) -> Vec<V> {
        let mut values = Vec::new();
        let mut branches: Vec<Arc<Branch<K, V>>> = self.root.take().into_iter().collect();
        self.len = 0;
        while let Some(branch) = branches.pop() {
            if let Some(branch) = Arc::into_inner(branch) {
                values.extend(branch.leaves.into_iter().map(|leaf| leaf.value));
                values.extend(branch.overflow.into_iter().map(|leaf| leaf.value));
                branches.extend(branch.subs);
            }
        }
        values
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = hash_of(key);
        let mut branch = self.root.as_deref()?;
        let mut shift = 0;
        loop {
            if shift >= OVERFLOW_SHIFT {
                return branch
                    .overflow
                    .iter()
                    .find(|leaf| leaf.key.borrow() == key)
                    .map(|leaf| &leaf.value);
            }
            let bit = bit(hash, shift);
            if branch.leaf_map & bit != 0 {
                let leaf = &branch.leaves[index(branch.leaf_map, bit)];
                return (leaf.hash == hash && leaf.key.borrow() == key).then_some(&leaf.value);
            }
            if branch.sub_map & bit == 0 {
                return None;
            }
            branch = &branch.subs[index(branch.sub_map, bit)];
            shift += BITS;
        }
    }
}

impl<K: Clone + Hash + Eq, V: Clone> PersistentMap<K, V> {
    /// The value of `key`, inserted from `make` if missing, made unique for editing.
    pub(super) fn get_or_insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> (K, V)) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find_or_insert(key, make).0
    }

    /// The value of `key` made unique for editing; copies nothing when the key is absent.
    pub(super) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key)?;
        let hash = hash_of(key);
        let mut branch = Arc::make_mut(self.root.as_mut()?);
        let mut shift = 0;
        loop {
            if shift >= OVERFLOW_SHIFT {
                return branch
                    .overflow
                    .iter_mut()
                    .find(|leaf| leaf.key.borrow() == key)
                    .map(|leaf| &mut leaf.value);
            }
            let bit = bit(hash, shift);
            if branch.leaf_map & bit != 0 {
                let i = index(branch.leaf_map, bit);
                let leaf = &mut branch.leaves[i];
                return (leaf.hash == hash && leaf.key.borrow() == key).then_some(&mut leaf.value);
            }
            if branch.sub_map & bit == 0 {
                return None;
            }
            let i = index(branch.sub_map, bit);
            branch = Arc::make_mut(&mut branch.subs[i]);
            shift += BITS;
        }
    }

    /// Inserts or replaces; returns the value replaced.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let probe = key.clone();
        let (slot, inserted) = self.find_or_insert(&probe, || (key, value.clone()));
        if inserted {
            None
        } else {
            Some(std::mem::replace(slot, value))
        }
    }

    /// Removes `key`; returns its value. Copies nothing when the key is absent.
    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key)?;
        let root = self.root.as_mut()?;
        let root = Arc::make_mut(root);
        let removed = remove_in(root, hash_of(key), key, 0)?;
        self.len -= 1;
        if root.is_empty() {
            self.root = None;
        }
        Some(removed)
    }

    /// Finds `key` or inserts `make()`'s entry for it (which must have an equal key), copying
    /// the shared branches on the way; returns the value and whether it was inserted.
    fn find_or_insert<Q>(&mut self, key: &Q, make: impl FnOnce() -> (K, V)) -> (&mut V, bool)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = hash_of(key);
        let len = &mut self.len;
        let mut branch = Arc::make_mut(self.root.get_or_insert_with(Default::default));
        let mut shift = 0;
        loop {
            if shift >= OVERFLOW_SHIFT {
                let i = match branch.overflow.iter().position(|l| l.key.borrow() == key) {
                    Some(i) => i,
                    None => {
                        let (key, value) = make();
                        let last = branch.overflow.len();
                        branch.overflow.push(Leaf { hash, key, value });
                        *len += 1;
                        return (&mut branch.overflow[last].value, true);
                    }
                };
                return (&mut branch.overflow[i].value, false);
            }
            let bit = bit(hash, shift);
            if branch.sub_map & bit != 0 {
                let i = index(branch.sub_map, bit);
                branch = Arc::make_mut(&mut branch.subs[i]);
                shift += BITS;
                continue;
            }
            if branch.leaf_map & bit == 0 {
                let (key, value) = make();
                let i = branch.insert_leaf(bit, Leaf { hash, key, value });
                *len += 1;
                return (&mut branch.leaves[i].value, true);
            }
            let i = index(branch.leaf_map, bit);
            if branch.leaves[i].hash == hash && branch.leaves[i].key.borrow() == key {
                return (&mut branch.leaves[i].value, false);
            }
            // Another key holds this bit: push it one level down into a new branch, and go
            // on there (which splits again while the two hashes keep agreeing).
            let other = branch.leaves.remove(i);
            branch.leaf_map &= !bit;
            let mut sub = Branch::default();
            let below = shift + BITS;
            if below >= OVERFLOW_SHIFT {
                sub.overflow.push(other);
            } else {
                sub.insert_leaf(self::bit(other.hash, below), other);
            }
            let s = index(branch.sub_map, bit);
            branch.sub_map |= bit;
            branch.subs.insert(s, Arc::new(sub));
            branch = Arc::make_mut(&mut branch.subs[s]);
            shift = below;
        }
    }
}

fn remove_in<K, V, Q>(branch: &mut Branch<K, V>, hash: u64, key: &Q, shift: u32) -> Option<V>
where
    K: Clone + Borrow<Q>,
    V: Clone,
    Q: Eq + ?Sized,
{
    if shift >= OVERFLOW_SHIFT {
        let i = branch.overflow.iter().position(|l| l.key.borrow() == key)?;
        return Some(branch.overflow.remove(i).value);
    }
    let bit = bit(hash, shift);
    if branch.leaf_map & bit != 0 {
        let i = index(branch.leaf_map, bit);
        let leaf = &branch.leaves[i];
        if leaf.hash != hash || leaf.key.borrow() != key {
            return None;
        }
        branch.leaf_map &= !bit;
        return Some(branch.leaves.remove(i).value);
    }
    if branch.sub_map & bit == 0 {
        return None;
    }
    let s = index(branch.sub_map, bit);
    let sub = Arc::make_mut(&mut branch.subs[s]);
    let removed = remove_in(sub, hash, key, shift + BITS)?;
    // A sub-branch left with a single entry folds back into this level, so lookups stay
    // short and a chain of single-entry branches unwinds as the recursion returns.
    if let Some(only) = sub.take_single() {
        branch.subs.remove(s);
        branch.sub_map &= !bit;
        branch.insert_leaf(bit, only);
    }
    Some(removed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::hash::Hasher;

    use proptest::prelude::*;

    use super::*;

    fn entries<K: Clone, V: Clone>(map: &PersistentMap<K, V>) -> Vec<(K, V)> {
        let mut out = Vec::new();
        map.for_each(|k, v| out.push((k.clone(), v.clone())));
        out
    }

    #[test]
    fn clones_share_until_written() {
        let mut a: PersistentMap<u32, u32> = PersistentMap::default();
        for i in 0..1000 {
            a.insert(i, i);
        }
        let b = a.clone();
        assert_eq!(a.insert(5, 50), Some(5));
        assert_eq!(a.remove(&6), Some(6));
        assert_eq!(b.get(&5), Some(&5));
        assert_eq!(b.get(&6), Some(&6));
        assert_eq!(a.get(&5), Some(&50));
        assert_eq!(a.get(&6), None);
        assert_eq!((a.len(), b.len()), (999, 1000));
    }

    /// A key whose hash is chosen by the test, to force whole-hash collisions.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Forced(u64, u32);

    impl Hash for Forced {
        fn hash<H: Hasher>(&self, state: &mut H) {
            state.write_u64(self.0);
        }
    }

    #[test]
    fn whole_hash_collisions_are_kept_apart() {
        let mut map: PersistentMap<Forced, u32> = PersistentMap::default();
        for n in 0..5 {
            map.insert(Forced(7, n), n);
        }
        map.insert(Forced(8, 0), 100);
        assert_eq!(map.len(), 6);
        for n in 0..5 {
            assert_eq!(map.get(&Forced(7, n)), Some(&n));
        }
        let copy = map.clone();
        for n in 0..5 {
            assert_eq!(map.remove(&Forced(7, n)), Some(n));
            assert_eq!(map.remove(&Forced(7, n)), None);
        }
        assert_eq!(map.get(&Forced(8, 0)), Some(&100));
        assert_eq!(entries(&map).len(), 1);
        assert_eq!(entries(&copy).len(), 6);
        assert_eq!(map.remove(&Forced(8, 0)), Some(100));
        assert!(map.is_empty() && map.root.is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u8),
        Remove(u16),
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..300, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => (0u16..300).prop_map(Op::Remove),
            1 => Just(Op::Snapshot),
        ]
    }

    proptest! {
        /// The map agrees with `HashMap` after any sequence of edits, and every clone taken
        /// along the way still agrees with the `HashMap` of its moment.
        #[test]
        fn behaves_like_a_hash_map(ops in prop::collection::vec(op(), 0..400)) {
            let mut map: PersistentMap<u16, u8> = PersistentMap::default();
            let mut model: HashMap<u16, u8> = HashMap::new();
            let mut snapshots = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(map.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(map.remove(&k), model.remove(&k)),
                    Op::Snapshot => snapshots.push((map.clone(), model.clone())),
                }
            }
            snapshots.push((map, model));
            for (map, model) in &snapshots {
                prop_assert_eq!(map.len(), model.len());
                let mut listed = entries(map);
                listed.sort();
                let mut expected: Vec<(u16, u8)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                expected.sort();
                prop_assert_eq!(listed, expected);
                for k in 0..300u16 {
                    prop_assert_eq!(map.get(&k), model.get(&k));
                }
            }
            let (mut last, model) = snapshots.pop().expect("pushed");
            let owned = last.take_owned_values();
            prop_assert!(owned.len() <= model.len());
            prop_assert!(last.is_empty());
        }
    }
}
