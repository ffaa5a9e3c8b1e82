//! cfsmount: container TOC → composefs EROFS image → verified, mounted read-only tree.
//!
//! One module per stage; all `unsafe` and raw syscalls are confined to [`sys`].
#![deny(unsafe_code)]

pub mod als;
mod below;
pub(crate) mod boot;
pub mod build;
mod bytes;
pub mod cli;
pub mod compat;
pub mod erofs;
pub mod fsverity;
pub mod input;
pub mod layer;
pub mod mount;
pub mod oci;
pub mod privileged;
mod probe;
pub mod sandbox;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;
pub mod tree;
