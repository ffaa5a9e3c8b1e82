//! Input formats: each parser turns untrusted bytes into a validated [`crate::tree::Tree`].
pub mod dir;
pub mod dump;
pub mod estargz;
pub mod toc;
