//! Verifying and inspecting appended module signatures.

use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::x509::{X509Name, X509NameRef};

use crate::cms::{self, SignerId};
use crate::compress::Compression;
use crate::der::{Reader, tag};
use crate::error::Error;
use crate::hash::HashAlgorithm;
use crate::keys::Certificate;
use crate::module::{self, ModuleInfo};
use crate::trailer;

/// What a module's outermost signature says, in the terms `modinfo` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    /// `sig_hashalgo`.
    pub hash: HashAlgorithm,
    /// `signer`: the common name of the certificate issuer (issuer+serial form).
    pub signer: Option<String>,
    /// `sig_key`: the serial number (issuer+serial form) or key identifier, colon-separated hex.
    pub key_id: String,
    /// Whether the signature names its certificate by subject key identifier.
    pub by_key_id: bool,
    /// Length of the CMS DER in bytes.
    pub cms_len: usize,
    /// How many signatures are stacked (more than one means `sign-file` ran twice).
    pub stacked: usize,
}

/// What is in a module file: compression, `.modinfo` and signature, without checking trust.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Compression of the file.
    pub compression: Compression,
    /// Size of the (uncompressed) module without signatures.
    pub module_len: usize,
    /// The module's `.modinfo`.
    pub info: ModuleInfo,
    /// The outermost signature, if any.
    pub signature: Option<SignatureInfo>,
}

/// A module whose signature verified against a certificate.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The module's `.modinfo`.
    pub info: ModuleInfo,
    /// The signature that verified.
    pub signature: SignatureInfo,
}

/// Reads a module (compressed or not) and reports its contents and signature.
pub fn inspect(file_bytes: &[u8]) -> Result<Inspection, Error> {
    let compression = Compression::detect(file_bytes);
    let plain = compression.decompress_cow(file_bytes)?;
    let (bare, stacked) = trailer::strip_all(&plain)?;
    let info = module::parse(bare)?;
    let signature = match trailer::split(&plain)? {
        Some(appended) => Some(describe(&cms::parse(appended.signature)?, appended.signature.len(), stacked)),
        None => None,
    };
    Ok(Inspection { compression, module_len: bare.len(), info, signature })
}

/// Verifies the outermost appended signature cryptographically against `cert`, as the kernel would.
pub fn verify(file_bytes: &[u8], cert: &Certificate) -> Result<Verification, Error> {
    let compression = Compression::detect(file_bytes);
    let plain = compression.decompress_cow(file_bytes)?;
    let (bare, stacked) = trailer::strip_all(&plain)?;
    let info = module::parse(bare)?;
    let appended = trailer::split(&plain)?.ok_or(Error::Unsigned)?;
    if appended.header.id_type != trailer::PKEY_ID_PKCS7 {
        return Err(Error::Trailer(format!("signature type {} is not PKCS#7 (2), which is the only type kernels verify", appended.header.id_type)));
    }
    let parsed = cms::parse(appended.signature)?;
    let signature = describe(&parsed, appended.signature.len(), stacked);
    if !names_certificate(&parsed.signer, cert) {
        return Err(Error::OtherSigner { signed_by: signer_line(&signature), certificate: cert_line(cert) });
    }
    if !cms::is_rsa_pkcs1(&parsed) {
        return Err(Error::Cms(format!("signature algorithm {} is not RSA PKCS#1 v1.5", hex::encode(&parsed.signature_algorithm))));
    }
    let digest = parsed.hash.digest(appended.signed)?;
    let mut ctx = PkeyCtx::new(cert.public_key()).map_err(Error::crypto("creating an RSA context"))?;
    ctx.verify_init().map_err(Error::crypto("RSA verify init"))?;
    ctx.set_rsa_padding(Padding::PKCS1).map_err(Error::crypto("setting PKCS#1 v1.5 padding"))?;
    ctx.set_signature_md(parsed.hash.md()).map_err(Error::crypto("setting the signature digest"))?;
    // OpenSSL reports a mismatch either as `false` or as an error, depending on where it fails.
    match ctx.verify(&digest, &parsed.signature) {
        Ok(true) => Ok(Verification { info, signature }),
        Ok(false) | Err(_) => Err(Error::BadSignature),
    }
}

fn names_certificate(signer: &SignerId, cert: &Certificate) -> bool {
    match signer {
        SignerId::IssuerSerial { issuer, serial } => issuer == cert.issuer_der() && serial == cert.serial_der(),
        SignerId::KeyId(id) => cert.subject_key_id() == Some(id.as_slice()),
    }
}

fn describe(parsed: &cms::Parsed, cms_len: usize, stacked: usize) -> SignatureInfo {
    let (signer, key_id, by_key_id) = match &parsed.signer {
        SignerId::IssuerSerial { issuer, serial } => {
            let name = X509Name::from_der(issuer).ok().and_then(|n| common_name(&n));
            (name, serial_hex(serial).unwrap_or_default(), false)
        }
        SignerId::KeyId(id) => (None, colon_hex(id), true),
    };
    SignatureInfo { hash: parsed.hash, signer, key_id, by_key_id, cms_len, stacked }
}

fn signer_line(sig: &SignatureInfo) -> String {
    match (&sig.signer, sig.by_key_id) {
        (_, true) => format!("key id {}", sig.key_id),
        (Some(cn), false) => format!("\"{cn}\" serial {}", sig.key_id),
        (None, false) => format!("serial {}", sig.key_id),
    }
}

fn cert_line(cert: &Certificate) -> String {
    let skid = cert.subject_key_id().map(|id| format!(", key id {}", colon_hex(id))).unwrap_or_default();
    format!("{} serial {} ({}{skid})", cert.subject(), cert.serial_hex(), cert.path().display())
}

fn common_name(name: &X509NameRef) -> Option<String> {
    name.entries_by_nid(openssl::nid::Nid::COMMONNAME).next().and_then(|e| e.data().to_string().ok())
}

/// A name as one line: `CN=…, O=…`.
pub(crate) fn name_line(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The magnitude of a DER INTEGER as colon-separated hex, like `modinfo`'s `sig_key`.
pub(crate) fn serial_hex(integer_der: &[u8]) -> Option<String> {
    let content = Reader::new(integer_der).read_tag(tag::INTEGER, "serial").ok()?.content;
    let trimmed = match content {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    Some(colon_hex(trimmed))
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}
