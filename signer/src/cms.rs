//! The CMS SignedData that `sign-file` writes, built and parsed by hand so the bytes match exactly.
//!
//! ```text
//! ContentInfo { signedData, [0] SignedData {
//!   version 1 (3 with a key identifier), digestAlgorithms { {hash} },
//!   encapContentInfo { id-data } (detached), -- no certificates, no CRLs
//!   signerInfos { { version 1 | 3, issuerAndSerialNumber | [0] subjectKeyIdentifier,
//!                   {hash}, {rsaEncryption, NULL}, signature } } } }
//! ```

use crate::der::{Reader, constructed, tag, tlv};
use crate::error::Error;
use crate::hash::HashAlgorithm;

/// 1.2.840.113549.1.7.2
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
/// 1.2.840.113549.1.7.1
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// 1.2.840.113549.1.1.1
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// How a SignerInfo names the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerId {
    /// `issuerAndSerialNumber`: the issuer Name DER and the serialNumber INTEGER DER.
    IssuerSerial {
        /// Issuer Name, DER.
        issuer: Vec<u8>,
        /// Serial number INTEGER, DER (tag and length included).
        serial: Vec<u8>,
    },
    /// `subjectKeyIdentifier`: the certificate's key identifier bytes.
    KeyId(Vec<u8>),
}

/// The parts of a module's CMS signature that matter to a verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Digest algorithm.
    pub hash: HashAlgorithm,
    /// Which certificate signed.
    pub signer: SignerId,
    /// Raw signature (RSA PKCS#1 v1.5 over the DigestInfo).
    pub signature: Vec<u8>,
    /// OID content of the signature algorithm.
    pub signature_algorithm: Vec<u8>,
}

/// Encodes the SignedData for one signature.
pub(crate) fn encode(hash: HashAlgorithm, signer: &SignerId, signature: &[u8]) -> Vec<u8> {
    let digest_alg = tlv(tag::SEQUENCE, &tlv(tag::OID, hash.oid()));
    let (version, sid) = match signer {
        SignerId::IssuerSerial { issuer, serial } => (1u8, constructed(tag::SEQUENCE, &[issuer, serial])),
        SignerId::KeyId(id) => (3u8, tlv(tag::CONTEXT_0_PRIMITIVE, id)),
    };
    let version = tlv(tag::INTEGER, &[version]);
    let sig_alg = constructed(tag::SEQUENCE, &[&tlv(tag::OID, OID_RSA_ENCRYPTION), &tlv(tag::NULL, &[])]);
    let signer_info = constructed(tag::SEQUENCE, &[&version, &sid, &digest_alg, &sig_alg, &tlv(tag::OCTET_STRING, signature)]);
    let signed_data =
        constructed(tag::SEQUENCE, &[&version, &tlv(tag::SET, &digest_alg), &tlv(tag::SEQUENCE, &tlv(tag::OID, OID_DATA)), &tlv(tag::SET, &signer_info)]);
    constructed(tag::SEQUENCE, &[&tlv(tag::OID, OID_SIGNED_DATA), &tlv(tag::CONTEXT_0_CONSTRUCTED, &signed_data)])
}

/// Parses a module signature's CMS: exactly one signer, detached content.
pub fn parse(der: &[u8]) -> Result<Parsed, Error> {
    parse_inner(der).map_err(Error::Cms)
}

fn parse_inner(der: &[u8]) -> Result<Parsed, String> {
    let mut outer = Reader::new(der);
    let mut content_info = outer.enter(tag::SEQUENCE, "ContentInfo")?;
    outer.finish("ContentInfo")?;
    if content_info.read_tag(tag::OID, "contentType")?.content != OID_SIGNED_DATA {
        return Err("content type is not signedData".into());
    }
    let mut explicit = content_info.enter(tag::CONTEXT_0_CONSTRUCTED, "content")?;
    let mut sd = explicit.enter(tag::SEQUENCE, "SignedData")?;
    sd.read_tag(tag::INTEGER, "SignedData version")?;
    let mut digest_algs = sd.enter(tag::SET, "digestAlgorithms")?;
    while !digest_algs.is_empty() {
        digest_algs.any()?;
    }
    let mut encap = sd.enter(tag::SEQUENCE, "encapContentInfo")?;
    if encap.read_tag(tag::OID, "eContentType")?.content != OID_DATA {
        return Err("encapsulated content type is not id-data".into());
    }
    if !encap.is_empty() {
        return Err("signature has embedded content; module signatures are detached".into());
    }
    // Optional certificates [0] and CRLs [1]: tolerated, not used.
    while matches!(sd.peek_tag(), Some(0xa0) | Some(0xa1)) {
        sd.any()?;
    }
    let mut signer_infos = sd.enter(tag::SET, "signerInfos")?;
    let mut si = signer_infos.enter(tag::SEQUENCE, "SignerInfo")?;
    if !signer_infos.is_empty() {
        return Err("more than one SignerInfo; the kernel uses only one".into());
    }
    si.read_tag(tag::INTEGER, "SignerInfo version")?;
    let sid = si.any()?;
    let signer = match sid.tag {
        tag::SEQUENCE => {
            let mut ias = Reader::new(sid.content);
            let issuer = ias.read_tag(tag::SEQUENCE, "issuer")?.raw.to_vec();
            let serial = ias.read_tag(tag::INTEGER, "serialNumber")?.raw.to_vec();
            SignerId::IssuerSerial { issuer, serial }
        }
        tag::CONTEXT_0_PRIMITIVE => SignerId::KeyId(sid.content.to_vec()),
        other => return Err(format!("unknown signer identifier tag 0x{other:02x}")),
    };
    let mut digest_alg = si.enter(tag::SEQUENCE, "digestAlgorithm")?;
    let oid = digest_alg.read_tag(tag::OID, "digest OID")?.content;
    let hash = HashAlgorithm::from_oid(oid).ok_or_else(|| format!("unsupported digest algorithm OID {}", hex::encode(oid)))?;
    if si.peek_tag() == Some(tag::CONTEXT_0_CONSTRUCTED) {
        return Err("signed attributes are present; kernel module signatures carry none".into());
    }
    let mut sig_alg = si.enter(tag::SEQUENCE, "signatureAlgorithm")?;
    let signature_algorithm = sig_alg.read_tag(tag::OID, "signature algorithm OID")?.content.to_vec();
    let signature = si.read_tag(tag::OCTET_STRING, "signature")?.content.to_vec();
    Ok(Parsed { hash, signer, signature, signature_algorithm })
}

/// Whether the signature algorithm is plain `rsaEncryption` (PKCS#1 v1.5), the one `sign-file` writes.
pub(crate) fn is_rsa_pkcs1(parsed: &Parsed) -> bool {
    parsed.signature_algorithm == OID_RSA_ENCRYPTION
        // sha*WithRSAEncryption (1.2.840.113549.1.1.{5,11,12,13,14}) mean the same scheme.
        || (parsed.signature_algorithm.len() == 9
            && parsed.signature_algorithm[..8] == OID_RSA_ENCRYPTION[..8]
            && matches!(parsed.signature_algorithm[8], 5 | 11..=14))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_round_trips_both_signer_forms() {
        let issuer = tlv(tag::SEQUENCE, &[]);
        let serial = tlv(tag::INTEGER, &[0x01, 0x02]);
        for signer in [SignerId::IssuerSerial { issuer: issuer.clone(), serial: serial.clone() }, SignerId::KeyId(vec![7; 20])] {
            for hash in HashAlgorithm::ALL {
                let der = encode(hash, &signer, &[0x55; 256]);
                let p = parse(&der).expect("parses");
                assert_eq!(p.hash, hash);
                assert_eq!(p.signer, signer);
                assert_eq!(p.signature, vec![0x55; 256]);
                assert!(is_rsa_pkcs1(&p));
            }
        }
    }

    #[test]
    fn key_id_form_uses_version_3() {
        let der = encode(HashAlgorithm::Sha256, &SignerId::KeyId(vec![1; 20]), &[0; 4]);
        // ContentInfo / [0] / SignedData / version INTEGER 3
        let mut r = Reader::new(&der);
        let mut ci = r.enter(tag::SEQUENCE, "ci").expect("ci");
        ci.read_tag(tag::OID, "oid").expect("oid");
        let mut sd = ci.enter(0xa0, "x").expect("x").enter(tag::SEQUENCE, "sd").expect("sd");
        assert_eq!(sd.read_tag(tag::INTEGER, "v").expect("v").content, &[3]);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = parse(b"\x30\x03\x02\x01\x01").expect_err("not signedData").to_string();
        assert!(err.starts_with("malformed CMS signature"), "{err}");
        assert!(parse(&[]).is_err());
    }
}
