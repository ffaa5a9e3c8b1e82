//! The content store: objects shared by every layer and image (`objects.rs`, owner: store) and
//! the repository of layer images and images keyed by digest, its lock and gc (`repo.rs`).

pub mod repo;
