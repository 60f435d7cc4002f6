//! Loading the signing key and certificate (KMM's `key` and `cert` secrets).

use std::path::{Path, PathBuf};

use openssl::pkey::{Id, PKey, Private, Public};
use openssl::x509::X509;

use crate::der::{Reader, tag};
use crate::error::KeyError;

/// An X.509 certificate, with what a module signature refers to already extracted.
#[derive(Clone)]
pub struct Certificate {
    x509: X509,
    public_key: PKey<Public>,
    issuer_der: Vec<u8>,
    serial_der: Vec<u8>,
    path: PathBuf,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate").field("path", &self.path).field("subject", &self.subject()).finish()
    }
}

impl Certificate {
    /// Reads a certificate in DER or PEM form.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|cause| KeyError::Read { path: path.into(), what: "certificate", cause })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a certificate in DER or PEM form; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self, KeyError> {
        let x509 = X509::from_der(bytes).or_else(|_| X509::from_pem(bytes)).map_err(|_| KeyError::BadCert { path: origin.into() })?;
        let der = x509.to_der().map_err(|_| KeyError::BadCert { path: origin.into() })?;
        let (issuer_der, serial_der) = issuer_and_serial(&der).map_err(|detail| KeyError::MalformedCert { path: origin.into(), detail })?;
        let public_key = x509.public_key().map_err(|_| KeyError::BadCert { path: origin.into() })?;
        Ok(Certificate { x509, public_key, issuer_der, serial_der, path: origin.into() })
    }

    /// The file the certificate came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The DER of the issuer name, as a signature's issuerAndSerialNumber carries it.
    pub(crate) fn issuer_der(&self) -> &[u8] {
        &self.issuer_der
    }

    /// The DER INTEGER of the serial number.
    pub(crate) fn serial_der(&self) -> &[u8] {
        &self.serial_der
    }

    /// The subjectKeyIdentifier extension, if any.
    pub fn subject_key_id(&self) -> Option<&[u8]> {
        self.x509.subject_key_id().map(|id| id.as_slice())
    }

    /// The public key.
    pub(crate) fn public_key(&self) -> &PKey<Public> {
        &self.public_key
    }

    /// The subject as one line (`CN=…, O=…`).
    pub fn subject(&self) -> String {
        crate::verify::name_line(self.x509.subject_name())
    }

    /// The serial number in hex, colon-separated like `modinfo`'s `sig_key`.
    pub fn serial_hex(&self) -> String {
        crate::verify::serial_hex(&self.serial_der).unwrap_or_default()
    }

    /// SHA-256 fingerprint of the DER certificate, lowercase hex.
    pub fn fingerprint_sha256(&self) -> String {
        self.x509.digest(openssl::hash::MessageDigest::sha256()).map(hex::encode).unwrap_or_default()
    }

    /// The underlying OpenSSL certificate.
    pub fn x509(&self) -> &X509 {
        &self.x509
    }
}

/// Takes the issuer Name and serialNumber INTEGER verbatim out of a certificate's DER.
fn issuer_and_serial(cert_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut cert = Reader::new(cert_der).enter(tag::SEQUENCE, "Certificate")?;
    let mut tbs = cert.enter(tag::SEQUENCE, "tbsCertificate")?;
    if tbs.peek_tag() == Some(tag::CONTEXT_0_CONSTRUCTED) {
        tbs.any()?; // version
    }
    let serial = tbs.read_tag(tag::INTEGER, "serialNumber")?;
    tbs.read_tag(tag::SEQUENCE, "signature algorithm")?;
    let issuer = tbs.read_tag(tag::SEQUENCE, "issuer")?;
    Ok((issuer.raw.to_vec(), serial.raw.to_vec()))
}

/// An RSA private key together with its certificate, checked to belong together.
#[derive(Clone)]
pub struct SigningKey {
    key: PKey<Private>,
    cert: Certificate,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PEM private key (encrypted with `passphrase` if given) and a DER or PEM certificate.
    pub fn load(key_path: &Path, cert_path: &Path, passphrase: Option<&[u8]>) -> Result<Self, KeyError> {
        let key_pem = std::fs::read(key_path).map_err(|cause| KeyError::Read { path: key_path.into(), what: "private key", cause })?;
        let cert = Certificate::load(cert_path)?;
        let key = parse_private_key(&key_pem, key_path, passphrase)?;
        Self::new(key, cert, key_path)
    }

    /// Pairs a parsed key with its certificate; `key_origin` names the key in errors.
    pub fn new(key: PKey<Private>, cert: Certificate, key_origin: &Path) -> Result<Self, KeyError> {
        if key.id() != Id::RSA {
            return Err(KeyError::NotRsa { path: key_origin.into(), kind: key_kind(key.id()) });
        }
        if !cert.public_key().public_eq(&key) {
            return Err(KeyError::Mismatch { key: key_origin.into(), cert: cert.path().into() });
        }
        Ok(SigningKey { key, cert })
    }

    /// The certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// Key size in bits.
    pub fn bits(&self) -> u32 {
        self.key.bits()
    }

    pub(crate) fn private_key(&self) -> &PKey<Private> {
        &self.key
    }
}

/// Parses a PEM private key, telling "needs a passphrase" apart from "wrong passphrase".
pub(crate) fn parse_private_key(pem: &[u8], path: &Path, passphrase: Option<&[u8]>) -> Result<PKey<Private>, KeyError> {
    let mut asked = false;
    let result = PKey::private_key_from_pem_callback(pem, |buf| {
        asked = true;
        match passphrase {
            Some(p) if p.len() <= buf.len() => {
                buf[..p.len()].copy_from_slice(p);
                Ok(p.len())
            }
            // No passphrase (or one longer than OpenSSL's buffer): decline.
            _ => Ok(0),
        }
    });
    match result {
        Ok(key) => Ok(key),
        Err(_) if asked && passphrase.is_none() => Err(KeyError::NeedsPassphrase { path: path.into() }),
        Err(_) if asked => Err(KeyError::WrongPassphrase { path: path.into() }),
        Err(cause) => Err(KeyError::BadKey { path: path.into(), cause }),
    }
}

fn key_kind(id: Id) -> String {
    match id {
        Id::EC => "EC".into(),
        Id::DSA => "DSA".into(),
        Id::ED25519 => "Ed25519".into(),
        Id::ED448 => "Ed448".into(),
        Id::RSA_PSS => "RSA-PSS".into(),
        other => format!("type {}", other.as_raw()),
    }
}
