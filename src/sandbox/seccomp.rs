//! Seccomp layer: the filters build.rs compiled from policy/seccomp.json (default action
//! KILL_PROCESS). `parse` allows what a parser needs on its two descriptors; `files` adds what
//! reading (and, for `--digest-store`, writing) beneath the landlock-granted directories needs.

/// Compiled seccomp programs (see build.rs, policy/seccomp.json).
pub(super) static POLICY_PARSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-parse.bpf"));
pub(super) static POLICY_FILES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-files.bpf"));

/// The compiled program as seccompiler's instructions (`None` if the blob is malformed or empty).
pub(super) fn decode_bpf(blob: &[u8]) -> Option<Vec<seccompiler::sock_filter>> {
    if blob.is_empty() || blob.len() % 8 != 0 {
        return None;
    }
    Some(
        blob.chunks_exact(8)
            .map(|c| seccompiler::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_blobs_decode() {
        let p = decode_bpf(POLICY_PARSE).expect("parse policy compiled");
        let f = decode_bpf(POLICY_FILES).expect("files policy compiled");
        assert!(p.len() > 10 && f.len() > p.len());
        assert!(decode_bpf(&[0u8; 7]).is_none());
        assert!(decode_bpf(&[]).is_none());
    }
}
