//! The only place with `unsafe` code: raw syscalls and ioctls that rustix does not wrap.
//!
//! Each submodule belongs to one stage; every `unsafe` block carries a `SAFETY:` comment.
pub mod helper;
pub(crate) mod loopctl;
pub(crate) mod map;
pub(crate) mod mem;
pub(crate) mod mount;
pub mod sandbox;
pub mod verity;
pub(crate) mod writeback;
