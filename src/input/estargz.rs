//! eStargz TOC (`stargz.index.json`, containerd/stargz-snapshotter) → tree.
//!
//! The document has the zstd:chunked shape (`{"version":1,"entries":[...]}`) and is read by the
//! same engine (`crate::input::toc::parse_flavor`); the dialect differs in:
//! - `userName`/`groupName` (informational; ownership comes from `uid`/`gid`), `innerOffset`
//!   (offset inside a compressed chunk; checked to be a non-negative integer, otherwise unused);
//! - `chunkSize` 0 means "to the end of the file" (chunk bookkeeping only: no tree effect);
//! - `chunk` entries may leave out `name` (they belong to the preceding `reg` entry);
//! - an empty `modtime` means unknown (mtime 0);
//! - the bookkeeping entries `.prefetch.landmark`, `.no.prefetch.landmark` and
//!   `stargz.index.json` are skipped;
//! - no `x-payload`/`x-content`, `accesstime`, `changetime`, `endOffset`, `chunkType` keys (ignored
//!   like any unknown key).
//!
//! Everything else (validation, whiteouts, limits, errors) is as in [`crate::input::toc`].

use crate::input::toc::{parse_flavor, Flavor, TocError, TocOptions};
use crate::tree::Tree;

/// Parse an eStargz TOC into a finalized tree.
pub fn parse(json: &[u8], opts: &TocOptions) -> Result<Tree, TocError> {
    parse_flavor(json, opts, Flavor::Estargz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{S_IFDIR, S_IFREG};

    const D: &str = "sha256:2ce0d0f8eb2aa93d13007097763e4459c814c8d0e859e5a57465af924169b544";

    fn estargz_toc() -> String {
        format!(
            r#"{{"version":1,"entries":[
              {{"name":"etc/","type":"dir","modtime":"2023-01-02T03:04:05Z","mode":16877,"uid":0,"gid":0,"userName":"root","groupName":"root"}},
              {{"name":"etc/big","type":"reg","size":9000000,"modtime":"","mode":420,"uid":1000,"gid":1000,
                "userName":"u","offset":87,"innerOffset":0,"digest":"{D}","chunkSize":4194304,"chunkDigest":"{D}"}},
              {{"type":"chunk","offset":5000,"chunkOffset":4194304,"chunkSize":4194304,"chunkDigest":"{D}"}},
              {{"name":"etc/big","type":"chunk","offset":9000,"innerOffset":17,"chunkOffset":8388608,"chunkSize":0}},
              {{"name":".prefetch.landmark","type":"reg","size":1,"offset":9999,"digest":"{D}"}},
              {{"name":"stargz.index.json","type":"reg","size":1,"digest":"{D}"}},
              {{"name":"etc/xattr","type":"reg","size":0,"xattrs":{{"user.k":"dg=="}}}}
            ]}}"#
        )
    }

    #[test]
    fn reads_estargz_dialect() {
        let t = parse(estargz_toc().as_bytes(), &TocOptions::default()).unwrap();
        let etc = t.node(t.lookup(b"etc").unwrap());
        assert_eq!(etc.entry.inode.mode, S_IFDIR | 0o755);
        assert_eq!(etc.entry.inode.mtime, 1672628645);
        let big = t.node(t.lookup(b"etc/big").unwrap());
        assert_eq!(big.entry.inode.mode, S_IFREG | 0o644);
        assert_eq!((big.entry.inode.uid, big.entry.inode.size, big.entry.inode.mtime), (1000, 9000000, 0));
        assert_eq!(
            big.entry.payload.as_deref(),
            Some(&b"2c/e0d0f8eb2aa93d13007097763e4459c814c8d0e859e5a57465af924169b544"[..])
        );
        assert!(t.lookup(b".prefetch.landmark").is_none());
        assert!(t.lookup(b"stargz.index.json").is_none());
        assert_eq!(t.node(t.lookup(b"etc/xattr").unwrap()).entry.xattrs[0].value, b"v");
        // The same bytes read as zstd:chunked keep the landmark and reject the empty modtime.
        let e = crate::input::toc::parse(estargz_toc().as_bytes(), &TocOptions::default()).unwrap_err();
        assert!(e.to_string().contains("modtime"), "{e}");
    }

    #[test]
    fn rejects_hostile_estargz() {
        let cases = [
            (r#"{"version":1,"entries":[{"type":"chunk","chunkSize":0}]}"#, "chunk"),
            (r#"{"version":1,"entries":[{"name":"a","type":"reg","innerOffset":-4}]}"#, "innerOffset"),
            (r#"{"version":1,"entries":[{"name":"a","type":"reg","userName":7}]}"#, "userName"),
            (r#"{"version":1,"entries":[{"name":"../a","type":"reg"}]}"#, "'..'"),
            (r#"{"version":1,"entries":[{"name":"a","type":"reg","size":5}]}"#, "no digest"),
            (r#"{"version":1,"entries":[{"name":"a","type":"reg","size":1,"x-content":"YQ=="}]}"#, "no digest"),
            (r#"{"version":0,"entries":[]}"#, "version"),
        ];
        for (json, needle) in cases {
            let e = parse(json.as_bytes(), &TocOptions::default()).expect_err(json).to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
