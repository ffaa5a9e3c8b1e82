//! [`ObjectWriter`]: one object written as a stream (a tar member, a decompressed chunk).

use std::io::{self, Write};

use super::hash::{Digest, Hashers};
use super::objects::{Dest, ObjectStore, StoreError, Stored, Tmp, CHUNK};
use super::stage::Stage;

/// Streams one object into the store: the bytes are hashed as they come. Up to 1 MiB stays in
/// memory (so that an object already present costs no write at all); beyond that the bytes go
/// to a temporary file in 1 MiB writes. [`ObjectWriter::commit`] names it; dropping the writer
/// instead leaves nothing behind.
pub struct ObjectWriter<'s> {
    store: &'s ObjectStore,
    stage: Option<&'s Stage<'s>>,
    expected: Option<Digest>,
    hashers: Hashers,
    buf: Vec<u8>,
    tmp: Option<Tmp<'s>>,
    size: u64,
    broken: bool,
}

impl<'s> ObjectWriter<'s> {
    pub(crate) fn new(store: &'s ObjectStore, stage: Option<&'s Stage<'s>>, expected: Option<Digest>) -> Self {
        ObjectWriter {
            store,
            stage,
            expected,
            hashers: store.hashers(),
            buf: Vec::new(),
            tmp: None,
            size: 0,
            broken: false,
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `b` (the [`Write`] implementation calls this).
    pub fn write_chunk(&mut self, b: &[u8]) -> Result<(), StoreError> {
        if self.broken {
            return Err(self.store.io_err("writing an object", io::Error::other("writer failed earlier")));
        }
        self.hashers.update(b);
        self.size += b.len() as u64;
        if self.buf.len() + b.len() <= CHUNK {
            self.buf.extend_from_slice(b);
            return Ok(());
        }
        let r = self.spill(b);
        self.broken = r.is_err();
        r
    }

    fn spill(&mut self, b: &[u8]) -> Result<(), StoreError> {
        if self.tmp.is_none() {
            self.tmp = Some(self.store.create_tmp()?);
        }
        let f = &mut self.tmp.as_mut().expect("temporary file").file;
        let err = |e| self.store.io_err("writing a new object", e);
        if !self.buf.is_empty() {
            f.write_all(&self.buf).map_err(err)?;
            self.buf.clear();
        }
        if b.len() >= CHUNK {
            f.write_all(b).map_err(err)?;
        } else {
            self.buf.extend_from_slice(b);
        }
        Ok(())
    }

    /// Finishes the object: its digest must equal the expected one (if given), then it is
    /// placed under its name (or found present). Nothing is stored on any error.
    pub fn commit(mut self) -> Result<Stored, StoreError> {
        if self.broken {
            return Err(self.store.io_err("writing an object", io::Error::other("writer failed earlier")));
        }
        let h = std::mem::replace(&mut self.hashers, Hashers::new(false, false));
        let expected = self.expected;
        let Some(mut tmp) = self.tmp.take() else {
            return match self.stage {
                Some(st) => st.put_bytes(&self.buf, h, expected.as_ref()),
                None => self.store.put_bytes(&self.buf, h, expected.as_ref(), Dest::Store),
            };
        };
        if !self.buf.is_empty() {
            tmp.file.write_all(&self.buf).map_err(|e| self.store.io_err("writing a new object", e))?;
        }
        let (digest, verity) = self.store.digests(h, expected.as_ref())?;
        let size = self.size;
        if let Some(st) = self.stage {
            return st.put_file(tmp, digest, verity, size);
        }
        if let Some(have) = self.store.lookup(&digest)? {
            return self.store.existing(digest, verity, have, size);
        }
        let (new, measured) = self.store.place(tmp, Dest::Store, &digest, size, verity)?;
        Ok(Stored { digest, verity: verity.or(measured), size, new })
    }
}

impl Write for ObjectWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.write_chunk(b).map_err(io::Error::other)?;
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
