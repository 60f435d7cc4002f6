//! Parallel, deterministic gzip: the stream is cut into fixed 1 MiB chunks, each compressed on its
//! own (rayon) and ended with a sync flush so the pieces join into one deflate stream, as pigz
//! does. The output depends only on the input and the level, never on the number of threads.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress};
use rayon::prelude::*;

const CHUNK: usize = 1 << 20;
/// Chunks compressed per parallel round; bounds memory to about twice this many MiB.
const ROUND: usize = 16;

/// A gzip writer that compresses on all cores.
pub struct ParallelGz<W: Write> {
    out: W,
    level: Compression,
    pending: Vec<Vec<u8>>,
    current: Vec<u8>,
    crc: Crc,
    total: u64,
    header_written: bool,
}

impl<W: Write> ParallelGz<W> {
    /// A writer compressing into `out` at `level`.
    pub fn new(out: W, level: Compression) -> Self {
        ParallelGz { out, level, pending: Vec::new(), current: Vec::with_capacity(CHUNK), crc: Crc::new(), total: 0, header_written: false }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // No name, no modification time, unknown OS: the same input gives the same bytes.
            self.out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Compresses the pending chunks in parallel and writes them in order; `last` ends the stream.
    fn flush_round(&mut self, last: bool) -> io::Result<()> {
        self.header()?;
        let level = self.level;
        let n = self.pending.len();
        let compressed: Vec<io::Result<Vec<u8>>> = self.pending.par_iter().enumerate().map(|(i, chunk)| deflate(chunk, level, last && i + 1 == n)).collect();
        for c in compressed {
            self.out.write_all(&c?)?;
        }
        self.pending.clear();
        Ok(())
    }

    /// Ends the stream and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.current.is_empty() || self.pending.is_empty() {
            let chunk = std::mem::take(&mut self.current);
            self.pending.push(chunk);
        }
        self.flush_round(true)?;
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&(self.total as u32).to_le_bytes())?;
        Ok(self.out)
    }
}

/// Raw deflate of one chunk: a sync flush (byte-aligned, not final) or, for the last, a finish.
fn deflate(chunk: &[u8], level: Compression, last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(level, false);
    let mut out = Vec::with_capacity(chunk.len() / 2 + 1024);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        let consumed = c.total_in() as usize;
        c.compress_vec(&chunk[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let done = c.total_in() as usize == chunk.len() && out.len() < out.capacity();
        if done {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 << 10));
    }
}

impl<W: Write> Write for ParallelGz<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let written = buf.len();
        self.crc.update(buf);
        self.total += buf.len() as u64;
        while !buf.is_empty() {
            let room = CHUNK - self.current.len();
            let take = room.min(buf.len());
            self.current.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.current.len() == CHUNK {
                let full = std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK));
                self.pending.push(full);
                if self.pending.len() == ROUND {
                    self.flush_round(false)?;
                }
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_through_a_standard_decoder_and_is_deterministic() {
        for len in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, ROUND * CHUNK + 12_345] {
            let data: Vec<u8> = (0..len).map(|i| ((i * 7919) % 251) as u8 ^ (i >> 12) as u8).collect();
            let mut gz = ParallelGz::new(Vec::new(), Compression::new(6));
            // Odd write sizes must not change the output.
            for piece in data.chunks(333_333) {
                gz.write_all(piece).expect("write");
            }
            let packed = gz.finish().expect("finish");
            let mut again = ParallelGz::new(Vec::new(), Compression::new(6));
            again.write_all(&data).expect("write");
            assert_eq!(again.finish().expect("finish"), packed, "deterministic for {len} bytes");
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut out).expect("a standard gzip stream");
            assert!(out == data, "round trip of {len} bytes");
        }
    }
}
