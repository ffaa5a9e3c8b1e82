//! Memory for the image reader's largest tables (the nid index, the inode list, the walk's
//! child list and the primary names): one anonymous mapping for all of them, whose whole 2 MiB
//! pages are backed by transparent huge pages.
//!
//! Why: these tables are fresh memory on every first mount of an image through the setuid
//! helper (about 4.3 MB for cs9-developer's 64k entries, some 1,100 pages of 4 KiB). Here a
//! fresh 4 KiB page costs about 1.4 µs to allocate, zero, charge and later free, a 2 MiB page
//! about 25 µs (6 MiB: 1.9-2.3 ms against 0.14-0.18 ms, docs/helper.md "First mounts: the
//! tables in huge pages"). Each table in its own allocation would gain nothing below 2 MiB and
//! round each one up to 2 MiB of resident memory above it (the helper's peak RSS went from 14
//! to 17-18 MB that way); the tables one after the other in one mapping give whole huge pages
//! for all but the last partial one, which stays in 4 KiB pages: no more resident memory than
//! separate allocations once the tables are full (a huge page is resident as soon as one of its
//! bytes is touched, so the memory comes in sooner).
//!
//! [`Region`] is the mapping; [`Slab`] a growable list of `Copy` values carved out of it, which
//! moves to an ordinary `Vec` when it outgrows its share (or when there is no region). The
//! region lives until its last slab is dropped.
//!
//! Syscalls: mmap(2), madvise(2) (`MADV_HUGEPAGE`, `MADV_NOHUGEPAGE`, `MADV_POPULATE_WRITE`),
//! munmap(2) (man 2 mmap, man 2 madvise), through rustix (whose calls are `unsafe fn`: they hand
//! out and take back raw memory).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Size of a transparent huge page on x86_64 and aarch64 (4 KiB base pages).
const HUGE: usize = 2 << 20;

/// Every slab starts on its own cache line.
const SLAB_ALIGN: usize = 64;

// A slab's start (the 2 MiB-aligned base plus a multiple of SLAB_ALIGN) is SLAB_ALIGN-aligned.
const _: () = assert!(SLAB_ALIGN.is_power_of_two() && HUGE % SLAB_ALIGN == 0);

/// An anonymous private mapping, 2 MiB-aligned, handed out front to back to [`Slab`]s.
pub(crate) struct Region {
    base: NonNull<u8>,
    len: usize,
    /// Bytes handed out so far (front to back).
    used: AtomicUsize,
}

// SAFETY: the region is plain memory owned by this value; its only shared state is `used`, an
// atomic. Each byte is handed out to at most one slab (`carve`), which alone reads and writes it.
unsafe impl Send for Region {}
// SAFETY: as for Send: `&Region` allows only `carve` (atomic) and reading `len`.
unsafe impl Sync for Region {}

impl Region {
    /// A region of `len` bytes (rounded up to whole 2 MiB pages) whose first `huge` bytes,
    /// rounded down to whole 2 MiB pages, are advised `MADV_HUGEPAGE`, and the rest
    /// `MADV_NOHUGEPAGE` (so that the last partial page stays in 4 KiB pages also where huge
    /// pages are on for all memory, `enabled=always`). A huge page is resident as a whole once
    /// any byte of it is touched: what is advised is resident once touched, written or not.
    /// The memory is reserved, not touched: pages come in as the slabs fill or are made present
    /// ([`Slab::populate`]). `None` if the mapping cannot be made (the slabs then live in
    /// ordinary `Vec`s).
    pub(crate) fn new(len: usize, huge: usize) -> Option<Arc<Region>> {
        let len = len.checked_next_multiple_of(HUGE)?;
        if len == 0 {
            return None;
        }
        // One huge page more than needed, so that a 2 MiB-aligned start lies inside; the
        // unaligned head and the tail beyond `len` are unmapped again.
        let over = len.checked_add(HUGE)?;
        // SAFETY: a new private anonymous mapping at an address the kernel picks: it overlaps
        // no memory of anyone else, and nothing refers to it yet.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                over,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
            )
        }
        .ok()?;
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE);
        let (head, tail) = (aligned - start, over - (aligned - start) - len);
        // SAFETY: the head [start, aligned) and the tail [aligned + len, start + over) lie inside
        // the mapping just made, which nothing refers to yet; both are page-aligned (`start` is,
        // and `aligned`, `len` and HUGE are multiples of the page size).
        unsafe {
            if head > 0 {
                let _ = rustix::mm::munmap(raw, head);
            }
            if tail > 0 {
                let _ = rustix::mm::munmap((aligned + len) as *mut std::ffi::c_void, tail);
            }
        }
        let huge = (huge.min(len) / HUGE) * HUGE;
        for (from, to, advice) in
            [(0, huge, rustix::mm::Advice::LinuxHugepage), (huge, len, rustix::mm::Advice::LinuxNoHugepage)]
        {
            if to > from {
                // SAFETY: [aligned + from, aligned + to) lies inside the region, which nothing
                // refers to yet. MADV_HUGEPAGE and MADV_NOHUGEPAGE only mark the range eligible
                // or not for transparent huge pages (a VMA flag): no contents or protections
                // change. Best effort: a kernel without THP says EINVAL, and the pages then come
                // in 4 KiB at a time.
                let _ = unsafe { rustix::mm::madvise((aligned + from) as *mut std::ffi::c_void, to - from, advice) };
            }
        }
        let base = NonNull::new(aligned as *mut u8)?;
        Some(Arc::new(Region { base, len, used: AtomicUsize::new(0) }))
    }

    /// Room for `cap` values of `T` that no other slab has, if the region has it left.
    fn carve<T>(&self, cap: usize) -> Option<NonNull<T>> {
        // (The base is 2 MiB-aligned and every slab starts on a SLAB_ALIGN boundary.)
        const { assert!(SLAB_ALIGN % std::mem::align_of::<T>() == 0) };
        let size = cap.checked_mul(std::mem::size_of::<T>())?;
        let align = SLAB_ALIGN;
        let mut at = 0;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                at = used.checked_next_multiple_of(align)?;
                let end = at.checked_add(size)?;
                (end <= self.len).then_some(end)
            })
            .ok()?;
        // SAFETY: at + size <= len: the offset lies inside the region's mapping (or at its end
        // for an empty slab), so the pointer stays within one allocation.
        NonNull::new(unsafe { self.base.as_ptr().add(at) }.cast::<T>())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of `len` bytes from `base`; dropped when the last
        // `Arc` goes, i.e. after every slab carved from it (each holds one).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A growable list of `Copy` values: in its share of a [`Region`], or in a `Vec`.
pub(crate) struct Slab<T: Copy> {
    store: Store<T>,
}

enum Store<T> {
    /// `len` values written at `ptr`, room for `cap`; `_region` keeps the memory mapped.
    Mapped {
        _region: Arc<Region>,
        ptr: NonNull<T>,
        len: usize,
        cap: usize,
    },
    Heap(Vec<T>),
}

// SAFETY: a Slab owns its values as a Vec does (a mapped one in memory no other slab has), so it
// may move to another thread, or be shared, as a Vec<T> may.
unsafe impl<T: Copy + Send> Send for Slab<T> {}
// SAFETY: as for Send.
unsafe impl<T: Copy + Sync> Sync for Slab<T> {}

impl<T: Copy> Slab<T> {
    /// Room for `cap` values, in `region` if it has that much left, else in a `Vec`.
    pub(crate) fn with_capacity_in(region: Option<&Arc<Region>>, cap: usize) -> Slab<T> {
        let mapped = region.filter(|_| std::mem::size_of::<T>() > 0 && cap > 0).and_then(|r| {
            let ptr = r.carve::<T>(cap)?;
            Some(Store::Mapped { _region: Arc::clone(r), ptr, len: 0, cap })
        });
        Slab { store: mapped.unwrap_or_else(|| Store::Heap(Vec::with_capacity(cap))) }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        match &self.store {
            Store::Mapped { cap, .. } => *cap,
            Store::Heap(v) => v.capacity(),
        }
    }

    /// Is it in a region?
    #[cfg(test)]
    fn is_mapped(&self) -> bool {
        matches!(self.store, Store::Mapped { .. })
    }

    /// Room for `extra` more values: a mapped slab without it moves to a `Vec` (with room for
    /// twice its share, or more if `extra` asks for more, as a `Vec` grows).
    pub(crate) fn reserve(&mut self, extra: usize) {
        let short = match &self.store {
            Store::Mapped { len, cap, .. } => cap - len < extra,
            Store::Heap(_) => false,
        };
        if short {
            let room = self.capacity().saturating_mul(2).max(self.len().saturating_add(extra)).max(4);
            let mut v = Vec::with_capacity(room);
            v.extend_from_slice(self);
            self.store = Store::Heap(v);
        } else if let Store::Heap(v) = &mut self.store {
            v.reserve(extra);
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, value: T) {
        match &mut self.store {
            Store::Mapped { ptr, len, cap, .. } if *len < *cap => {
                // SAFETY: `len < cap`: the slot lies inside this slab's share of the region,
                // which no one else reads or writes; writing a `Copy` value drops nothing.
                unsafe { ptr.as_ptr().add(*len).write(value) };
                *len += 1;
            }
            Store::Heap(v) => v.push(value),
            Store::Mapped { .. } => self.move_out_and_push(value),
        }
    }

    /// A full mapped slab: its values move to a Vec with room to grow, then `value` goes there.
    #[cold]
    #[inline(never)]
    fn move_out_and_push(&mut self, value: T) {
        self.reserve(1);
        let Store::Heap(v) = &mut self.store else {
            unreachable!("a full mapped slab moves to a Vec in reserve");
        };
        v.push(value);
    }

    /// Makes the pages of values `elems` (of the capacity) present and writable now, in one
    /// call, rather than one fault per page as they are first written
    /// (`MADV_POPULATE_WRITE`, as [`super::mem::populate_write`] does for a `Vec`; in the
    /// region's huge-page part a fault brings 2 MiB, so this costs little there, and it saves
    /// the faults where huge pages are off). Best effort.
    pub(crate) fn populate(&self, elems: std::ops::Range<usize>) {
        match &self.store {
            Store::Heap(v) => super::mem::populate_write(v, elems),
            // SAFETY: values below `cap` at `ptr` are this slab's share of the region, private
            // anonymous memory no one else uses, kept mapped by `_region` while `self` lives.
            Store::Mapped { ptr, cap, .. } => unsafe {
                super::mem::populate_write_in(ptr.as_ptr() as usize, std::mem::size_of::<T>(), *cap, elems)
            },
        }
    }

    /// Grows to `new_len` values, the new ones `value` (never shrinks).
    pub(crate) fn resize(&mut self, new_len: usize, value: T) {
        let extra = new_len.saturating_sub(self.len());
        self.reserve(extra);
        match &mut self.store {
            Store::Mapped { ptr, len, cap, .. } => {
                assert!(*cap - *len >= extra);
                for i in *len..*len + extra {
                    // SAFETY: `reserve` left room for `extra` more: every slot written lies
                    // inside this slab's share of the region (a `Copy` value drops nothing).
                    unsafe { ptr.as_ptr().add(i).write(value) };
                }
                *len += extra;
            }
            Store::Heap(v) => v.resize(v.len() + extra, value),
        }
    }
}

impl<T: Copy> std::ops::Deref for Slab<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        match &self.store {
            // SAFETY: the first `len` values at `ptr` were written by `push` or `resize` (the
            // only places `len` grows, each after writing) and lie in this
            // slab's share of the region, kept mapped by `_region`; `ptr` is aligned for T.
            Store::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
            Store::Heap(v) => v,
        }
    }
}

impl<T: Copy> std::ops::DerefMut for Slab<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.store {
            // SAFETY: as in `deref`; `&mut self` makes this the only reference to them.
            Store::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) },
            Store::Heap(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_share_a_region_without_overlap_and_move_out_when_full() {
        let region = Region::new(3 * HUGE, 2 * HUGE).expect("region");
        assert_eq!(region.base.as_ptr() as usize % HUGE, 0);
        let mut a: Slab<u32> = Slab::with_capacity_in(Some(&region), 1000);
        let mut b: Slab<(u64, u8)> = Slab::with_capacity_in(Some(&region), 10);
        assert!(a.is_mapped() && b.is_mapped());
        a.resize(1000, u32::MAX);
        for i in 0..10u64 {
            b.push((i, i as u8));
        }
        a[7] = 7;
        assert!(a.iter().enumerate().all(|(i, &x)| x == if i == 7 { 7 } else { u32::MAX }));
        assert!(b.iter().enumerate().all(|(i, &(x, y))| x == i as u64 && y == i as u8));
        // Full: it moves to a Vec (room for twice its share), keeping its values; the region
        // keeps the others'.
        b.push((10, 10));
        assert!(!b.is_mapped());
        assert_eq!((b.len(), b.capacity()), (11, 20));
        assert!(b.iter().enumerate().all(|(i, &(x, _))| x == i as u64));
        a.reserve(5);
        assert!(!a.is_mapped() && a.len() == 1000 && a[7] == 7 && a.capacity() >= 1005);
        // More than the region has left: a Vec from the start.
        let c: Slab<u64> = Slab::with_capacity_in(Some(&region), HUGE);
        assert!(!c.is_mapped() && c.capacity() >= HUGE);
        let none: Slab<u8> = Slab::with_capacity_in(None, 3);
        assert!(!none.is_mapped());
        // In a Vec it grows as a Vec does: filling its capacity moves nothing.
        let (mut h, mut v): (Slab<u32>, Vec<u32>) = (Slab::with_capacity_in(None, 1000), Vec::with_capacity(1000));
        for i in 0..1000 {
            h.push(i);
            v.push(i);
        }
        assert_eq!((h.capacity(), &h[..]), (v.capacity(), &v[..]));
        // Made present: the values stay (a mapped share and a Vec alike).
        let mut p: Slab<u64> = Slab::with_capacity_in(Some(&region), 2048);
        p.resize(100, 5);
        p.populate(0..2048);
        p.populate(3000..4000);
        let (from, to) = (10, 5); // reversed and empty ranges make no call
        p.populate(from..to);
        p.populate(0..0);
        assert!(p.is_mapped() && p.len() == 100 && p.iter().all(|&x| x == 5));
        h.populate(0..5000);
        assert!(h.iter().enumerate().all(|(i, &x)| x == i as u32));
        // The region outlives its handle while a slab holds it.
        let mut d: Slab<u16> = Slab::with_capacity_in(Some(&region), 4);
        drop(region);
        d.push(9);
        assert_eq!(&d[..], &[9]);
    }

    #[test]
    fn made_present_only_inside_the_share() {
        // The pages `populate` advises lie inside the share, whatever the range and page size.
        let (base, size, cap) = (0x20_0000 + 64, 12, 10_000);
        for page in [4096, 16384, 65536] {
            for (a, b) in [(0, cap), (0, 1), (5, 4), (0, 0), (100, 50_000), (cap, cap + 10), (17, 9_999)] {
                if let Some((first, last)) = crate::sys::mem::inner_pages_of(base, size, cap, a..b, page) {
                    assert!(first < last && first % page == 0 && last % page == 0);
                    assert!(first >= base + a * size && last <= base + b.min(cap) * size, "{a}..{b} {page}");
                }
            }
        }
    }

    #[test]
    fn the_sure_part_is_in_huge_pages_and_the_rest_is_not() {
        // Where this process may have transparent huge pages (madvise or always mode: the tail
        // is advised against them for the latter).
        if !crate::sys::mem::thp_usable() {
            return;
        }
        let region = Region::new(HUGE + HUGE / 2, HUGE + HUGE / 2).expect("region");
        let mut s: Slab<u64> = Slab::with_capacity_in(Some(&region), (HUGE + HUGE / 2) / 8);
        s.resize(s.capacity(), 1);
        // The region's mappings (it may be split where its advice changes).
        let base = region.base.as_ptr() as usize;
        let maps = crate::sys::mem::smaps();
        let ours = maps.iter().filter(|m| m.start >= base && m.start < base + 2 * HUGE);
        let (huge, rss) = ours.fold((0, 0), |(h, r), m| (h + m.kb("AnonHugePages"), r + m.kb("Rss")));
        // The first 2 MiB in one huge page (if the kernel had one free), the half page after it
        // in 4 KiB pages: resident no more than written.
        assert!(huge == 0 || huge == HUGE / 1024, "AnonHugePages {huge} kB");
        assert!(rss <= (HUGE + HUGE / 2) / 1024, "Rss {rss} kB");
        assert!(s.iter().all(|&x| x == 1));
    }
}
