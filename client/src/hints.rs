//! What the CLI adds to library errors: the flags that fix them. The libraries also answer remote
//! callers, who have no flags, so they name none themselves.

use kforge_builder::Error as BuildError;
use kforge_kmm::Error as KmmError;

/// Said when BuildKit cannot be reached.
pub const BUILDKIT: &str = "BuildKit: check --buildkit (or BUILDKIT_HOST) and that the daemon is running";

/// The flag hint for a build-and-sign error, if one helps.
fn hint(e: &KmmError) -> Option<&'static str> {
    match e {
        KmmError::DtkUnconfigured { .. } | KmmError::NothingApplies { .. } => {
            Some("pass --build-arg DTK_AUTO=IMAGE, or say where Driver Toolkit images come from with --dtk-template, --dtk-map, --dtk-config or --kube")
        }
        KmmError::Build(BuildError::Unavailable { .. }) | KmmError::NoBuildKit { .. } => Some(BUILDKIT),
        KmmError::Image(kforge_image::Error::Auth { .. }) | KmmError::Build(BuildError::Build { .. }) if e.to_string().contains("credentials") => {
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
