//! composefs EROFS image format: on-disk structures, the writer (tree → image) and the hostile-image reader.

pub mod reader;
pub use reader::{inspect, InspectArgs};
