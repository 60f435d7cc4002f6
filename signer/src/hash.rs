//! Hash algorithms the kernel accepts for module signatures.

use std::fmt;
use std::str::FromStr;

use openssl::hash::MessageDigest;
use openssl::md::{Md, MdRef};

use crate::error::Error;

/// A digest algorithm for module signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashAlgorithm {
    /// SHA-1: still accepted by kernels, deprecated.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256: the default, what Debian's kernels are built with.
    #[default]
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Every supported algorithm, preferred first.
    pub const ALL: [HashAlgorithm; 5] = [Self::Sha256, Self::Sha384, Self::Sha512, Self::Sha224, Self::Sha1];

    /// The name `sign-file` and `modinfo` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha224 => "sha224",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// Whether the algorithm is deprecated for new signatures.
    pub fn is_deprecated(self) -> bool {
        self == Self::Sha1
    }

    /// DER content bytes of the algorithm's OID.
    pub(crate) fn oid(self) -> &'static [u8] {
        match self {
            // 1.3.14.3.2.26
            Self::Sha1 => &[0x2b, 0x0e, 0x03, 0x02, 0x1a],
            // 2.16.840.1.101.3.4.2.{4,1,2,3}
            Self::Sha224 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04],
            Self::Sha256 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01],
            Self::Sha384 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02],
            Self::Sha512 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03],
        }
    }

    pub(crate) fn from_oid(oid: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.oid() == oid)
    }

    pub(crate) fn md(self) -> &'static MdRef {
        match self {
            Self::Sha1 => Md::sha1(),
            Self::Sha224 => Md::sha224(),
            Self::Sha256 => Md::sha256(),
            Self::Sha384 => Md::sha384(),
            Self::Sha512 => Md::sha512(),
        }
    }

    /// Hashes `data`.
    pub(crate) fn digest(self, data: &[u8]) -> Result<Vec<u8>, Error> {
        let md = match self {
            Self::Sha1 => MessageDigest::sha1(),
            Self::Sha224 => MessageDigest::sha224(),
            Self::Sha256 => MessageDigest::sha256(),
            Self::Sha384 => MessageDigest::sha384(),
            Self::Sha512 => MessageDigest::sha512(),
        };
        openssl::hash::hash(md, data).map(|d| d.to_vec()).map_err(Error::crypto("hashing the module"))
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "");
        Self::ALL.into_iter().find(|h| h.name() == wanted).ok_or_else(|| Error::UnsupportedHash { name: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::der::oid_content;

    #[test]
    fn oids_are_the_registered_arcs() {
        assert_eq!(HashAlgorithm::Sha1.oid(), oid_content(&[1, 3, 14, 3, 2, 26]));
        for (h, last) in [(HashAlgorithm::Sha256, 1), (HashAlgorithm::Sha384, 2), (HashAlgorithm::Sha512, 3), (HashAlgorithm::Sha224, 4)] {
            assert_eq!(h.oid(), oid_content(&[2, 16, 840, 1, 101, 3, 4, 2, last]), "{h}");
            assert_eq!(HashAlgorithm::from_oid(h.oid()), Some(h));
        }
    }

    #[test]
    fn parses_names_and_refuses_others_with_the_list() {
        assert_eq!("SHA-384".parse::<HashAlgorithm>().ok(), Some(HashAlgorithm::Sha384));
        assert_eq!("sha1".parse::<HashAlgorithm>().ok(), Some(HashAlgorithm::Sha1));
        let err = "md5".parse::<HashAlgorithm>().expect_err("md5 is refused").to_string();
        assert!(err.contains("\"md5\"") && err.contains("sha256, sha384, sha512, sha224, sha1"), "{err}");
    }

    #[test]
    fn digest_lengths() {
        for (h, n) in
            [(HashAlgorithm::Sha1, 20), (HashAlgorithm::Sha224, 28), (HashAlgorithm::Sha256, 32), (HashAlgorithm::Sha384, 48), (HashAlgorithm::Sha512, 64)]
        {
            assert_eq!(h.digest(b"abc").expect("hash").len(), n);
        }
    }
}
