//! Memory advice for large buffers: `madvise(2)` with `MADV_HUGEPAGE` (the builder's) or
//! `MADV_POPULATE_WRITE` (the image reader's tables: here where they are ordinary allocations,
//! through `crate::sys::tables::Slab::populate` where they share its mapping of huge pages).
//!
//! rustix wraps madvise, but as an `unsafe fn` (advice such as `MADV_DONTNEED` discards memory
//! under live references); these wrappers confine the call to two advices that change no
//! memory contents and no permissions, over whole pages inside a `Vec`'s own allocation
//! ([`inner_pages`]).
//!
//! Why: a build touches tens of megabytes of fresh anonymous memory (the input buffer, the tree's
//! node arena, the writer's records). With transparent huge pages in `madvise` mode (Debian's
//! default) each 4 KiB page costs a page fault; a cs9-developer build took ~14,000 of them, a
//! third of its CPU time in the kernel. Advised ranges are filled 2 MiB at a time instead. The
//! node arena, the writer's inode records and the first 32 MiB of the input buffer are advised
//! (advising all of a 158 MB TOC's buffer measured no faster; docs/writer.md, "Build speed").

/// Size of a transparent huge page on x86_64 and aarch64 (4 KiB base pages).
const HUGE: usize = 2 << 20;

/// The largest base page size of the architectures this builds for (x86_64: 4 KiB; aarch64: 4,
/// 16 or 64 KiB; the build refuses others, see `sys::mount`): ranges rounded inwards to it are
/// whole pages whatever the kernel's size. A constant rather than the kernel's own size, because
/// asking for that (rustix's `param::page_size` reads the aux vector, with
/// `prctl(PR_GET_AUXV)` or from /proc) is outside the sandboxed child's seccomp policy, and the
/// image reader runs in that child (composefs-info).
pub(crate) const PAGE_BOUND: usize = if cfg!(target_arch = "aarch64") { 64 << 10 } else { 4 << 10 };

/// Asks the kernel to back the whole 2 MiB-aligned pages within the first `n` elements of `v`'s
/// allocated capacity with transparent huge pages when they are first touched (`MADV_HUGEPAGE`).
/// `n` should be what will surely be filled: a huge page is resident as a whole once any byte of
/// it is touched, so advising beyond the filled part would add up to 2 MiB of resident memory.
/// Best effort: does nothing when the span holds no whole aligned 2 MiB page, and ignores errors
/// (a kernel without THP says EINVAL; THP switched off system-wide makes the advice a no-op).
///
/// Syscall: madvise(2) (man 2 madvise), advice `MADV_HUGEPAGE`.
pub(crate) fn advise_huge_pages<T>(v: &Vec<T>, n: usize) {
    let Some((first, last)) = inner_pages(v, 0..n, HUGE) else {
        return;
    };
    // SAFETY: [first, last) lies inside the allocation `v` owns (rounded inwards to page
    // boundaries), so the call cannot reach memory of anyone else. MADV_HUGEPAGE only sets the
    // range's eligibility for transparent huge pages (a VMA flag): it changes neither the
    // contents nor the protection of any page, so no reference into `v` (or to data sharing a
    // page with it) observes a difference.
    let _ =
        unsafe { rustix::mm::madvise(first as *mut std::ffi::c_void, last - first, rustix::mm::Advice::LinuxHugepage) };
}

/// Asks the kernel to back the whole pages within elements `elems` of `v`'s allocated capacity
/// with writable memory now, in one call, instead of one page fault per page when they are first
/// written (`MADV_POPULATE_WRITE`, Linux 5.14). The range should be what will surely be written:
/// its pages become resident. Best effort: ignores errors (an older kernel says EINVAL; the
/// first writes then fault as before).
///
/// Syscall: madvise(2) (man 2 madvise), advice `MADV_POPULATE_WRITE`.
pub(crate) fn populate_write<T>(v: &Vec<T>, elems: std::ops::Range<usize>) {
    // SAFETY: `v` owns its allocation of `capacity` elements, private anonymous memory (the
    // global allocator's), and the borrow keeps it alive for the call.
    unsafe { populate_write_in(v.as_ptr() as usize, std::mem::size_of::<T>(), v.capacity(), elems) }
}

/// [`populate_write`] for elements `elems` (clamped to `cap`) of `cap` elements of `size` bytes
/// at address `base` (`crate::sys::tables::Slab::populate` for a slab in its region).
///
/// # Safety
/// `[base, base + cap * size)` must be private anonymous memory that the caller owns and that
/// stays mapped for the call.
pub(crate) unsafe fn populate_write_in(base: usize, size: usize, cap: usize, elems: std::ops::Range<usize>) {
    // Whole pages of the largest base size the architecture has (madvise rounds a length up to
    // the kernel's: pages of 4 KiB against a larger page size could reach past the memory).
    let Some((first, last)) = inner_pages_of(base, size, cap, elems, PAGE_BOUND) else {
        return;
    };
    // SAFETY: [first, last) lies inside the caller's memory (rounded inwards to page
    // boundaries, of at least the kernel's page size, so its rounding of the length adds
    // nothing), so the call cannot reach memory of anyone else. MADV_POPULATE_WRITE only makes
    // the range's pages present and writable, as a write fault would, without writing: a page
    // already present keeps its contents, a missing one of this private anonymous memory comes
    // in zero-filled as it would on its first touch. No protection changes, so no reference
    // into the memory observes a difference.
    let _ = unsafe {
        rustix::mm::madvise(first as *mut std::ffi::c_void, last - first, rustix::mm::Advice::LinuxPopulateWrite)
    };
}

/// The whole `page`-aligned pages (`page` a power of two) that lie within elements `elems` of
/// `v`'s allocated capacity, as byte addresses `[first, last)`; `None` when there is none.
fn inner_pages<T>(v: &Vec<T>, elems: std::ops::Range<usize>, page: usize) -> Option<(usize, usize)> {
    inner_pages_of(v.as_ptr() as usize, std::mem::size_of::<T>(), v.capacity(), elems, page)
}

/// The whole `page`-aligned pages (`page` a power of two) that lie within elements `elems`
/// (clamped to `cap`) of `cap` elements of `size` bytes at address `base`, as byte addresses
/// `[first, last)`; `None` when there is none (an empty or reversed range among them). Both
/// ends are rounded inwards, so the pages lie inside `[base, base + cap * size)`; `page` must
/// be at least the kernel's page size for a madvise over them to stay there (the kernel rounds
/// a length up to its page size).
pub(crate) fn inner_pages_of(
    base: usize,
    size: usize,
    cap: usize,
    elems: std::ops::Range<usize>,
    page: usize,
) -> Option<(usize, usize)> {
    let end_elem = elems.end.min(cap);
    if elems.start >= end_elem {
        return None;
    }
    // No overflow: both ends lie within the allocation (start < end <= capacity).
    let (start, end) = (base + elems.start * size, base + end_elem * size);
    let (first, last) = (start.next_multiple_of(page), end & !(page - 1));
    (first < last).then_some((first, last))
}

/// A mapping of /proc/self/smaps (for tests): its address range and its field lines.
#[cfg(test)]
pub(crate) struct Smap {
    pub(crate) start: usize,
    pub(crate) end: usize,
    fields: Vec<(String, String)>,
}

#[cfg(test)]
impl Smap {
    /// The value of field `name` (what follows `name:`, trimmed).
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A size field (`Rss`, `AnonHugePages`, ...) in kB; 0 if absent.
    pub(crate) fn kb(&self, name: &str) -> usize {
        self.field(name).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    }
}

/// The mappings of this process, from /proc/self/smaps (for tests).
#[cfg(test)]
pub(crate) fn smaps() -> Vec<Smap> {
    let mut maps: Vec<Smap> = Vec::new();
    for line in std::fs::read_to_string("/proc/self/smaps").unwrap().lines() {
        let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
        if let Some((Ok(start), Ok(end))) =
            range.map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)))
        {
            maps.push(Smap { start, end, fields: Vec::new() });
        } else if let (Some(m), Some((n, v))) = (maps.last_mut(), line.split_once(':')) {
            m.fields.push((n.to_string(), v.trim().to_string()));
        }
    }
    maps
}

/// Whether this process may get transparent huge pages where it advises them (for tests): the
/// kernel has them, not switched off (`[never]`), and not for this process
/// (prctl(PR_SET_THP_DISABLE) shows as `THP_enabled: 0`).
#[cfg(test)]
pub(crate) fn thp_usable() -> bool {
    let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let thp_off = status.lines().any(|l| l.starts_with("THP_enabled:") && l.trim_end().ends_with('0'));
    !enabled.is_empty() && !enabled.contains("[never]") && !thp_off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_keeps_contents_and_tolerates_small_buffers() {
        let small: Vec<u8> = vec![1, 2, 3];
        advise_huge_pages(&small, 3);
        assert_eq!(small, [1, 2, 3]);
        let mut big: Vec<u64> = (0..(3 * HUGE / 8) as u64).collect();
        advise_huge_pages(&big, big.len());
        // The kernel recorded the advice: the mapping holding the aligned middle of `big` is
        // flagged `hg` (where this process may have transparent huge pages: `thp_usable`).
        if thp_usable() {
            let probe = (big.as_ptr() as usize).next_multiple_of(HUGE);
            assert!(vm_flags_at(probe).split_whitespace().any(|f| f == "hg"), "{}", vm_flags_at(probe));
        }
        // Contents stay, also when the advised buffer is grown (reallocated) afterwards.
        big.push(7);
        assert!(big.iter().take(3 * HUGE / 8).enumerate().all(|(i, &x)| x == i as u64));
        let empty: Vec<u32> = Vec::new();
        advise_huge_pages(&empty, 10);
    }

    #[test]
    fn populated_pages_are_written_without_faults_and_keep_contents() {
        // Minor faults of this thread (field 10 of /proc/thread-self/stat; other test threads
        // do not count) while writing a fresh 40 MiB buffer (above malloc's largest mmap
        // threshold, so never memory already touched): one per page without the advice (one per
        // 2 MiB where huge pages are always on), none with it (Linux 5.14 on).
        fn minflt() -> u64 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            after_comm.split_whitespace().nth(7).unwrap().parse().unwrap()
        }
        fn faults_writing(populate: bool) -> u64 {
            let mut v: Vec<u8> = Vec::with_capacity(40 << 20);
            if populate {
                populate_write(&v, 0..40 << 20);
            }
            let before = minflt();
            v.resize(40 << 20, 7);
            let n = minflt() - before;
            assert!(v.iter().all(|&b| b == 7));
            n
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse::<u32>().ok());
        let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        assert!(faults_writing(false) >= 19);
        if version >= (5, 14) {
            assert!(faults_writing(true) <= 2, "{release}");
        }
        // Contents already there stay; a buffer without a whole page and an empty one are fine.
        let mut kept: Vec<u64> = (0..(1u64 << 17)).collect();
        kept.reserve(1 << 17);
        populate_write(&kept, 0..kept.capacity());
        populate_write(&kept, kept.capacity() + 1..kept.capacity() + 10);
        assert!(kept.iter().enumerate().all(|(i, &x)| x == i as u64));
        let small: Vec<u8> = vec![1, 2, 3];
        populate_write(&small, 0..3);
        assert_eq!(small, [1, 2, 3]);
        populate_write(&Vec::<u32>::new(), 0..10);
    }

    /// The `VmFlags` line of /proc/self/smaps for the mapping that contains `addr`.
    fn vm_flags_at(addr: usize) -> String {
        smaps()
            .into_iter()
            .find(|m| m.start <= addr && addr < m.end)
            .and_then(|m| m.field("VmFlags").map(str::to_string))
            .unwrap_or_else(|| panic!("no mapping holds {addr:#x}"))
    }
}
