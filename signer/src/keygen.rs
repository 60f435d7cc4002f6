//! Module-signing key pairs with the extensions of the kernel's own `certs/x509.genkey`.

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier};
use openssl::x509::{X509, X509Name, X509NameBuilder};

use crate::error::Error;

/// What to generate.
#[derive(Debug, Clone)]
pub struct KeygenOptions {
    /// Subject, e.g. `CN=Example module signing key,O=Example`.
    pub subject: String,
    /// RSA modulus size: 2048, 3072 or 4096.
    pub bits: u32,
    /// Validity in days (the kernel's build uses 36500).
    pub days: u32,
}

impl Default for KeygenOptions {
    fn default() -> Self {
        KeygenOptions { subject: "CN=kforge module signing key".into(), bits: 4096, days: 36500 }
    }
}

/// A freshly generated key and its self-signed certificate.
pub struct KeyPair {
    /// The RSA private key.
    pub key: PKey<Private>,
    /// The self-signed certificate.
    pub cert: X509,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("cert", &self.cert).finish_non_exhaustive()
    }
}

/// Generates an RSA key and a self-signed certificate: CA:FALSE (critical), digitalSignature,
/// subject and authority key identifiers, SHA-256 signature.
pub fn generate_key_pair(opts: &KeygenOptions) -> Result<KeyPair, Error> {
    if !matches!(opts.bits, 2048 | 3072 | 4096) {
        return Err(Error::Keygen(format!("RSA key size {} is not supported; use 2048, 3072 or 4096", opts.bits)));
    }
    let c = Error::crypto;
    let name = parse_subject(&opts.subject)?;
    let key = PKey::from_rsa(Rsa::generate(opts.bits).map_err(c("generating the RSA key"))?).map_err(c("wrapping the key"))?;
    let mut serial = BigNum::new().map_err(c("serial"))?;
    serial.rand(159, MsbOption::MAYBE_ZERO, false).map_err(c("random serial"))?;
    let serial: Asn1Integer = serial.to_asn1_integer().map_err(c("serial"))?;

    let mut b = X509::builder().map_err(c("certificate builder"))?;
    b.set_version(2).map_err(c("certificate version"))?;
    b.set_serial_number(&serial).map_err(c("serial"))?;
    b.set_subject_name(&name).map_err(c("subject"))?;
    b.set_issuer_name(&name).map_err(c("issuer"))?;
    b.set_pubkey(&key).map_err(c("public key"))?;
    let not_before = Asn1Time::days_from_now(0).map_err(c("notBefore"))?;
    let not_after = Asn1Time::days_from_now(opts.days).map_err(c("notAfter"))?;
    b.set_not_before(&not_before).map_err(c("notBefore"))?;
    b.set_not_after(&not_after).map_err(c("notAfter"))?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(c("basicConstraints"))?).map_err(c("basicConstraints"))?;
    b.append_extension(KeyUsage::new().digital_signature().build().map_err(c("keyUsage"))?).map_err(c("keyUsage"))?;
    let skid = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None)).map_err(c("subjectKeyIdentifier"))?;
    b.append_extension(skid).map_err(c("subjectKeyIdentifier"))?;
    let akid = AuthorityKeyIdentifier::new().keyid(true).build(&b.x509v3_context(None, None)).map_err(c("authorityKeyIdentifier"))?;
    b.append_extension(akid).map_err(c("authorityKeyIdentifier"))?;
    b.sign(&key, MessageDigest::sha256()).map_err(c("self-signing the certificate"))?;
    Ok(KeyPair { key, cert: b.build() })
}

/// Parses `CN=a,O=b` or `/CN=a/O=b`.
fn parse_subject(subject: &str) -> Result<X509Name, Error> {
    let bad = |why: String| Error::Keygen(format!("subject {subject:?}: {why}; write it like CN=My module key,O=My org"));
    let parts: Vec<&str> = if subject.starts_with('/') {
        subject.split('/').filter(|p| !p.is_empty()).collect()
    } else {
        subject.split(',').map(str::trim).filter(|p| !p.is_empty()).collect()
    };
    if parts.is_empty() {
        return Err(bad("empty".into()));
    }
    let mut b = X509NameBuilder::new().map_err(Error::crypto("name builder"))?;
    for part in parts {
        let (k, v) = part.split_once('=').ok_or_else(|| bad(format!("{part:?} has no '='")))?;
        b.append_entry_by_text(k.trim(), v.trim()).map_err(|_| bad(format!("unknown attribute {:?}", k.trim())))?;
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_has_the_kernel_extensions() {
        let kp = generate_key_pair(&KeygenOptions { subject: "/CN=test key/O=kforge".into(), bits: 2048, days: 10 }).expect("generates");
        let text = String::from_utf8(kp.cert.to_text().expect("text")).expect("utf8");
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(text.contains("Digital Signature"), "{text}");
        assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
        assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
        assert!(text.contains("CN = test key") || text.contains("CN=test key"), "{text}");
        assert!(kp.cert.public_key().expect("pk").public_eq(&kp.key));
        assert_eq!(kp.cert.subject_key_id().map(|s| s.as_slice().to_vec()), kp.cert.authority_key_id().map(|s| s.as_slice().to_vec()));
    }

    #[test]
    fn bad_subjects_and_sizes_are_refused() {
        let mk = |s: &str, bits| generate_key_pair(&KeygenOptions { subject: s.into(), bits, days: 1 });
        assert!(mk("CN", 2048).is_err());
        assert!(mk("XX=1", 2048).is_err());
        assert!(mk("CN=a", 1024).expect_err("small").to_string().contains("2048, 3072 or 4096"));
    }
}
