//! One request, a signed image: build through BuildKit (or take an unsigned image), sign the modules
//! in-process and push the signed image to the target tag once.
//!
//! The unsigned build output never takes the target tag, and no temporary tag is left behind: on a
//! Docker engine it is exported into the engine's store under a private name and read back from
//! there (`docker save` format → OCI layout), on a standalone buildkitd it is pushed by digest only
//! (no tag points at it). The signed image records a hash of every build input in its config
//! (label `io.kforge.inputs-hash`): an existing target with the same hash is reused, any other
//! target is rebuilt.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kforge_image::{ImageRef, RegistryOptions, Selection, SignImage};
use kforge_signer::Signer;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;

use crate::endpoint::{Daemon, Endpoint};
use crate::error::{Error, FailureKind, Result};
use crate::events::Event;
use crate::solve::{BuildOutput, BuildSpec, Output, Target, solve};

/// The config label holding the hash of a build's inputs.
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

/// A build-and-sign request.
#[derive(Clone)]
pub struct BuildSign {
    /// The final image (KMM's containerImage, variables expanded).
    pub image: String,
    /// Build from a Dockerfile; `None` with `unsigned_image` set signs only.
    pub build: Option<BuildSpec>,
    /// Sign this image instead of building (KMM's sign.unsignedImage).
    pub unsigned_image: Option<String>,
    /// Sign; `None` builds only.
    pub sign: Option<SignStep>,
    /// Registry credentials and TLS for the existence check, the unsigned image and the push.
    pub registries: RegistryOptions,
    /// Rebuild even if the target exists with the same inputs.
    pub force: bool,
    /// Build attempts before the failure is reported (at least 1).
    pub attempts: u32,
}

impl BuildSign {
    /// Hash over every input: the build (Dockerfile, context, args — DTK digest included — secrets'
    /// content), the unsigned image, the signing certificate and digest, and the files to sign.
    pub fn inputs_hash(&self) -> String {
        self.inputs_hash_with(None)
    }

    /// The inputs hash, with the digest the unsigned image's tag points at (a moved tag re-signs).
    fn inputs_hash_with(&self, unsigned_digest: Option<&str>) -> String {
        let mut h = Sha256::new();
        h.update(b"kforge build-sign v1\0");
        h.update(self.image.as_bytes());
        if let Some(b) = &self.build {
            h.update(b"build\0");
            h.update(b.inputs_hash().as_bytes());
        }
        if let Some(u) = &self.unsigned_image {
            h.update(b"unsigned\0");
            h.update(u.as_bytes());
            h.update(unsigned_digest.unwrap_or("").as_bytes());
        }
        if let Some(s) = &self.sign {
            h.update(b"sign\0");
            h.update(s.signer.key().certificate().fingerprint_sha256().as_bytes());
            h.update(s.signer.hash().name().as_bytes());
            h.update(format!("{:?}", s.selection).as_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

fn message(events: &UnboundedSender<Event>, text: String) {
    tracing::debug!("{text}");
    let _ = events.send(Event::Message(text));
}

/// Builds (or takes the unsigned image), signs and pushes to `req.image`; reuses an existing
/// target built from the same inputs. Sign-only requests need no `daemon`.
pub async fn build_and_sign(daemon: Option<&Daemon>, req: &BuildSign, events: &UnboundedSender<Event>) -> Result<BuildOutput> {
    let target = Target::parse(&req.image)?;
    let needs_daemon = || Error::Request("building needs BuildKit; no BuildKit endpoint was given".into());
    if req.build.is_some() && daemon.is_none() {
        return Err(needs_daemon());
    }
    if req.build.is_none() && req.unsigned_image.is_none() {
        return Err(Error::Request("nothing to do: give a Dockerfile to build or an unsigned image to sign".into()));
    }
    if req.build.is_none() && req.sign.is_none() {
        return Err(Error::Request("an unsigned image without a sign step: nothing to do".into()));
    }
    let opts = req.registries.with_loopback_plain_http(&req.image);
    let unsigned_digest = match &req.unsigned_image {
        Some(u) if !u.starts_with("oci:") => kforge_image::resolve_digest(u, &opts.with_loopback_plain_http(u)).await?,
        _ => None,
    };
    let hash = req.inputs_hash_with(unsigned_digest.as_deref());
    if !req.force {
        match kforge_image::image_labels(&target.tagged(), &opts).await {
            Ok(Some((digest, labels))) if labels.get(INPUTS_LABEL) == Some(&hash) => {
                message(events, format!("{} exists with the same inputs ({hash}); reused", target.tagged()));
                return Ok(BuildOutput { image: format!("{}@{digest}", target.name()), digest, skipped: true });
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

    let Some(sign) = &req.sign else {
        // Build only: straight to the tag, the hash as a label.
        let mut spec = req.build.clone().ok_or_else(|| Error::Request("no build".into()))?;
        spec.image = req.image.clone();
        spec.labels.extend(labels);
        let daemon = daemon.ok_or_else(needs_daemon)?;
        let digest = with_retries(req.attempts, events, || solve(daemon, &spec, &Output::Push, events)).await?.unwrap_or_default();
        return Ok(BuildOutput { image: format!("{}@{digest}", target.name()), digest, skipped: false });
    };

    let work = tempfile::Builder::new().prefix("kforge-build-sign-").tempdir().map_err(Error::io(std::env::temp_dir(), "create a work directory in"))?;
    let mut engine_name = None;
    let from: ImageRef = match (&req.build, &req.unsigned_image) {
        (Some(build), _) => {
            let daemon = daemon.ok_or_else(needs_daemon)?;
            let mut spec = build.clone();
            spec.image = req.image.clone();
            spec.labels.extend(labels.clone());
            match daemon.endpoint() {
                Endpoint::Docker { socket } => {
                    let name = format!("kforge-unsigned/{}:{}", &hash[7..23], crate::unique_id("b").trim_start_matches("b-"));
                    let output = Output::Engine(name.clone());
                    with_retries(req.attempts, events, || solve(daemon, &spec, &output, events)).await?;
                    engine_name = Some((socket.clone(), name.clone()));
                    message(events, "reading the unsigned image back from the engine".into());
                    let layout = crate::export::to_layout(socket, &name, work.path(), "unsigned").await;
                    let layout = match layout {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = crate::docker::remove_image(socket, &name).await;
                            return Err(e);
                        }
                    };
                    ImageRef::Layout { dir: layout, reference: Some("unsigned".into()) }
                }
                _ => {
                    let digest = with_retries(req.attempts, events, || solve(daemon, &spec, &Output::PushByDigest, events)).await?.unwrap_or_default();
                    format!("{}@{digest}", target.name()).parse()?
                }
            }
        }
        (None, Some(unsigned)) => unsigned.parse()?,
        (None, None) => unreachable!("checked above"),
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
    if let Some((socket, name)) = engine_name {
        if let Err(e) = crate::docker::remove_image(&socket, &name).await {
            tracing::warn!(image = %name, error = %e, "could not remove the unsigned image from the engine");
        }
    }
    let signed = signed?;
    message(events, format!("pushed {} signed file(s) to {}", signed.signed.len(), target.tagged()));
    Ok(BuildOutput { image: format!("{}@{}", target.name(), signed.digest), digest: signed.digest, skipped: false })
}

/// Runs a build up to `attempts` times with exponential backoff; failures that would fail again the
/// same way (bad request, Dockerfile error, deadline) are not retried.
async fn with_retries<T, F, Fut>(attempts: u32, events: &UnboundedSender<Event>, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let attempts = attempts.max(1);
    let mut delay = Duration::from_secs(2);
    for attempt in 1.. {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < attempts && retryable(&e) => {
                message(events, format!("build attempt {attempt} of {attempts} failed: {e}; retrying in {} s", delay.as_secs()));
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                if attempt > 1 {
                    message(events, format!("build failed after {attempt} attempts"));
                }
                return Err(e);
            }
        }
    }
    unreachable!("the loop returns")
}

fn retryable(e: &Error) -> bool {
    match e {
        Error::Build { failure, .. } => !matches!(failure.kind, FailureKind::Dockerfile),
        Error::Unavailable { .. } | Error::EnginePush { .. } | Error::Protocol { .. } => true,
        _ => false,
    }
}
