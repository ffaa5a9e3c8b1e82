//! The content store: objects shared by every layer and image (`objects.rs`, owner: store) and
//! the repository of layer images and images keyed by digest, its lock and gc (`repo.rs`).
//!
//! The object store API (docs/object-store.md): [`ObjectStore`] (open, insert, import a file, stream
//! with an [`ObjectWriter`], lookup, sync), [`Stage`] (objects committed together), the
//! digests in [`hash`]; [`import`] runs a directory's file imports on all cores.

pub mod hash;
pub mod import;
pub mod objects;
pub mod repo;
pub mod stage;
pub mod writer;

pub use hash::Digest;
pub use objects::{object_name, Naming, ObjectStore, StoreError, StoreOptions, Stored, VerityMode};
pub use stage::{Stage, StageStats, STAGE_PREFIX};
pub use writer::ObjectWriter;

#[cfg(test)]
mod tests;
