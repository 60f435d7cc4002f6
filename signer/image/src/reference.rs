//! Where an image lives: a registry reference or an OCI image layout on disk.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_client::Reference;

use crate::error::Error;

/// An image source or destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `registry/repo:tag` or `registry/repo@sha256:…`.
    Registry(Reference),
    /// `oci:DIR[:tag]` or `oci:DIR@sha256:…`: an OCI image layout directory.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// A tag (`org.opencontainers.image.ref.name`) or a digest; `None` means the only image.
        reference: Option<String>,
    },
}

impl ImageRef {
    /// The tag, if the reference names one.
    pub fn tag(&self) -> Option<&str> {
        match self {
            ImageRef::Registry(r) => r.digest().is_none().then(|| r.tag().unwrap_or("latest")),
            ImageRef::Layout { reference, .. } => reference.as_deref().filter(|r| !r.starts_with("sha256:")),
        }
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        match self {
            ImageRef::Registry(r) => r.digest(),
            ImageRef::Layout { reference, .. } => reference.as_deref().filter(|r| r.starts_with("sha256:")),
        }
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Reference { reference: s.to_string(), reason: reason.to_string() };
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(bad("oci: needs a directory, e.g. oci:./image:v1"));
            }
            let (dir, reference) = if let Some((dir, digest)) = rest.split_once('@') {
                if !crate::digest::is_sha256(digest) {
                    return Err(bad("the part after @ must be a sha256: digest"));
                }
                (dir, Some(digest.to_string()))
            } else {
                match rest.rsplit_once(':') {
                    Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => {
                        if tag.is_empty() {
                            return Err(bad("empty tag after ':'"));
                        }
                        (dir, Some(tag.to_string()))
                    }
                    _ => (rest, None),
                }
            };
            return Ok(ImageRef::Layout { dir: PathBuf::from(dir), reference });
        }
        if s.contains("://") {
            return Err(bad("write registry references without a scheme (registry.example.com/repo:tag), or oci:DIR for a layout"));
        }
        let r: Reference = s.parse().map_err(|e: oci_client::ParseError| bad(&e.to_string()))?;
        Ok(ImageRef::Registry(r))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "{}", r.whole()),
            ImageRef::Layout { dir, reference: None } => write!(f, "oci:{}", dir.display()),
            ImageRef::Layout { dir, reference: Some(r) } if r.starts_with("sha256:") => write!(f, "oci:{}@{r}", dir.display()),
            ImageRef::Layout { dir, reference: Some(r) } => write!(f, "oci:{}:{r}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layouts_and_registries() {
        let r: ImageRef = "oci:/tmp/img:v1".parse().expect("layout");
        assert_eq!(r, ImageRef::Layout { dir: "/tmp/img".into(), reference: Some("v1".into()) });
        assert_eq!(r.tag(), Some("v1"));
        let r: ImageRef = "oci:./a/b".parse().expect("layout");
        assert_eq!(r, ImageRef::Layout { dir: "./a/b".into(), reference: None });
        let d = format!("sha256:{}", "a".repeat(64));
        let r: ImageRef = format!("oci:img@{d}").parse().expect("layout");
        assert_eq!(r.digest(), Some(d.as_str()));
        let r: ImageRef = "127.0.0.1:5000/mods/nvidia:6.1.0-56-amd64".parse().expect("registry");
        match &r {
            ImageRef::Registry(r) => {
                assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "mods/nvidia", Some("6.1.0-56-amd64")))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.to_string(), "127.0.0.1:5000/mods/nvidia:6.1.0-56-amd64");
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        for bad in ["oci:", "https://reg/x:1", "bad repo:x", "oci:x@sha256:zz"] {
            let e = bad.parse::<ImageRef>().expect_err(bad).to_string();
            assert!(e.starts_with(&format!("invalid image reference {bad:?}")), "{e}");
        }
    }
}
