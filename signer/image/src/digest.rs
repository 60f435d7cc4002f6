//! SHA-256 digests of streams, in the `sha256:<hex>` form registries use.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of some bytes.
pub(crate) fn of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Reads to the end, then returns the inner reader, the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(R, String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.inner, format!("sha256:{}", hex::encode(self.hasher.finalize())), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), count: 0 }
    }

    /// The inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, format!("sha256:{}", hex::encode(self.hasher.finalize())), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether a string is a well-formed `sha256:` digest.
pub(crate) fn is_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_and_writer_agree_with_the_one_shot_digest() {
        let data = vec![7u8; 100_000];
        let (_, d, n) = HashingReader::new(&data[..]).finish().expect("read");
        assert_eq!((d.as_str(), n), (of(&data).as_str(), 100_000));
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).expect("write");
        let (inner, d2, n2) = w.finish();
        assert_eq!((inner, d2, n2), (data.clone(), of(&data), 100_000));
        assert!(is_sha256(&of(b"")));
        assert!(!is_sha256("sha256:abc"));
    }
}
