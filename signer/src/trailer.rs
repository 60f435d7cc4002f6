//! The appended-signature trailer: `struct module_signature` and the magic string.
//!
//! `[module][signature, sig_len bytes][module_signature, 12 bytes][MAGIC, 28 bytes]`

use crate::error::Error;

/// The string the kernel looks for at the very end of a signed module.
pub const MAGIC: &[u8; 28] = b"~Module signature appended~\n";

/// Size of `struct module_signature`.
pub const HEADER_LEN: usize = 12;

/// `id_type` value for a PKCS#7/CMS signature, the only kind current kernels check.
pub const PKEY_ID_PKCS7: u8 = 2;

/// The fields of `struct module_signature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleSignature {
    /// Public-key algorithm (0 for PKCS#7).
    pub algo: u8,
    /// Hash algorithm (0 for PKCS#7; the hash is named inside the CMS).
    pub hash: u8,
    /// Key identifier type (2 = PKCS#7).
    pub id_type: u8,
    /// Length of the signer's name (legacy formats; 0 for PKCS#7).
    pub signer_len: u8,
    /// Length of the key identifier (legacy formats; 0 for PKCS#7).
    pub key_id_len: u8,
    /// Length of the signature data.
    pub sig_len: u32,
}

impl ModuleSignature {
    /// The header for a PKCS#7 signature of `sig_len` bytes.
    pub fn pkcs7(sig_len: u32) -> Self {
        ModuleSignature { algo: 0, hash: 0, id_type: PKEY_ID_PKCS7, signer_len: 0, key_id_len: 0, sig_len }
    }

    /// The 12 bytes as the kernel lays them out.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.algo;
        b[1] = self.hash;
        b[2] = self.id_type;
        b[3] = self.signer_len;
        b[4] = self.key_id_len;
        b[8..12].copy_from_slice(&self.sig_len.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        ModuleSignature { algo: b[0], hash: b[1], id_type: b[2], signer_len: b[3], key_id_len: b[4], sig_len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]) }
    }

    /// Bytes between the module and the header: signer name, key id and signature.
    fn payload_len(self) -> u64 {
        u64::from(self.sig_len) + u64::from(self.signer_len) + u64::from(self.key_id_len)
    }
}

/// One appended signature found at the end of a module.
#[derive(Debug, Clone, Copy)]
pub struct Appended<'a> {
    /// Everything before the signature: what the signature covers.
    pub signed: &'a [u8],
    /// The signature data (the CMS DER for PKCS#7).
    pub signature: &'a [u8],
    /// The `struct module_signature`.
    pub header: ModuleSignature,
}

/// Splits off the outermost appended signature, if there is one.
pub fn split(bytes: &[u8]) -> Result<Option<Appended<'_>>, Error> {
    let Some(before_magic) = bytes.strip_suffix(MAGIC.as_slice()) else {
        return Ok(None);
    };
    let Some(header_at) = before_magic.len().checked_sub(HEADER_LEN) else {
        return Err(Error::Trailer(format!(
            "the signature magic is present but the file has only {} bytes before it, fewer than the {HEADER_LEN}-byte header",
            before_magic.len()
        )));
    };
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&before_magic[header_at..]);
    let header = ModuleSignature::from_bytes(&raw);
    let payload = header.payload_len();
    if payload > header_at as u64 {
        return Err(Error::Trailer(format!("the trailer claims a {payload}-byte signature but only {header_at} bytes precede it")));
    }
    let payload_at = header_at - payload as usize;
    let sig_at = header_at - header.sig_len as usize;
    Ok(Some(Appended { signed: &bytes[..payload_at], signature: &before_magic[sig_at..header_at], header }))
}

/// Removes every appended signature and returns the bare module and how many were removed.
///
/// `sign-file` run twice stacks two trailers; stripping them all makes re-signing idempotent.
pub fn strip_all(mut bytes: &[u8]) -> Result<(&[u8], usize), Error> {
    let mut count = 0;
    while let Some(appended) = split(bytes)? {
        bytes = appended.signed;
        count += 1;
    }
    Ok((bytes, count))
}

/// Appends a PKCS#7 signature trailer to `module`.
pub fn append(module: &mut Vec<u8>, cms_der: &[u8]) -> Result<(), Error> {
    let sig_len = u32::try_from(cms_der.len()).map_err(|_| Error::Cms("signature longer than 4 GiB".into()))?;
    module.reserve(cms_der.len() + HEADER_LEN + MAGIC.len());
    module.extend_from_slice(cms_der);
    module.extend_from_slice(&ModuleSignature::pkcs7(sig_len).to_bytes());
    module.extend_from_slice(MAGIC);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_then_split_round_trips() {
        let mut m = b"\x7fELF body".to_vec();
        append(&mut m, b"SIGNATURE").expect("append");
        assert_eq!(m.len(), 9 + 9 + 12 + 28);
        assert_eq!(&m[m.len() - 40..m.len() - 28], &[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        let a = split(&m).expect("parses").expect("signed");
        assert_eq!(a.signed, b"\x7fELF body");
        assert_eq!(a.signature, b"SIGNATURE");
        assert_eq!(a.header, ModuleSignature::pkcs7(9));
    }

    #[test]
    fn unsigned_is_none_and_stacked_signatures_all_strip() {
        assert!(split(b"plain module").expect("ok").is_none());
        let mut m = b"module".to_vec();
        append(&mut m, b"one").expect("append");
        append(&mut m, b"second").expect("append");
        let outer = split(&m).expect("ok").expect("signed");
        assert_eq!(outer.signature, b"second");
        let (bare, n) = strip_all(&m).expect("strips");
        assert_eq!((bare, n), (&b"module"[..], 2));
    }

    #[test]
    fn a_trailer_that_claims_too_much_is_an_error() {
        let mut m = b"tiny".to_vec();
        m.extend_from_slice(&ModuleSignature::pkcs7(5000).to_bytes());
        m.extend_from_slice(MAGIC);
        let err = split(&m).expect_err("must fail").to_string();
        assert!(err.contains("5000-byte signature but only 4 bytes"), "{err}");
        let err = split(MAGIC).expect_err("must fail").to_string();
        assert!(err.contains("fewer than the 12-byte header"), "{err}");
    }

    #[test]
    fn legacy_signer_and_key_id_lengths_are_stripped_too() {
        let mut m = b"module".to_vec();
        m.extend_from_slice(b"signerKEYsig");
        let h = ModuleSignature { algo: 1, hash: 2, id_type: 1, signer_len: 6, key_id_len: 3, sig_len: 3 };
        m.extend_from_slice(&h.to_bytes());
        m.extend_from_slice(MAGIC);
        let a = split(&m).expect("ok").expect("signed");
        assert_eq!((a.signed, a.signature), (&b"module"[..], &b"sig"[..]));
    }
}
