//! composefs EROFS image format: the on-disk format and header codec ([`format`]), the writer
//! (tree → image) and the hostile-image reader (image → tree).

pub(crate) mod format;
pub mod reader;
pub mod writer;
