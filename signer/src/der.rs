//! The little DER this crate needs: writing definite-length TLVs and reading them back.

/// ASN.1 tags used by module signatures and certificates.
pub(crate) mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `[0]` constructed (EXPLICIT).
    pub const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
    /// `[0]` primitive (IMPLICIT OCTET STRING).
    pub const CONTEXT_0_PRIMITIVE: u8 = 0x80;
}

/// Encodes one TLV with a definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// Encodes a constructed TLV whose content is the concatenation of `parts`.
pub(crate) fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// One decoded TLV: its tag, its content, and the whole encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads consecutive TLVs from a byte slice.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Looks at the next tag without consuming it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads any TLV.
    pub fn any(&mut self) -> Result<Tlv<'a>, String> {
        let bytes = self.rest;
        let (&tag, after_tag) = bytes.split_first().ok_or("unexpected end of data")?;
        if tag & 0x1f == 0x1f {
            return Err(format!("multi-byte tag 0x{tag:02x} is not supported"));
        }
        let (&first, after_len0) = after_tag.split_first().ok_or("unexpected end of data in a length")?;
        let (len, header) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return Err(format!("unsupported length encoding 0x{first:02x} (indefinite or over 4 bytes)"));
            }
            let len_bytes = after_len0.get(..n).ok_or("unexpected end of data in a length")?;
            let len = len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            if len < 0x80 || len_bytes[0] == 0 {
                return Err("length is not minimally encoded (not DER)".into());
            }
            (len, 2 + n)
        };
        let total = header.checked_add(len).ok_or("length overflows")?;
        if total > bytes.len() {
            return Err(format!("element claims {len} bytes but only {} remain", bytes.len() - header));
        }
        self.rest = &bytes[total..];
        Ok(Tlv { tag, content: &bytes[header..total], raw: &bytes[..total] })
    }

    /// Reads a TLV that must carry `tag`.
    pub fn read_tag(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>, String> {
        let tlv = self.any().map_err(|e| format!("{what}: {e}"))?;
        if tlv.tag != tag {
            return Err(format!("{what}: expected tag 0x{tag:02x}, found 0x{:02x}", tlv.tag));
        }
        Ok(tlv)
    }

    /// Reads a TLV that must carry `tag` and returns a reader over its content.
    pub fn enter(&mut self, tag: u8, what: &str) -> Result<Reader<'a>, String> {
        Ok(Reader::new(self.read_tag(tag, what)?.content))
    }

    /// Requires that nothing is left.
    pub fn finish(&self, what: &str) -> Result<(), String> {
        if self.rest.is_empty() { Ok(()) } else { Err(format!("{what}: {} unexpected trailing bytes", self.rest.len())) }
    }
}

/// Encodes a dotted OID (arcs) as DER content bytes.
#[cfg(test)]
pub(crate) fn oid_content(arcs: &[u64]) -> Vec<u8> {
    let mut out = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &arc in &arcs[2..] {
        let mut stack = vec![(arc & 0x7f) as u8];
        let mut v = arc >> 7;
        while v > 0 {
            stack.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        out.extend(stack.iter().rev());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_at_every_boundary() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536, 1 << 20] {
            let content = vec![0xabu8; len];
            let enc = tlv(tag::OCTET_STRING, &content);
            let mut r = Reader::new(&enc);
            let t = r.read_tag(tag::OCTET_STRING, "x").expect("decodes");
            assert_eq!(t.content.len(), len);
            assert_eq!(t.raw.len(), enc.len());
            assert!(r.is_empty());
        }
        assert_eq!(tlv(4, &[0; 128])[..3], [4, 0x81, 0x80]);
        assert_eq!(tlv(4, &[0; 256])[..4], [4, 0x82, 1, 0]);
    }

    #[test]
    fn rejects_lies_and_non_der() {
        assert!(Reader::new(&[0x04, 0x05, 1, 2]).any().is_err(), "length past the end");
        assert!(Reader::new(&[0x04, 0x80]).any().is_err(), "indefinite length");
        assert!(Reader::new(&[0x04, 0x81, 0x05, 0, 0, 0, 0, 0]).any().is_err(), "non-minimal length");
        assert!(Reader::new(&[0x04]).any().is_err(), "missing length");
        assert!(Reader::new(&[]).any().is_err(), "empty");
    }

    #[test]
    fn oid_encoding_matches_known_bytes() {
        // sha256: 2.16.840.1.101.3.4.2.1
        assert_eq!(oid_content(&[2, 16, 840, 1, 101, 3, 4, 2, 1]), [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]);
        // signedData: 1.2.840.113549.1.7.2
        assert_eq!(oid_content(&[1, 2, 840, 113549, 1, 7, 2]), [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]);
    }
}
