//! What the CLI adds to library errors: the flags that fix them. The libraries also answer remote
//! callers, who have no flags, so they name none themselves.

use kforge_builder::Error as BuildError;
use kforge_kmm::Error as KmmError;

/// Said when BuildKit cannot be reached.
pub const BUILDKIT: &str = "BuildKit: check --buildkit (or BUILDKIT_HOST) and that the daemon is running";

/// The flag hint for a registry error, if one helps.
fn image_hint(e: &kforge_image::Error) -> Option<&'static str> {
    match e {
        kforge_image::Error::PlainHttp { .. } => Some("pass --insecure (or --insecure-registry HOST) to reach a plain-HTTP registry"),
        kforge_image::Error::SpeaksHttps { .. } => Some("drop --insecure for it, or give --registry-ca FILE or --insecure-skip-tls-verify"),
        kforge_image::Error::Auth { .. } => Some("give registry credentials with --auth-file (a Docker config.json), or in ~/.docker/config.json"),
        _ => None,
    }
}

/// An image error for the terminal: the error and its causes, then the hint.
pub fn image(e: kforge_image::Error) -> anyhow::Error {
    match image_hint(&e) {
        Some(h) => anyhow::anyhow!("{:#}\nhint: {h}", anyhow::Error::new(e)),
        None => anyhow::Error::new(e),
    }
}

/// The flag hint for a build-and-sign error, if one helps.
fn hint(e: &KmmError) -> Option<&'static str> {
    match e {
        KmmError::DtkUnconfigured { .. } | KmmError::NothingApplies { .. } => {
            Some("pass --build-arg DTK_AUTO=IMAGE, or say where Driver Toolkit images come from with --dtk-template, --dtk-map, --dtk-config or --kube")
        }
        KmmError::Build(BuildError::Unavailable { .. }) | KmmError::NoBuildKit { .. } => Some(BUILDKIT),
        KmmError::Image(i) => image_hint(i),
        KmmError::Build(BuildError::Build { failure, .. }) if matches!(failure.kind, kforge_builder::FailureKind::BaseImage { auth: true, .. }) => {
            Some("give registry credentials with --auth-file (a Docker config.json)")
        }
        _ => None,
    }
}

/// A build-and-sign error for the terminal: the error and its causes, then the hint.
pub fn kmm(e: KmmError) -> anyhow::Error {
    match hint(&e) {
        Some(h) => anyhow::anyhow!("{:#}\nhint: {h}", anyhow::Error::new(e)),
        None => anyhow::Error::new(e),
    }
}

/// A key or certificate error for the terminal, with the flag that fixes it.
pub fn signer(e: impl Into<kforge_signer::Error>) -> anyhow::Error {
    use kforge_signer::{Error, KeyError};
    let e = e.into();
    let hint = match &e {
        Error::Key(KeyError::NeedsPassphrase { .. }) => Some("set KBUILD_SIGN_PIN or pass --passphrase-file FILE"),
        Error::Key(KeyError::NoSubjectKeyId { .. }) => Some("drop --key-id to identify the signer by issuer and serial, as sign-file does by default"),
        _ => None,
    };
    match hint {
        Some(h) => anyhow::anyhow!("{:#}\nhint: {h}", anyhow::Error::new(e)),
        None => anyhow::Error::new(e),
    }
}
