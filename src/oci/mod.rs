//! OCI images: the image layout reader ([`layout`]), flattening of layer trees into one tree
//! ([`flatten`]), and the `cfsmount oci ...` commands on top of the repository
//! ([`crate::store::repo`]).
//!
//! Everything read here is hostile: the layout's JSON documents are small (capped) and parsed
//! with `serde_json` into the `oci-spec` types only after their size and sha256 were checked
//! against the descriptor that names them (index.json, which nothing names, is capped too).
//! Layer blobs are never parsed here: they go to the layer reader (sandboxed) together with
//! their descriptor and diff_id.

pub mod flatten;
pub mod import;
pub mod layout;
pub mod reader;

use std::fmt;

/// A sha256 digest (the only algorithm cfsmount accepts in OCI layouts).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Parse `sha256:<64 lower-case hex>`; anything else (other algorithms, upper case,
    /// wrong length) is refused with the reason.
    pub fn parse(s: &str) -> Result<Sha256, String> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(match s.split_once(':') {
                Some((alg, _)) => format!("digest algorithm {alg:?} is not supported (only sha256)"),
                None => "digest has no algorithm prefix".into(),
            });
        };
        Sha256::from_hex(hex).ok_or_else(|| "sha256 digest is not 64 lower-case hex digits".into())
    }

    /// Parse exactly 64 lower-case hex digits.
    pub fn from_hex(hex: &str) -> Option<Sha256> {
        let b = hex.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
        }
        Some(Sha256(out))
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        crate::fsverity::to_hex(&self.0)
    }

    /// sha256 of `data`.
    pub fn of(data: &[u8]) -> Sha256 {
        use sha2::Digest as _;
        Sha256(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parsing() {
        let h = "a09e9eba2bfd08ddbbf9728a16aedeaf591dc955626a016a4efcf73271e8e69d";
        let d = Sha256::parse(&format!("sha256:{h}")).unwrap();
        assert_eq!(d.hex(), h);
        assert_eq!(d.to_string(), format!("sha256:{h}"));
        assert!(Sha256::parse(&format!("sha256:{}", h.to_uppercase())).is_err());
        assert!(Sha256::parse(&format!("sha512:{h}")).unwrap_err().contains("sha512"));
        assert!(Sha256::parse(&format!("sha256:{h}0")).is_err());
        assert!(Sha256::parse(h).is_err());
        assert_eq!(Sha256::of(b"").hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
