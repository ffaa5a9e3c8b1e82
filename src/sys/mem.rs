//! Memory advice for the builder's large buffers: `madvise(2)` with `MADV_HUGEPAGE`.
//!
//! rustix wraps madvise, but as an `unsafe fn` (advice such as `MADV_DONTNEED` discards memory
//! under live references); this wrapper confines the call to the one advice that changes no
//! memory contents and no permissions, over memory the caller owns.
//!
//! Why: a build touches tens of megabytes of fresh anonymous memory (the input buffer, the tree's
//! node arena, the writer's records). With transparent huge pages in `madvise` mode (Debian's
//! default) each 4 KiB page costs a page fault; a cs9-developer build took ~14,000 of them, a
//! third of its CPU time in the kernel. Advised ranges are filled 2 MiB at a time instead. The
//! node arena, the writer's inode records and the first 32 MiB of the input buffer are advised
//! (advising all of a 158 MB TOC's buffer measured no faster; docs/writer.md, "Build speed").

/// Size of a transparent huge page on x86_64 and aarch64 (4 KiB base pages).
const HUGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB-aligned pages within the first `n` elements of `v`'s
/// allocated capacity with transparent huge pages when they are first touched (`MADV_HUGEPAGE`).
/// `n` should be what will surely be filled: a huge page is resident as a whole once any byte of
/// it is touched, so advising beyond the filled part would add up to 2 MiB of resident memory.
/// Best effort: does nothing when the span holds no whole aligned 2 MiB page, and ignores errors
/// (a kernel without THP says EINVAL; THP switched off system-wide makes the advice a no-op).
///
/// Syscall: madvise(2) (man 2 madvise), advice `MADV_HUGEPAGE`.
pub(crate) fn advise_huge_pages<T>(v: &Vec<T>, n: usize) {
    let start = v.as_ptr() as usize;
    let Some(end) = n.min(v.capacity()).checked_mul(std::mem::size_of::<T>()).and_then(|b| start.checked_add(b)) else {
        return;
    };
    let first = start.next_multiple_of(HUGE);
    let last = end & !(HUGE - 1);
    if last <= first {
        return;
    }
    // SAFETY: [first, last) lies inside the allocation `v` owns (rounded inwards to page
    // boundaries), so the call cannot reach memory of anyone else. MADV_HUGEPAGE only sets the
    // range's eligibility for transparent huge pages (a VMA flag): it changes neither the
    // contents nor the protection of any page, so no reference into `v` (or to data sharing a
    // page with it) observes a difference.
    let _ =
        unsafe { rustix::mm::madvise(first as *mut std::ffi::c_void, last - first, rustix::mm::Advice::LinuxHugepage) };
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
        // flagged `hg` (where the kernel has transparent huge pages at all and this process may
        // use them: prctl(PR_SET_THP_DISABLE) shows as `THP_enabled: 0`).
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let thp_off = status.lines().any(|l| l.starts_with("THP_enabled:") && l.trim_end().ends_with('0'));
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() && !thp_off {
            let probe = (big.as_ptr() as usize).next_multiple_of(HUGE);
            assert!(vm_flags_at(probe).split_whitespace().any(|f| f == "hg"), "{}", vm_flags_at(probe));
        }
        // Contents stay, also when the advised buffer is grown (reallocated) afterwards.
        big.push(7);
        assert!(big.iter().take(3 * HUGE / 8).enumerate().all(|(i, &x)| x == i as u64));
        let empty: Vec<u32> = Vec::new();
        advise_huge_pages(&empty, 10);
    }

    /// The `VmFlags` line of /proc/self/smaps for the mapping that contains `addr`.
    fn vm_flags_at(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                        inside = a <= addr && addr < b;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(f) = line.strip_prefix("VmFlags:") {
                    return f.to_string();
                }
            }
        }
        panic!("no mapping holds {addr:#x}")
    }
}
