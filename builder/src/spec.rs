//! What to build ([`BuildSpec`]) and where it goes ([`Target`]), and the hash that says whether two
//! builds are the same.

use std::collections::BTreeMap;
use std::sync::Arc;

use oci_client::Reference;
use sha2::{Digest, Sha256};

use crate::credentials::{Anonymous, Credentials};
use crate::error::{Error, Result};
use crate::llb::InputFile;

/// What to build.
#[derive(Clone)]
pub struct BuildSpec {
    /// Target image (`registry/repo:tag`); the result is pushed there.
    pub image: String,
    /// Dockerfile text.
    pub dockerfile: String,
    /// Files of the build context (relative paths).
    pub context: Vec<InputFile>,
    /// Build arguments (`ARG`), including KMM's.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Build secrets by id, for `RUN --mount=type=secret,id=…`.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Registry credentials, served through the session (base pulls, pushes).
    pub credentials: Arc<dyn Credentials>,
    /// Push to the target registry over plain HTTP.
    pub insecure_registry: bool,
    /// Give `RUN` steps network access (off by default: module builds need none).
    pub network: bool,
    /// Ignore BuildKit's cache.
    pub no_cache: bool,
    /// Labels added to the image config (`LABEL`), e.g. the hash of the build inputs.
    pub labels: BTreeMap<String, String>,
}

impl Default for BuildSpec {
    fn default() -> Self {
        BuildSpec {
            image: String::new(),
            dockerfile: String::new(),
            context: Vec::new(),
            build_args: BTreeMap::new(),
            target: None,
            secrets: BTreeMap::new(),
            credentials: Arc::new(Anonymous),
            insecure_registry: false,
            network: false,
            no_cache: false,
            labels: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for BuildSpec {
    /// Everything but the secrets' contents and the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildSpec")
            .field("image", &self.image)
            .field("dockerfile_bytes", &self.dockerfile.len())
            .field("context_files", &self.context.len())
            .field("build_args", &self.build_args)
            .field("target", &self.target)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("insecure_registry", &self.insecure_registry)
            .field("network", &self.network)
            .field("no_cache", &self.no_cache)
            .field("labels", &self.labels)
            .finish()
    }
}

impl BuildSpec {
    /// A hash over every input of the build (secrets included, by content): equal hashes mean the
    /// same build. Credentials and transport settings are not part of it. The encoding is explicit
    /// and versioned: each field a tag, a little-endian length and the bytes, in a fixed order.
    pub fn inputs_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"kforge build inputs v2\0");
        let mut field = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("image", self.image.as_bytes());
        field("dockerfile", self.dockerfile.as_bytes());
        let mut files: Vec<_> = self.context.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        for f in files {
            field("file", f.path.as_bytes());
            field("mode", &f.mode.to_le_bytes());
            field("data", &f.data);
        }
        for (k, v) in &self.build_args {
            field("arg", k.as_bytes());
            field("value", v.as_bytes());
        }
        field("target", self.target.as_deref().unwrap_or("").as_bytes());
        for (k, v) in &self.secrets {
            field("secret", k.as_bytes());
            field("secret-data", &Sha256::digest(v));
        }
        field("network", &[self.network as u8, self.no_cache as u8]);
        for (k, v) in &self.labels {
            field("label", k.as_bytes());
            field("label-value", v.as_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// The target, split and normalised (`registry/repo`, `tag`).
#[derive(Debug, Clone)]
pub struct Target {
    /// Registry host (`registry.example:5000`).
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag (`latest` when none was given).
    pub tag: String,
}

impl Target {
    /// Parses `registry/repo[:tag]`; digests and `oci:` layouts are refused.
    pub fn parse(image: &str) -> Result<Target> {
        let bad = |reason: String| Error::Request(format!("target image {image:?}: {reason}"));
        if image.starts_with("oci:") {
            return Err(bad("builds push to a registry; oci: layouts are not a build target".into()));
        }
        let r: Reference = image.parse().map_err(|e: oci_client::ParseError| bad(e.to_string()))?;
        if r.digest().is_some() {
            return Err(bad("a build pushes to a tag; give registry/repo:tag, not a digest".into()));
        }
        Ok(Target { registry: r.registry().to_string(), repository: r.repository().to_string(), tag: r.tag().unwrap_or("latest").to_string() })
    }

    /// `registry/repo` as engines and BuildKit name it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repo:tag`.
    pub fn tagged(&self) -> String {
        format!("{}:{}", self.name(), self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_registry_tags() {
        let t = Target::parse("127.0.0.1:5000/mods/hello:6.1").expect("parses");
        assert_eq!((t.name().as_str(), t.tag.as_str()), ("127.0.0.1:5000/mods/hello", "6.1"));
        assert_eq!(Target::parse("127.0.0.1:5000/mods/hello").expect("no tag").tag, "latest");
        let e = Target::parse("r.example/x@sha256:0000000000000000000000000000000000000000000000000000000000000000").expect_err("digest").to_string();
        assert!(e.contains("not a digest"), "{e}");
        assert!(Target::parse("oci:/tmp/x").is_err());
    }

    #[test]
    fn inputs_hash_changes_with_any_input() {
        let base = BuildSpec { image: "r/x:1".into(), dockerfile: "FROM a\n".into(), ..Default::default() };
        let h = base.inputs_hash();
        assert_eq!(h, base.clone().inputs_hash());
        let mut arg = base.clone();
        arg.build_args.insert("KERNEL_FULL_VERSION".into(), "6.1".into());
        let mut secret = base.clone();
        secret.secrets.insert("s".into(), b"1".to_vec());
        let mut file = base.clone();
        file.context.push(InputFile::new("a.c", "x"));
        let hashes = [h, arg.inputs_hash(), secret.inputs_hash(), file.inputs_hash()];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
