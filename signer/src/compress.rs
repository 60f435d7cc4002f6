//! Compressed modules: the signature lives inside the uncompressed module, so decompress,
//! sign, and recompress in the same format (as the kernel's `modules_install` does).

use std::fmt;
use std::io::{Read, Write};

use crate::error::Error;

/// How a module file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain `.ko`.
    None,
    /// `.ko.xz` (CRC32 check and a 1 MiB dictionary, as the kernel's build writes them).
    Xz,
    /// `.ko.zst`.
    Zstd,
    /// `.ko.gz`.
    Gzip,
}

/// Largest decompressed module accepted (the biggest in-tree module is about 20 MB).
pub(crate) const MAX_MODULE_BYTES: u64 = 1 << 30;

impl Compression {
    /// Recognises the format by its magic bytes.
    pub fn detect(bytes: &[u8]) -> Self {
        if bytes.starts_with(b"\xfd7zXZ\x00") {
            Self::Xz
        } else if bytes.starts_with(b"\x28\xb5\x2f\xfd") {
            Self::Zstd
        } else if bytes.starts_with(b"\x1f\x8b") {
            Self::Gzip
        } else {
            Self::None
        }
    }

    /// The compression a file name implies (`.ko.xz` → xz).
    pub fn from_name(name: &str) -> Self {
        if name.ends_with(".xz") {
            Self::Xz
        } else if name.ends_with(".zst") {
            Self::Zstd
        } else if name.ends_with(".gz") {
            Self::Gzip
        } else {
            Self::None
        }
    }

    /// Decompresses `bytes` (a no-op for [`Compression::None`]).
    pub fn decompress(self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let reader: Box<dyn Read + '_> = match self {
            Self::None => return Ok(bytes.to_vec()),
            Self::Xz => Box::new(liblzma::read::XzDecoder::new(bytes)),
            Self::Zstd => Box::new(zstd::stream::read::Decoder::new(bytes).map_err(|cause| self.err(cause))?),
            Self::Gzip => Box::new(flate2::read::GzDecoder::new(bytes)),
        };
        let mut out = Vec::with_capacity(bytes.len().saturating_mul(3));
        reader.take(MAX_MODULE_BYTES + 1).read_to_end(&mut out).map_err(|cause| self.err(cause))?;
        if out.len() as u64 > MAX_MODULE_BYTES {
            return Err(Error::TooLarge { limit: MAX_MODULE_BYTES });
        }
        Ok(out)
    }

    /// Compresses `bytes` in this format (a copy for [`Compression::None`]).
    pub fn compress(self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let out = Vec::with_capacity(bytes.len() / 2);
        let io = |cause| self.err(cause);
        match self {
            Self::None => Ok(bytes.to_vec()),
            Self::Xz => {
                let mut opts = liblzma::stream::LzmaOptions::new_preset(6).map_err(|e| io(e.into()))?;
                opts.dict_size(1 << 20);
                let mut filters = liblzma::stream::Filters::new();
                filters.lzma2(&opts);
                let stream = liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::Crc32).map_err(|e| io(e.into()))?;
                let mut enc = liblzma::write::XzEncoder::new_stream(out, stream);
                enc.write_all(bytes).map_err(io)?;
                enc.finish().map_err(io)
            }
            Self::Zstd => zstd::stream::encode_all(bytes, 3).map_err(io),
            Self::Gzip => {
                let mut enc = flate2::GzBuilder::new().write(out, flate2::Compression::new(6));
                enc.write_all(bytes).map_err(io)?;
                enc.finish().map_err(io)
            }
        }
    }

    /// Decompresses, borrowing the input when it is not compressed.
    pub(crate) fn decompress_cow(self, bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
        match self {
            Self::None => Ok(std::borrow::Cow::Borrowed(bytes)),
            c => c.decompress(bytes).map(std::borrow::Cow::Owned),
        }
    }

    fn err(self, cause: std::io::Error) -> Error {
        Error::Compression { format: self, cause }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "uncompressed",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_and_is_detected() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for c in [Compression::Xz, Compression::Zstd, Compression::Gzip] {
            let packed = c.compress(&data).expect("compress");
            assert_eq!(Compression::detect(&packed), c);
            assert!(packed.len() < data.len());
            assert_eq!(c.decompress(&packed).expect("decompress"), data, "{c}");
        }
        assert_eq!(Compression::detect(b"\x7fELF"), Compression::None);
    }

    #[test]
    fn corrupt_data_names_the_format() {
        let mut packed = Compression::Xz.compress(b"hello hello hello").expect("compress");
        let n = packed.len();
        packed[n / 2] ^= 0xff;
        let err = Compression::Xz.decompress(&packed).expect_err("corrupt").to_string();
        assert!(err.starts_with("xz data is corrupt"), "{err}");
        let err = Compression::Gzip.decompress(b"\x1f\x8bnot gzip").expect_err("corrupt").to_string();
        assert!(err.starts_with("gzip data"), "{err}");
    }

    #[test]
    fn names_map_to_formats() {
        assert_eq!(Compression::from_name("a.ko.zst"), Compression::Zstd);
        assert_eq!(Compression::from_name("a.ko"), Compression::None);
    }
}
