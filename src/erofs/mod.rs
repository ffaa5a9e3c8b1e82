//! composefs EROFS image format: on-disk structures, the writer (tree → image) and the hostile-image reader.

pub mod format;
pub mod writer;

pub mod reader;
pub use reader::{inspect, InspectArgs};
