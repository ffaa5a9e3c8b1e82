//! zstd:chunked TOC JSON (containers/storage) → tree.
