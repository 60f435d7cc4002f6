//! Signing one module in memory.

use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;

use crate::cms::{self, SignerId};
use crate::compress::Compression;
use crate::error::{Error, KeyError};
use crate::hash::HashAlgorithm;
use crate::keys::SigningKey;
use crate::module::{self, ModuleInfo};
use crate::trailer;

/// How the signature names the signing certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignerIdentifier {
    /// Issuer and serial number (what `sign-file` writes by default).
    #[default]
    IssuerSerial,
    /// The certificate's subjectKeyIdentifier (`sign-file -k`).
    KeyId,
}

/// Signs modules with one key, hash and identifier form. Cheap to share between threads.
#[derive(Debug, Clone)]
pub struct Signer {
    key: SigningKey,
    hash: HashAlgorithm,
    signer_id: SignerId,
}

/// A signed module and what was learnt while signing it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The signed module, compressed as the input was.
    pub bytes: Vec<u8>,
    /// The module's `.modinfo`.
    pub info: ModuleInfo,
    /// How many earlier signatures were stripped.
    pub replaced: usize,
    /// The input's compression.
    pub compression: Compression,
}

impl Signer {
    /// A signer for `key` using `hash` and the given identifier form.
    pub fn new(key: SigningKey, hash: HashAlgorithm, id: SignerIdentifier) -> Result<Self, Error> {
        let cert = key.certificate();
        let signer_id = match id {
            SignerIdentifier::IssuerSerial => SignerId::IssuerSerial { issuer: cert.issuer_der().to_vec(), serial: cert.serial_der().to_vec() },
            SignerIdentifier::KeyId => SignerId::KeyId(cert.subject_key_id().ok_or_else(|| KeyError::NoSubjectKeyId { path: cert.path().into() })?.to_vec()),
        };
        Ok(Signer { key, hash, signer_id })
    }

    /// The hash algorithm in use.
    pub fn hash(&self) -> HashAlgorithm {
        self.hash
    }

    /// The key in use.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs an uncompressed module in its own buffer: strips any appended signatures, checks it
    /// is a module, and appends a fresh signature.
    pub fn sign_module(&self, mut bytes: Vec<u8>) -> Result<(Vec<u8>, ModuleInfo, usize), Error> {
        let (bare, replaced) = trailer::strip_all(&bytes)?;
        let info = module::parse(bare)?;
        let cms = self.cms_for(bare)?;
        let bare_len = bare.len();
        bytes.truncate(bare_len);
        trailer::append(&mut bytes, &cms)?;
        Ok((bytes, info, replaced))
    }

    /// Signs a module that may be xz-, zstd- or gzip-compressed, keeping its compression.
    pub fn sign(&self, bytes: Vec<u8>) -> Result<Signed, Error> {
        let compression = Compression::detect(&bytes);
        let (bytes, info, replaced) = match compression {
            Compression::None => self.sign_module(bytes)?,
            c => {
                let (signed, info, replaced) = self.sign_module(c.decompress(&bytes)?)?;
                (c.compress(&signed)?, info, replaced)
            }
        };
        Ok(Signed { bytes, info, replaced, compression })
    }

    /// The detached CMS signature (DER) over `content`.
    pub fn cms_for(&self, content: &[u8]) -> Result<Vec<u8>, Error> {
        let digest = self.hash.digest(content)?;
        let signature = self.rsa_sign_digest(&digest)?;
        Ok(cms::encode(self.hash, &self.signer_id, &signature))
    }

    fn rsa_sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, Error> {
        let mut ctx = PkeyCtx::new(self.key.private_key()).map_err(Error::crypto("creating an RSA context"))?;
        ctx.sign_init().map_err(Error::crypto("RSA sign init"))?;
        ctx.set_rsa_padding(Padding::PKCS1).map_err(Error::crypto("setting PKCS#1 v1.5 padding"))?;
        ctx.set_signature_md(self.hash.md()).map_err(Error::crypto("setting the signature digest"))?;
        let mut sig = Vec::new();
        ctx.sign_to_vec(digest, &mut sig).map_err(Error::crypto("RSA signing"))?;
        Ok(sig)
    }
}
