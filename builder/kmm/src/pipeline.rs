//! One request, a signed image: build through BuildKit (or take an unsigned image), sign the modules
//! in-process and push the signed image to the target tag once.
//!
//! The unsigned build output never takes the target tag, and no temporary tag is left behind: on a
//! Docker engine it is exported into the engine's store under a private name and read back from
//! there (`docker save` format → OCI layout), on a standalone buildkitd it is pushed by digest only
//! (no tag points at it). Every image kforge pushes records a hash of its inputs in its config
//! (label `io.kforge.inputs-hash`): an existing target with the same hash is reused, any other
//! target is rebuilt — plain builds and signed builds alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kforge_builder::{BuildSpec, Builder, Endpoint, Event, Output, Target};
use kforge_image::{ImageRef, RegistryOptions, Selection, SignImage};
use kforge_signer::Signer;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{Error, Result};

/// The config label holding the hash of an image's inputs.
pub const INPUTS_LABEL: &str = "io.kforge.inputs-hash";

/// How to sign.
#[derive(Clone)]
pub struct SignStep {
    /// Key, certificate and digest.
    pub signer: Arc<Signer>,
    /// Which files (KMM's filesToSign, or every module under /opt/lib/modules).
    pub selection: Selection,
    /// Called for every file signed, before anything is pushed (the signing service's audit).
    pub audit: Option<kforge_image::AuditHook>,
}

/// Where the modules come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Built from a Dockerfile through BuildKit (KMM's `build`).
    Dockerfile(BuildSpec),
    /// An existing image (KMM's `sign.unsignedImage`): signed, not built.
    Unsigned(String),
}

/// A build-and-sign request: what KMM's `build` and `sign` sections ask for one kernel.
#[derive(Clone)]
pub struct BuildSign {
    /// The final image (KMM's containerImage, variables expanded): `registry/repo:tag`.
    pub image: String,
    /// Where the modules come from.
    pub source: Source,
    /// Sign; `None` builds only (a [`Source::Unsigned`] needs a sign step).
    pub sign: Option<SignStep>,
    /// Registry credentials and TLS for the existence check, the unsigned image and the push.
    pub registries: RegistryOptions,
    /// Rebuild even if the target exists with the same inputs.
    pub force: bool,
    /// Build attempts before the failure is reported (at least 1).
    pub attempts: u32,
}

/// What a request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Digest reference: `registry/repo@sha256:…`.
    pub image: String,
    /// The manifest digest.
    pub digest: String,
    /// Nothing was built: the target exists with the same inputs.
    pub reused: bool,
    /// The build joined an identical one already running.
    pub joined: bool,
}

/// An explicit, versioned encoding of the inputs: each field a tag, a length and the bytes.
struct InputsHasher(Sha256);

impl InputsHasher {
    fn new(version: &str) -> Self {
        let mut h = InputsHasher(Sha256::new());
        h.field("version", version.as_bytes());
        h
    }

    fn field(&mut self, tag: &str, bytes: &[u8]) {
        self.0.update((tag.len() as u64).to_le_bytes());
        self.0.update(tag.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

impl BuildSign {
    /// Hash over every input: the build (Dockerfile, context, args — DTK digest included — secrets'
    /// content) or the unsigned image and the digest its tag points at, the signing certificate and
    /// digest algorithm, and the files to sign.
    pub fn inputs_hash(&self, unsigned_digest: Option<&str>) -> String {
        let mut h = InputsHasher::new("kforge build-sign inputs v2");
        h.field("image", self.image.as_bytes());
        match &self.source {
            Source::Dockerfile(spec) => h.field("build", spec.inputs_hash().as_bytes()),
            Source::Unsigned(image) => {
                h.field("unsigned", image.as_bytes());
                h.field("unsigned-digest", unsigned_digest.unwrap_or("").as_bytes());
            }
        }
        if let Some(s) = &self.sign {
            h.field("certificate-sha256", s.signer.key().certificate().fingerprint_sha256().as_bytes());
            h.field("hash", s.signer.hash().name().as_bytes());
            match &s.selection {
                Selection::Default => h.field("files", b"default"),
                Selection::Files(files) => {
                    for f in files {
                        h.field("file", f.as_bytes());
                    }
                }
            }
        }
        h.finish()
    }
}

fn message(events: &UnboundedSender<Event>, text: String) {
    tracing::debug!("{text}");
    let _ = events.send(Event::Message(text));
}

/// Builds (or takes the unsigned image), signs and pushes to `req.image`; reuses an existing target
/// built from the same inputs. Requests that build need `builder`; sign-only ones do not.
pub async fn run(builder: Option<&Builder>, req: &BuildSign, events: &UnboundedSender<Event>) -> Result<Outcome> {
    let target = Target::parse(&req.image)?;
    let needs_builder = || Error::NoBuildKit { image: req.image.clone() };
    match (&req.source, &req.sign) {
        (Source::Dockerfile(_), _) if builder.is_none() => return Err(needs_builder()),
        (Source::Unsigned(u), None) => return Err(Error::Request(format!("unsigned image {u} without a key to sign it: nothing to do"))),
        _ => {}
    }
    let opts = req.registries.with_loopback_plain_http(&req.image);
    let unsigned_digest = match &req.source {
        Source::Unsigned(u) if !u.starts_with("oci:") => kforge_image::resolve_digest(u, &opts.with_loopback_plain_http(u)).await?,
        _ => None,
    };
    let hash = req.inputs_hash(unsigned_digest.as_deref());
    if !req.force {
        match kforge_image::image_labels(&target.tagged(), &opts).await {
            Ok(Some((digest, labels))) if labels.get(INPUTS_LABEL) == Some(&hash) => {
                message(events, format!("{} exists with the same inputs ({hash}); reused", target.tagged()));
                return Ok(Outcome { image: format!("{}@{digest}", target.name()), digest, reused: true, joined: false });
            }
            Ok(Some((_, labels))) => message(
                events,
                match labels.get(INPUTS_LABEL) {
                    Some(old) => format!("{} was built from other inputs ({old}); rebuilding", target.tagged()),
                    None => format!("{} exists but records no inputs hash; rebuilding", target.tagged()),
                },
            ),
            Ok(None) => {}
            Err(e) => message(events, format!("cannot check {}: {e}; building", target.tagged())),
        }
    }
    let labels = BTreeMap::from([(INPUTS_LABEL.to_string(), hash.clone())]);
    let spec = match &req.source {
        Source::Dockerfile(spec) => {
            let mut spec = spec.clone();
            spec.image = req.image.clone();
            spec.labels.extend(labels.clone());
            Some(spec)
        }
        Source::Unsigned(_) => None,
    };

    let Some(sign) = &req.sign else {
        // Build only: straight to the tag, the hash as a label.
        let (builder, spec) = (builder.ok_or_else(needs_builder)?, spec.ok_or_else(needs_builder)?);
        let (digest, joined) = build(builder, &spec, Output::Push, req.attempts, events).await?;
        let digest = digest.ok_or_else(|| Error::Request(format!("BuildKit pushed {} but reported no digest", target.tagged())))?;
        return Ok(Outcome { image: format!("{}@{digest}", target.name()), digest, reused: false, joined });
    };

    let work = tempfile::Builder::new().prefix("kforge-build-sign-").tempdir().map_err(|source| Error::Io {
        path: std::env::temp_dir(),
        action: "create a work directory in",
        source,
    })?;
    let mut engine_image = None;
    let from: ImageRef = match (&req.source, spec) {
        (Source::Dockerfile(_), Some(spec)) => {
            let builder = builder.ok_or_else(needs_builder)?;
            let connection = builder.connection();
            if let Endpoint::Docker { .. } = connection.endpoint() {
                let name = format!("kforge-unsigned/{}:{}", &hash[7..23], unique_suffix());
                build(builder, &spec, Output::Engine(name.clone()), req.attempts, events).await?;
                engine_image = Some(name.clone());
                message(events, "reading the unsigned image back from the engine".into());
                match read_back(connection, &name, work.path()).await {
                    Ok(layout) => ImageRef::Layout { dir: layout, reference: Some("unsigned".into()) },
                    Err(e) => {
                        let _ = connection.remove_engine_image(&name).await;
                        return Err(e);
                    }
                }
            } else {
                let (digest, _) = build(builder, &spec, Output::PushByDigest, req.attempts, events).await?;
                let digest = digest.ok_or_else(|| Error::Request(format!("BuildKit pushed {} by digest but reported none", target.name())))?;
                format!("{}@{digest}", target.name()).parse()?
            }
        }
        (Source::Unsigned(unsigned), _) => unsigned.parse()?,
        (Source::Dockerfile(_), None) => return Err(needs_builder()),
    };

    message(events, format!("signing the modules of {from}"));
    let ev = events.clone();
    let sign_events: Arc<dyn Fn(kforge_image::Event) + Send + Sync> = Arc::new(move |e| {
        if let kforge_image::Event::Signed { path, .. } = &e {
            let _ = ev.send(Event::Message(format!("signed {path}")));
        }
    });
    let request = SignImage {
        from,
        to: req.image.parse()?,
        selection: sign.selection.clone(),
        signer: sign.signer.clone(),
        registries: opts,
        work_dir: Some(work.path().to_path_buf()),
        audit: sign.audit.clone(),
        gzip_level: kforge_image::DEFAULT_GZIP_LEVEL,
        labels,
    };
    let signed = kforge_image::sign_image(&request, sign_events).await;
    if let (Some(name), Some(builder)) = (engine_image, builder)
        && let Err(e) = builder.connection().remove_engine_image(&name).await
    {
        tracing::warn!(image = %name, error = %e, "could not remove the unsigned image from the engine");
    }
    let signed = signed?;
    message(events, format!("pushed {} signed file(s) to {}", signed.signed.len(), target.tagged()));
    Ok(Outcome { image: format!("{}@{}", target.name(), signed.digest), digest: signed.digest, reused: false, joined: false })
}

/// A private, unguessable suffix for the engine-side name of an unsigned build.
fn unique_suffix() -> String {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(now.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(std::collections::hash_map::RandomState::new().hash_one(0u8).to_le_bytes());
    hex::encode(h.finalize())[..20].to_string()
}

/// Reads engine image `name` back into an OCI layout under `dir`.
async fn read_back(connection: &kforge_builder::Connection, name: &str, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let reader = tokio_util::io::SyncIoBridge::new(connection.export_engine_image(name).await?);
    let (dir, name) = (dir.to_path_buf(), name.to_string());
    let layout = tokio::task::spawn_blocking(move || kforge_image::docker_save::to_layout(reader, &dir, &name, "unsigned"))
        .await
        .map_err(|e| Error::Request(format!("reading the unsigned image back stopped: {e}")))??;
    Ok(layout)
}

/// Runs a build up to `attempts` times with exponential backoff; failures that would fail again the
/// same way (bad request, Dockerfile error, deadline) are not retried. Returns the pushed digest and
/// whether the first attempt joined an identical build already running.
async fn build(builder: &Builder, spec: &BuildSpec, output: Output, attempts: u32, events: &UnboundedSender<Event>) -> Result<(Option<String>, bool)> {
    let attempts = attempts.max(1);
    let mut delay = Duration::from_secs(2);
    let mut joined = false;
    for attempt in 1.. {
        let handle = builder.start(spec.clone(), output.clone())?;
        if attempt == 1 {
            joined = handle.joined();
        }
        match handle.forward(events).await {
            Ok(v) => return Ok((v, joined)),
            Err(e) if attempt < attempts && retryable(&e) => {
                message(events, format!("build attempt {attempt} of {attempts} failed: {e}; retrying in {} s", delay.as_secs()));
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                if attempt > 1 {
                    message(events, format!("build failed after {attempt} attempts"));
                }
                return Err(e.into());
            }
        }
    }
    unreachable!("the loop returns")
}

fn retryable(e: &kforge_builder::Error) -> bool {
    use kforge_builder::{Error as E, FailureKind};
    match e {
        E::Shared(inner) => retryable(inner),
        E::Build { failure, .. } => !matches!(failure.kind, FailureKind::Dockerfile),
        E::Unavailable { .. } | E::EnginePush { .. } | E::Protocol { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(source: Source) -> BuildSign {
        BuildSign { image: "r.example/m:6.1".into(), source, sign: None, registries: RegistryOptions::default(), force: false, attempts: 1 }
    }

    #[test]
    fn inputs_hash_follows_every_input() {
        let spec = BuildSpec { dockerfile: "FROM a\n".into(), ..Default::default() };
        let base = request(Source::Dockerfile(spec.clone()));
        let h = base.inputs_hash(None);
        assert_eq!(h, base.clone().inputs_hash(None), "stable");
        let mut other_image = base.clone();
        other_image.image = "r.example/m:6.2".into();
        let mut arg = spec.clone();
        arg.build_args.insert("X".into(), "1".into());
        let unsigned = request(Source::Unsigned("r.example/u:1".into()));
        let hashes = [
            h,
            other_image.inputs_hash(None),
            request(Source::Dockerfile(arg)).inputs_hash(None),
            unsigned.inputs_hash(Some("sha256:aa")),
            unsigned.inputs_hash(Some("sha256:bb")),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn the_encoding_separates_fields() {
        // "ab" + "c" and "a" + "bc" must not collide (lengths are part of the encoding).
        let mut a = InputsHasher::new("t");
        a.field("x", b"ab");
        a.field("x", b"c");
        let mut b = InputsHasher::new("t");
        b.field("x", b"a");
        b.field("x", b"bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[tokio::test]
    async fn refuses_what_it_cannot_do_before_any_work() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let e = run(None, &request(Source::Dockerfile(BuildSpec { dockerfile: "FROM a\n".into(), ..Default::default() })), &tx).await.expect_err("no BuildKit");
        assert!(matches!(e, Error::NoBuildKit { .. }), "{e}");
        let e = run(None, &request(Source::Unsigned("r.example/u:1".into())), &tx).await.expect_err("nothing to sign with");
        assert!(e.to_string().contains("without a key"), "{e}");
        let mut digest_target = request(Source::Unsigned("r.example/u:1".into()));
        digest_target.image = "r.example/m@sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
        assert!(run(None, &digest_target, &tx).await.expect_err("digest target").to_string().contains("not a digest"));
    }
}
