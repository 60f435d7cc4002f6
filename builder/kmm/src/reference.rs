//! Image references pinned to a digest: `registry/repo@sha256:…`.

use oci_client::Reference;

use crate::error::{Error, Result};

fn parse(image: &str, origin: &str) -> Result<Reference> {
    image.parse::<Reference>().map_err(|e| Error::Reference { image: image.to_string(), origin: origin.to_string(), reason: e.to_string() })
}

/// `image` as `registry/repo@digest` if it already names a digest (a tag beside it is dropped).
pub(crate) fn pinned(image: &str, origin: &str) -> Result<Option<String>> {
    let r = parse(image, origin)?;
    Ok(r.digest().map(|d| format!("{}/{}@{d}", r.registry(), r.repository())))
}

/// `image` (tagged) pinned to `digest`.
pub(crate) fn with_digest(image: &str, digest: &str, origin: &str) -> Result<String> {
    let r = parse(image, origin)?;
    Ok(format!("{}/{}@{digest}", r.registry(), r.repository()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_are_kept_and_tags_replaced() {
        assert_eq!(pinned(&format!("quay.io/a/b@{D}"), "t").expect("ok"), Some(format!("quay.io/a/b@{D}")));
        assert_eq!(pinned(&format!("quay.io/a/b:tag@{D}"), "t").expect("ok"), Some(format!("quay.io/a/b@{D}")));
        assert_eq!(pinned("127.0.0.1:5000/dtk:6.1", "t").expect("ok"), None);
        assert_eq!(with_digest("127.0.0.1:5000/dtk:6.1", D, "t").expect("ok"), format!("127.0.0.1:5000/dtk@{D}"));
        assert_eq!(with_digest("debian:12", D, "t").expect("ok"), format!("docker.io/library/debian@{D}"));
        let e = pinned("Not A Ref", "mapping x").expect_err("bad");
        assert!(e.to_string().contains("mapping x"), "{e}");
    }
}
