//! A persistent hash map (a hash array mapped trie) for the topic trie's wide parts: the
//! children of a node and the subscribers of a filter.
//!
//! Cloning a map is one `Arc` increment, and an insert or a remove on a clone copies only the
//! branches on the key's hash path, at most 13 branches of at most 32 slots, instead of the
//! whole map. So a subscribe under `devices/` with 100 000 devices, or a subscriber joining a
//! filter 100 000 clients share, copies a few hundred pointers, not 100 000 entries.
//!
//! Each 64-bit hash is consumed 5 bits per level. Keys whose whole hashes are equal share a
//! collision slot at the bottom; the hasher is keyed randomly per process (std `RandomState`),
//! so clients cannot choose topic levels that collide on purpose, and partial collisions only
//! add levels (13 at most). Depth is bounded by the hash width, so the recursion here is
//! bounded too.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, OnceLock};

const BITS: u32 = 5;

pub(super) struct PersistentMap<K, V> {
    root: Option<Arc<Branch<K, V>>>,
    len: usize,
}

struct Branch<K, V> {
    bitmap: u32,
    /// One slot per bit set in `bitmap`, in bit order.
    slots: Vec<Slot<K, V>>,
}

enum Slot<K, V> {
    Leaf { hash: u64, key: K, value: V },
    /// Two or more keys with the same 64-bit hash.
    Collision { hash: u64, entries: Vec<(K, V)> },
    Sub(Arc<Branch<K, V>>),
}

fn hash_of<Q: Hash + ?Sized>(key: &Q) -> u64 {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    STATE.get_or_init(RandomState::new).hash_one(key)
}

/// The bit of `hash` at the level that starts at `shift`.
fn bit(hash: u64, shift: u32) -> u32 {
    1 << (hash.checked_shr(shift).unwrap_or(0) & 31)
}

impl<K, V> Branch<K, V> {
    fn position(&self, bit: u32) -> usize {
        (self.bitmap & (bit - 1)).count_ones() as usize
    }
}

impl<K: Clone, V: Clone> Clone for Slot<K, V> {
    fn clone(&self) -> Self {
        match self {
            Slot::Leaf { hash, key, value } => Slot::Leaf {
                hash: *hash,
                key: key.clone(),
                value: value.clone(),
            },
            Slot::Collision { hash, entries } => Slot::Collision {
                hash: *hash,
                entries: entries.clone(),
            },
            Slot::Sub(branch) => Slot::Sub(Arc::clone(branch)),
        }
    }
}

impl<K: Clone, V: Clone> Clone for Branch<K, V> {
    fn clone(&self) -> Self {
        Branch {
            bitmap: self.bitmap,
            slots: self.slots.clone(),
        }
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

    /// Every entry, in hash order.
    pub(super) fn iter(&self) -> Iter<'_, K, V> {
        Iter {
            stack: self.root.iter().map(|root| root.slots.iter()).collect(),
            collision: [].iter(),
        }
    }

    /// Empties the map and returns the values it owned alone. Values in branches still
    /// shared with a clone stay there (only the reference to the branch is dropped), so this
    /// never recurses into another owner's data.
    pub(super) fn take_owned_values(&mut self) -> Vec<V> {
        let mut values = Vec::new();
        let mut branches: Vec<Arc<Branch<K, V>>> = self.root.take().into_iter().collect();
        self.len = 0;
        while let Some(branch) = branches.pop() {
            let Some(branch) = Arc::into_inner(branch) else {
                continue;
            };
            for slot in branch.slots {
                match slot {
                    Slot::Leaf { value, .. } => values.push(value),
                    Slot::Collision { entries, .. } => {
                        values.extend(entries.into_iter().map(|(_, v)| v))
                    }
                    Slot::Sub(sub) => branches.push(sub),
                }
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
            let bit = bit(hash, shift);
            if branch.bitmap & bit == 0 {
                return None;
            }
            match &branch.slots[branch.position(bit)] {
                Slot::Leaf { hash: h, key: k, value } => {
                    return (*h == hash && k.borrow() == key).then_some(value);
                }
                Slot::Collision { hash: h, entries } => {
                    return if *h == hash {
                        entries.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v)
                    } else {
                        None
                    };
                }
                Slot::Sub(sub) => {
                    branch = sub;
                    shift += BITS;
                }
            }
        }
    }
}

impl<K: Clone + Hash + Eq, V: Clone> PersistentMap<K, V> {
    /// The value of `key`, inserted with `make` if missing, made unique for editing.
    pub(super) fn get_or_insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> (K, V)) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = hash_of(key);
        if self.get(key).is_none() {
            let (k, v) = make();
            self.insert_new(hash, k, v);
        }
        let mut branch = Arc::make_mut(self.root.get_or_insert_with(Default::default));
        let mut shift = 0;
        loop {
            let bit = bit(hash, shift);
            let pos = branch.position(bit);
            // `insert_new` put the key on this path, so every step finds its slot.
            match &mut branch.slots[pos] {
                Slot::Sub(sub) => {
                    branch = Arc::make_mut(sub);
                    shift += BITS;
                }
                Slot::Leaf { value, .. } => return value,
                Slot::Collision { entries, .. } => {
                    let i = entries
                        .iter()
                        .position(|(k, _)| k.borrow() == key)
                        .unwrap_or(0);
                    return &mut entries[i].1;
                }
            }
        }
    }

    /// Inserts or replaces; returns the value replaced.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = hash_of(&key);
        if self.get(&key).is_some() {
            let slot = self.get_or_insert_with(&key, || unreachable_pair());
            return Some(std::mem::replace(slot, value));
        }
        self.insert_new(hash, key, value);
        None
    }

    /// Removes `key`; returns its value. Copies nothing when the key is absent.
    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key)?;
        let hash = hash_of(key);
        let root = self.root.as_mut()?;
        let removed = remove_in(Arc::make_mut(root), hash, key, 0)?;
        self.len -= 1;
        if root.slots.is_empty() {
            self.root = None;
        }
        Some(removed)
    }

    /// Inserts a key known to be absent.
    fn insert_new(&mut self, hash: u64, key: K, value: V) {
        self.len += 1;
        let mut branch = Arc::make_mut(self.root.get_or_insert_with(Default::default));
        let mut shift = 0;
        loop {
            let bit = bit(hash, shift);
            let pos = branch.position(bit);
            if branch.bitmap & bit == 0 {
                branch.bitmap |= bit;
                branch.slots.insert(pos, Slot::Leaf { hash, key, value });
                return;
            }
            match &mut branch.slots[pos] {
                Slot::Sub(sub) => {
                    branch = Arc::make_mut(sub);
                    shift += BITS;
                }
                Slot::Collision { hash: h, entries } if *h == hash => {
                    entries.push((key, value));
                    return;
                }
                Slot::Leaf { hash: h, .. } if *h == hash => {
                    let Slot::Leaf { key: k0, value: v0, .. } = branch.slots.remove(pos) else {
                        return;
                    };
                    branch.slots.insert(
                        pos,
                        Slot::Collision {
                            hash,
                            entries: vec![(k0, v0), (key, value)],
                        },
                    );
                    return;
                }
                Slot::Leaf { hash: h, .. } | Slot::Collision { hash: h, .. } => {
                    let other_hash = *h;
                    let other = branch.slots.remove(pos);
                    let split = pair(other, other_hash, Slot::Leaf { hash, key, value }, hash, shift + BITS);
                    branch.slots.insert(pos, Slot::Sub(Arc::new(split)));
                    return;
                }
            }
        }
    }
}

impl<K, V> Default for Branch<K, V> {
    fn default() -> Self {
        Branch {
            bitmap: 0,
            slots: Vec::new(),
        }
    }
}

/// Never called: `insert` only asks for a slot that exists.
fn unreachable_pair<K, V>() -> (K, V) {
    unreachable!("slot exists")
}

/// A branch at `shift` holding two slots whose hashes differ.
fn pair<K, V>(a: Slot<K, V>, hash_a: u64, b: Slot<K, V>, hash_b: u64, shift: u32) -> Branch<K, V> {
    let (bit_a, bit_b) = (bit(hash_a, shift), bit(hash_b, shift));
    if bit_a == bit_b {
        // Different hashes differ within 64 bits, so this stops by shift 60.
        let sub = pair(a, hash_a, b, hash_b, shift + BITS);
        Branch {
            bitmap: bit_a,
            slots: vec![Slot::Sub(Arc::new(sub))],
        }
    } else {
        let slots = if bit_a < bit_b { vec![a, b] } else { vec![b, a] };
        Branch {
            bitmap: bit_a | bit_b,
            slots,
        }
    }
}

fn remove_in<K, V, Q>(branch: &mut Branch<K, V>, hash: u64, key: &Q, shift: u32) -> Option<V>
where
    K: Clone + Borrow<Q>,
    V: Clone,
    Q: Eq + ?Sized,
{
    let bit = bit(hash, shift);
    if branch.bitmap & bit == 0 {
        return None;
    }
    let pos = branch.position(bit);
    match &mut branch.slots[pos] {
        Slot::Leaf { hash: h, key: k, .. } => {
            if *h != hash || k.borrow() != key {
                return None;
            }
            branch.bitmap &= !bit;
            match branch.slots.remove(pos) {
                Slot::Leaf { value, .. } => Some(value),
                _ => None,
            }
        }
        Slot::Collision { hash: h, entries } => {
            if *h != hash {
                return None;
            }
            let i = entries.iter().position(|(k, _)| k.borrow() == key)?;
            let (_, value) = entries.remove(i);
            if entries.len() == 1 {
                if let Some((k, v)) = entries.pop() {
                    branch.slots[pos] = Slot::Leaf { hash, key: k, value: v };
                }
            }
            Some(value)
        }
        Slot::Sub(sub) => {
            let sub = Arc::make_mut(sub);
            let removed = remove_in(sub, hash, key, shift + BITS)?;
            // A branch left with one leaf folds into its parent's slot, so lookups stay short
            // and a chain of single-slot branches unwinds as the recursion returns.
            if sub.slots.len() == 1 && !matches!(sub.slots[0], Slot::Sub(_)) {
                if let Some(only) = sub.slots.pop() {
                    branch.slots[pos] = only;
                }
            }
            Some(removed)
        }
    }
}

pub(super) struct Iter<'a, K, V> {
    stack: Vec<std::slice::Iter<'a, Slot<K, V>>>,
    collision: std::slice::Iter<'a, (K, V)>,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, v)) = self.collision.next() {
                return Some((k, v));
            }
            let top = self.stack.last_mut()?;
            match top.next() {
                None => {
                    self.stack.pop();
                }
                Some(Slot::Leaf { key, value, .. }) => return Some((key, value)),
                Some(Slot::Collision { entries, .. }) => self.collision = entries.iter(),
                Some(Slot::Sub(sub)) => self.stack.push(sub.slots.iter()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn clones_share_until_written() {
        let mut a: PersistentMap<u32, u32> = PersistentMap::default();
        for i in 0..1000 {
            a.insert(i, i);
        }
        let b = a.clone();
        a.insert(5, 50);
        a.remove(&6);
        assert_eq!(b.get(&5), Some(&5));
        assert_eq!(b.get(&6), Some(&6));
        assert_eq!(a.get(&5), Some(&50));
        assert_eq!(a.get(&6), None);
        assert_eq!((a.len(), b.len()), (999, 1000));
    }

    #[test]
    fn full_hash_collisions_are_kept_apart() {
        // Force collisions by building slots by hand at one hash.
        let mut map: PersistentMap<&str, u32> = PersistentMap::default();
        map.insert_new(7, "x", 1);
        map.insert_new(7, "y", 2);
        map.insert_new(7 | (1 << 40), "z", 3);
        let found: Vec<_> = map.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(found.len(), 3);
        let root = map.root.as_mut().expect("root");
        assert_eq!(remove_in(Arc::make_mut(root), 7, "x", 0), Some(1));
        assert_eq!(remove_in(Arc::make_mut(root), 7, "x", 0), None);
        assert_eq!(remove_in(Arc::make_mut(root), 7, "y", 0), Some(2));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u8),
        Remove(u16),
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        // A small key space so removes hit; u16 keys spread over many levels.
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
                let mut listed: Vec<(u16, u8)> = map.iter().map(|(k, v)| (*k, *v)).collect();
                listed.sort();
                let mut expected: Vec<(u16, u8)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                expected.sort();
                prop_assert_eq!(listed, expected);
                for k in 0..300u16 {
                    prop_assert_eq!(map.get(&k), model.get(&k));
                }
            }
            let (mut last, _) = snapshots.pop().expect("pushed");
            let owned = last.take_owned_values().len();
            prop_assert!(owned <= snapshots.last().map_or(usize::MAX, |_| usize::MAX));
            prop_assert!(last.is_empty());
        }
    }
}
