//! Xattr names and (name, value) pairs, interned: every distinct name gets a [`KeyId`] once, with
//! what the layout and the emitter need of it (EROFS prefix index, name suffix, name-filter bit,
//! whether it is a POSIX ACL), and every distinct pair is counted once for the shared table.
//!
//! Why: an image has few distinct names (the overlay xattrs the writer adds, a handful of input
//! names) but one or two xattrs per file. Keying everything by name bytes meant hashing and
//! comparing the same 24-byte names over and over (15 % of a 500k-entry build went into byte
//! comparisons of the xattr de-duplication), and splitting each name's prefix three times.
//! Names the writer itself adds are interned up front under fixed ids ([`K_METACOPY`]...), so
//! adding them costs nothing; input names are hashed once per xattr.
//!
//! Both tables are hashbrown `HashTable`s of small ids with their 32-bit keyed hash (SipHash
//! with random keys per image: hostile names or values cannot force collisions), so growing them
//! rehashes nothing.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

use super::{Cat, INLINE};
use crate::erofs::format::*;

/// Index of a distinct xattr name in [`Keys::list`].
pub(super) type KeyId = u32;

/// The names the writer adds, interned first in this order (their ids are fixed).
pub(super) const K_METACOPY: KeyId = 0;
pub(super) const K_REDIRECT: KeyId = 1;
pub(super) const K_ESC_WHITEOUT: KeyId = 2;
pub(super) const K_USER_WHITEOUT: KeyId = 3;
pub(super) const K_ESC_WHITEOUTS: KeyId = 4;
pub(super) const K_USER_WHITEOUTS: KeyId = 5;
pub(super) const K_ESC_OPAQUE: KeyId = 6;
pub(super) const K_USER_OPAQUE: KeyId = 7;
pub(super) const K_OPAQUE: KeyId = 8;
pub(super) const K_SELINUX: KeyId = 9;

/// One distinct xattr name.
pub(super) struct KeyInfo<'a> {
    /// The full name as stored (escaped where the input's was in the overlay namespace).
    pub(super) name: Cat<'a>,
    /// EROFS name index (which prefix the entry leaves out) and the rest of the name.
    pub(super) index: u8,
    pub(super) suffix: Cat<'a>,
    /// This name's bit in an inode's xattr name filter.
    pub(super) filter_bit: u32,
    /// `system.posix_acl_access` or `system.posix_acl_default` (the header's ACL flag).
    pub(super) acl: bool,
}

/// The distinct xattr names of an image.
pub(super) struct Keys<'a> {
    pub(super) list: Vec<KeyInfo<'a>>,
    table: HashTable<(KeyId, u32)>,
    hasher: RandomState,
}

/// An overlay xattr name escaped the way user xattrs in the overlay namespace are stored
/// (`trusted.overlay.NAME` → `trusted.overlay.overlay.NAME`).
fn escaped(name: &'static [u8]) -> Cat<'static> {
    Cat::two(OVL_ESCAPED_PREFIX, &name[OVL_PREFIX.len()..])
}

/// The table's 64-bit hash from a stored 32-bit one (hashbrown takes the bucket from the low
/// bits and the tag from the top seven).
fn spread(h: u32) -> u64 {
    (h as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ h as u64
}

/// Keyed hash of a two-part string, by its bytes (SipHash is a streaming hash: where the parts
/// split does not matter, as `Cat` equality wants), with `tag` (a name id) mixed in after by an
/// odd multiplier: one value under two names never collides, and every write saved counts
/// (this runs once per xattr of the image).
fn hash_cat(hasher: &RandomState, tag: u32, c: &Cat<'_>) -> u32 {
    let mut h = hasher.build_hasher();
    if !c.a.is_empty() {
        h.write(c.a);
    }
    h.write(c.b);
    h.finish() as u32 ^ tag.wrapping_mul(0x9e37_79b9)
}

impl<'a> Keys<'a> {
    pub(super) fn new() -> Self {
        let mut k = Keys { list: Vec::new(), table: HashTable::new(), hasher: RandomState::new() };
        for (id, name) in [
            (K_METACOPY, Cat::one(OVL_METACOPY)),
            (K_REDIRECT, Cat::one(OVL_REDIRECT)),
            (K_ESC_WHITEOUT, escaped(OVL_WHITEOUT)),
            (K_USER_WHITEOUT, Cat::one(USER_OVL_WHITEOUT)),
            (K_ESC_WHITEOUTS, escaped(OVL_WHITEOUTS)),
            (K_USER_WHITEOUTS, Cat::one(USER_OVL_WHITEOUTS)),
            (K_ESC_OPAQUE, escaped(OVL_OPAQUE)),
            (K_USER_OPAQUE, Cat::one(USER_OVL_OPAQUE)),
            (K_OPAQUE, Cat::one(OVL_OPAQUE)),
            (K_SELINUX, Cat::one(SELINUX_XATTR)),
        ] {
            let got = k.intern(name);
            debug_assert_eq!(got, id);
        }
        k
    }

    /// The id of `name` (a new one the first time it is seen).
    pub(super) fn intern(&mut self, name: Cat<'a>) -> KeyId {
        let h = hash_cat(&self.hasher, 0, &name);
        let list = &self.list;
        if let Some(&(id, _)) = self.table.find(spread(h), |&(id, hh)| hh == h && list[id as usize].name == name) {
            return id;
        }
        let id = self.list.len() as KeyId;
        self.list.push(KeyInfo::new(name));
        self.table.insert_unique(spread(h), (id, h), |&(_, hh)| spread(hh));
        id
    }

    pub(super) fn get(&self, id: KeyId) -> &KeyInfo<'a> {
        &self.list[id as usize]
    }
}

impl<'a> KeyInfo<'a> {
    fn new(name: Cat<'a>) -> Self {
        let mut buf = Vec::with_capacity(name.len());
        let (index, suffix) = xattr_prefix_split(name.copy_to(&mut buf));
        let bit = xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(index as u32)) & (XATTR_FILTER_BITS - 1);
        let full = name.len();
        let suffix = name.skip(full - suffix.len());
        let acl = name.eq_bytes(b"system.posix_acl_access") || name.eq_bytes(b"system.posix_acl_default");
        KeyInfo { name, index, suffix, filter_bit: 1 << bit, acl }
    }
}

/// One xattr of an inode (12 bytes: the value is its pair's).
#[derive(Clone, Copy, Debug)]
pub(super) struct X {
    pub(super) key: KeyId,
    /// Index in [`Pairs::list`]: the (name, value) pair.
    pub(super) pair: u32,
    /// Offset in the shared xattr table, or [`INLINE`] when stored in the inode.
    pub(super) shared: u32,
}

/// An xattr while its inode's set is being made.
#[derive(Clone, Copy, Debug)]
pub(super) struct XV<'a> {
    pub(super) key: KeyId,
    pub(super) value: Cat<'a>,
}

/// Per-inode xattr working set. The overlay xattrs the writer adds are checked against
/// [`XATTR_BUDGET`] the way the reference checks them: its writer works on a copy of the tree
/// whose budget counter starts at zero (the input's own xattrs were checked by the input parser),
/// and the counter uses wrapping (size_t) arithmetic when a replaced input xattr is subtracted.
///
/// Which names are present is kept per name id (`slot`, valid for the current inode's
/// generation), so a duplicate name is found without a search however many xattrs an inode has.
pub(super) struct XSet<'a> {
    pub(super) v: Vec<XV<'a>>,
    used: u64,
    /// Per name id: (generation, position in `v`).
    slot: Vec<(u32, u32)>,
    generation: u32,
}

impl<'a> XSet<'a> {
    pub(super) fn new() -> Self {
        XSet { v: Vec::new(), used: 0, slot: Vec::new(), generation: 0 }
    }

    /// Start the next inode's set.
    pub(super) fn clear(&mut self) {
        self.v.clear();
        self.used = 0;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: forget every old generation at once.
            self.slot.iter_mut().for_each(|s| *s = (0, 0));
            self.generation = 1;
        }
    }

    fn find(&self, key: KeyId) -> Option<usize> {
        match self.slot.get(key as usize) {
            Some(&(g, pos)) if g == self.generation => Some(pos as usize),
            _ => None,
        }
    }

    fn remove(&mut self, i: usize) -> XV<'a> {
        let old = self.v.swap_remove(i);
        self.slot[old.key as usize].0 = 0;
        if let Some(moved) = self.v.get(i) {
            self.slot[moved.key as usize].1 = i as u32;
        }
        old
    }

    fn push(&mut self, key: KeyId, value: Cat<'a>) {
        if self.slot.len() <= key as usize {
            self.slot.resize(key as usize + 1, (0, 0));
        }
        self.slot[key as usize] = (self.generation, self.v.len() as u32);
        self.v.push(XV { key, value });
    }

    /// Load an input xattr (replacing an earlier one of the same name), unaccounted.
    pub(super) fn load(&mut self, key: KeyId, value: Cat<'a>) {
        if let Some(i) = self.find(key) {
            self.remove(i);
        }
        self.push(key, value);
    }

    /// Add or replace an xattr with the budget check (`name_len`: the length of the name).
    pub(super) fn set(&mut self, key: KeyId, name_len: usize, value: Cat<'a>) -> Result<(), String> {
        if let Some(i) = self.find(key) {
            let old = self.remove(i);
            if self.v.is_empty() {
                self.used = 0;
            } else {
                self.used = self.used.wrapping_sub((7 + name_len + old.value.len()) as u64);
            }
        }
        let mut cost = (7 + name_len + value.len()) as u64;
        if self.v.is_empty() {
            cost += 12;
        }
        if self.used.wrapping_add(cost) > XATTR_BUDGET as u64 {
            return Err(format!("xattrs exceed the per-inode budget of {XATTR_BUDGET} bytes"));
        }
        self.used = self.used.wrapping_add(cost);
        self.push(key, value);
        Ok(())
    }
}

/// One distinct (name, value) pair of the image and how many inodes carry it.
pub(super) struct Pair<'a> {
    pub(super) key: KeyId,
    pub(super) value: Cat<'a>,
    pub(super) count: u32,
    /// Offset in the shared table once placed there, else [`INLINE`].
    pub(super) offset: u32,
}

/// The distinct (name, value) pairs of an image.
pub(super) struct Pairs<'a> {
    pub(super) list: Vec<Pair<'a>>,
    table: HashTable<(u32, u32)>,
    hasher: RandomState,
}

impl<'a> Pairs<'a> {
    pub(super) fn with_capacity(n: usize) -> Self {
        Pairs { list: Vec::with_capacity(n), table: HashTable::with_capacity(n), hasher: RandomState::new() }
    }

    /// Count one more use of (key, value); returns the pair's index.
    pub(super) fn add(&mut self, key: KeyId, value: Cat<'a>) -> u32 {
        let h = hash_cat(&self.hasher, key, &value);
        let list = &mut self.list;
        if let Some(&(id, _)) = self.table.find(spread(h), |&(id, hh)| {
            let p = &list[id as usize];
            hh == h && p.key == key && p.value == value
        }) {
            list[id as usize].count += 1;
            return id;
        }
        let id = list.len() as u32;
        list.push(Pair { key, value, count: 1, offset: INLINE });
        self.table.insert_unique(spread(h), (id, h), |&(_, hh)| spread(hh));
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_interned_by_bytes_whatever_their_split() {
        let mut k = Keys::new();
        // An input name equal to one the writer adds gets the writer's id.
        assert_eq!(k.intern(Cat::one(b"trusted.overlay.overlay.whiteout")), K_ESC_WHITEOUT);
        assert_eq!(k.intern(Cat::two(b"user.", b"overlay.opaque")), K_USER_OPAQUE);
        let a = k.intern(Cat::one(b"user.a"));
        let b = k.intern(Cat::two(b"user.", b"b"));
        assert_ne!(a, b);
        assert_eq!(k.intern(Cat::two(b"us", b"er.a")), a);
        assert_eq!(k.list.len(), K_SELINUX as usize + 3);
        let acl = k.intern(Cat::one(b"system.posix_acl_default"));
        assert!(k.get(acl).acl && !k.get(a).acl);
        // Prefix index, suffix and filter bit as the format computes them from the bytes.
        for id in 0..k.list.len() as KeyId {
            let info = k.get(id);
            let mut buf = Vec::new();
            let (index, suffix) = xattr_prefix_split(info.name.copy_to(&mut buf));
            assert_eq!(info.index, index);
            let mut s = Vec::new();
            assert_eq!(info.suffix.copy_to(&mut s), suffix);
            let bit = xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(index as u32)) & (XATTR_FILTER_BITS - 1);
            assert_eq!(info.filter_bit, 1 << bit);
        }
    }

    #[test]
    fn pairs_are_counted_by_name_and_value_bytes() {
        let mut p = Pairs::with_capacity(0);
        let x = p.add(K_REDIRECT, Cat::two(b"/", b"ab/cd"));
        assert_eq!(p.add(K_REDIRECT, Cat::one(b"/ab/cd")), x);
        assert_ne!(p.add(K_REDIRECT, Cat::one(b"/ab/ce")), x);
        assert_ne!(p.add(K_METACOPY, Cat::one(b"/ab/cd")), x);
        for _ in 0..1000 {
            p.add(K_METACOPY, Cat::one(b""));
        }
        assert_eq!(p.list[x as usize].count, 2);
        assert_eq!(p.list.len(), 4);
        assert_eq!(p.list.iter().map(|q| q.count).sum::<u32>(), 1004);
    }

    #[test]
    fn xset_replaces_by_name_across_inodes() {
        let mut s = XSet::new();
        for round in 0..3 {
            s.clear();
            for k in 0..40u32 {
                s.load(20 + k % 25, Cat::one(b"v"));
            }
            assert_eq!(s.v.len(), 25, "round {round}");
            let mut keys: Vec<KeyId> = s.v.iter().map(|x| x.key).collect();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), 25);
            // The later value wins, the budget counts only what the writer sets.
            s.set(K_METACOPY, OVL_METACOPY.len(), Cat::one(b"")).unwrap();
            s.set(K_METACOPY, OVL_METACOPY.len(), Cat::one(b"x")).unwrap();
            assert_eq!(s.v.iter().filter(|x| x.key == K_METACOPY).count(), 1);
            assert_eq!(s.used, (7 + OVL_METACOPY.len() + 1) as u64);
        }
        s.clear();
        assert!(s.find(20).is_none() && s.v.is_empty());
    }
}
