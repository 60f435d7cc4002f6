//! File contents kept on disk while an image is processed: one append-only file of extents rather
//! than a file per module (thousands of small files cost far more in inode churn than their bytes).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::error::Error;

/// An append-only store of byte ranges in one temporary file.
pub(crate) struct Spool {
    file: File,
    state: Mutex<(u64, Vec<(u64, u64)>)>,
}

impl Spool {
    /// A new, empty spool in `dir` (the file is unlinked at once and vanishes with the handle).
    pub fn new(dir: &Path) -> Result<Spool, Error> {
        let file = tempfile::tempfile_in(dir).map_err(Error::io(dir, "create a spool file in"))?;
        Ok(Spool { file, state: Mutex::new((0, Vec::new())) })
    }

    fn reserve(&self, len: u64) -> io::Result<(usize, u64)> {
        let mut s = self.state.lock().map_err(|_| io::Error::other("spool lock poisoned"))?;
        let offset = s.0;
        s.0 += len;
        s.1.push((offset, len));
        Ok((s.1.len() - 1, offset))
    }

    /// Appends everything `reader` yields (`len` bytes) and returns its id.
    pub fn add_reader(&self, reader: &mut impl Read, len: u64) -> io::Result<usize> {
        let (id, mut offset) = self.reserve(len)?;
        let mut buf = vec![0u8; (len as usize).min(1 << 20)];
        let mut left = len;
        while left > 0 {
            let want = (left as usize).min(buf.len());
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "entry shorter than its header says"));
            }
            self.file.write_all_at(&buf[..n], offset)?;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(id)
    }

    /// Appends `bytes` (safe from several threads) and returns its id.
    pub fn add(&self, bytes: &[u8]) -> io::Result<usize> {
        let (id, offset) = self.reserve(bytes.len() as u64)?;
        self.file.write_all_at(bytes, offset)?;
        Ok(id)
    }

    /// The bytes stored under `id`.
    pub fn read(&self, id: usize) -> io::Result<Vec<u8>> {
        let (offset, len) = {
            let s = self.state.lock().map_err(|_| io::Error::other("spool lock poisoned"))?;
            *s.1.get(id).ok_or_else(|| io::Error::other(format!("no spool entry {id}")))?
        };
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_as_written_from_many_threads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path()).expect("spool");
        let a = spool.add_reader(&mut &b"first entry"[..], 11).expect("add");
        let spool_ref = &spool;
        let ids: Vec<(usize, Vec<u8>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    s.spawn(move || {
                        let v = vec![i; 1000 + i as usize];
                        (spool_ref.add(&v).expect("add"), v)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(spool.read(a).expect("read"), b"first entry");
        for (id, v) in ids {
            assert_eq!(spool.read(id).expect("read"), v);
        }
        assert!(spool.add_reader(&mut &b"short"[..], 10).is_err(), "a short entry is an error");
    }
}
