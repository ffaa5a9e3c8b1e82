//! The one message the child sends the parent on the status pipe: `CFSB`, a kind byte, a
//! little-endian u32 length and at most [`MAX_MESSAGE`] bytes of text. The parent accepts it only
//! whole and well-formed, and only as printable one-line text.

use std::os::fd::OwnedFd;

use super::SandboxError;

/// Largest status message the parent accepts from the child.
pub(super) const MAX_STATUS: usize = 16 * 1024;
/// Longest job error message passed on (the rest is cut).
const MAX_MESSAGE: usize = 4096;
const STATUS_MAGIC: &[u8; 4] = b"CFSB";

pub(super) const KIND_OK: u8 = 0;
pub(super) const KIND_JOB: u8 = 1;
pub(super) const KIND_SETUP: u8 = 2;
pub(super) const KIND_PANIC: u8 = 3;

pub(super) fn send_status(status: &OwnedFd, kind: u8, msg: &[u8]) {
    let msg = &msg[..msg.len().min(MAX_MESSAGE)];
    let mut buf = Vec::with_capacity(9 + msg.len());
    buf.extend_from_slice(STATUS_MAGIC);
    buf.push(kind);
    buf.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    buf.extend_from_slice(msg);
    let mut rest = &buf[..];
    while !rest.is_empty() {
        match rustix::io::write(status, rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Validates the child's status message: magic, kind, length, and nothing after it.
pub(super) fn parse_status(buf: &[u8]) -> Result<(u8, String), SandboxError> {
    let bad = |reason: &str| SandboxError::MalformedStatus { reason: reason.to_string() };
    if buf.is_empty() {
        return Err(bad("the child exited without a status message"));
    }
    if buf.len() < 9 || &buf[..4] != STATUS_MAGIC {
        return Err(bad("bad header"));
    }
    let kind = buf[4];
    if kind > KIND_PANIC {
        return Err(bad("unknown kind"));
    }
    let len = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if len > MAX_MESSAGE || buf.len() != 9 + len {
        return Err(bad("length mismatch"));
    }
    Ok((kind, sanitize(&buf[9..])))
}

/// Printable one-line text from the child's (untrusted) message.
fn sanitize(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = STATUS_MAGIC.to_vec();
        v.push(kind);
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn status_well_formed() {
        assert_eq!(parse_status(&msg(KIND_OK, b"")).unwrap(), (KIND_OK, String::new()));
        assert_eq!(parse_status(&msg(KIND_JOB, b"bad entry")).unwrap(), (KIND_JOB, "bad entry".into()));
    }

    #[test]
    fn status_malformed_is_rejected() {
        let bad = |b: &[u8]| matches!(parse_status(b), Err(SandboxError::MalformedStatus { .. }));
        assert!(bad(b""), "empty");
        assert!(bad(b"CFSB\0\0\0"), "short header");
        assert!(bad(&msg(KIND_OK, b"")[1..]), "shifted");
        let mut m = msg(KIND_OK, b"");
        m[0] = b'X';
        assert!(bad(&m), "magic");
        assert!(bad(&msg(9, b"")), "unknown kind");
        let mut m = msg(KIND_JOB, b"abc");
        m.push(b'!');
        assert!(bad(&m), "trailing byte");
        let mut m = msg(KIND_JOB, b"abc");
        m.pop();
        assert!(bad(&m), "truncated body");
        assert!(bad(&msg(KIND_JOB, &vec![b'a'; MAX_MESSAGE + 1])), "oversized message");
    }

    #[test]
    fn status_text_is_sanitized() {
        let (_, m) = parse_status(&msg(KIND_JOB, b"line1\nline2\x1b[31m\xff")).unwrap();
        assert!(!m.chars().any(char::is_control), "{m:?}");
        assert!(m.starts_with("line1 line2"));
    }
}
