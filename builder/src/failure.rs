//! A failed solve described: which step, its last log lines, and what kind of failure BuildKit's
//! answer shows (Dockerfile, step, base image, push, interrupted).

use oci_client::Reference;

use crate::endpoint::{Connection, chain};
use crate::error::{BuildFailure, Error, FailureKind};
use crate::status::Seen;

/// Describes a failed solve: the step, its last log lines, and what kind of failure it was.
pub(crate) fn failure(daemon: &Connection, image: &str, status: &tonic::Status, seen: &Seen) -> Error {
    let message = status.message().trim().to_string();
    if matches!(status.code(), tonic::Code::Unavailable) || (status.code() == tonic::Code::Unknown && looks_interrupted(&message)) {
        // The transport's own causes (broken pipe, reset) say more than tonic's summary.
        let cause = std::error::Error::source(status).map(chain).unwrap_or_default();
        let message = if cause.is_empty() || message.contains(&cause) { message } else { format!("{message}: {cause}") };
        let failure = BuildFailure { kind: FailureKind::Interrupted, message, step: None, logs: vec![] };
        return Error::Build { image: image.to_string(), failure: Box::new(failure) };
    }
    if status.code() == tonic::Code::Cancelled && message.is_empty() {
        return Error::Cancelled { endpoint: daemon.endpoint().to_string() };
    }
    let step = seen.failed.as_ref().and_then(|d| seen.names.get(d)).cloned();
    let logs = seen.failed.as_ref().and_then(|d| seen.logs.get(d)).map(|t| t.iter().cloned().collect()).unwrap_or_default();
    let kind = match step.as_deref().and_then(|s| s.strip_prefix("[internal] load metadata for ")) {
        // The frontend resolving a FROM image: whatever the message's wording, a base pull failed.
        Some(image) => base_image_failure(image, &message),
        None => classify(&message),
    };
    let message = if message.contains("no active session") {
        format!("{message} (BuildKit never saw kforge's session: a proxy between kforge and BuildKit must pass the session stream through)")
    } else {
        message
    };
    Error::Build { image: image.to_string(), failure: Box::new(BuildFailure { kind, message, step, logs }) }
}

/// A base image that could not be pulled: its registry, and whether credentials were the problem.
fn base_image_failure(image: &str, message: &str) -> FailureKind {
    let lower = message.to_ascii_lowercase();
    let image = image.trim().to_string();
    // Named as BuildKit names it; the registry is whatever the reference says (docker.io by default).
    let registry = image.parse::<Reference>().map(|r| r.registry().to_string()).unwrap_or_else(|_| "docker.io".to_string());
    let auth = ["401", "403", "unauthorized", "authorization", "authentication", "denied", "no basic auth"].iter().any(|m| lower.contains(m));
    FailureKind::BaseImage { image, registry, auth }
}

fn looks_interrupted(message: &str) -> bool {
    ["transport", "connection reset", "broken pipe", "error reading from server", "h2 protocol error", "stream closed"].iter().any(|m| message.contains(m))
}

/// The kind of failure BuildKit's message describes.
pub(crate) fn classify(message: &str) -> FailureKind {
    let lower = message.to_ascii_lowercase();
    for marker in ["failed to resolve source metadata for ", "failed to load cache key: ", "pull access denied for "] {
        if let Some(at) = message.find(marker) {
            let rest = &message[at + marker.len()..];
            let image = rest.split([' ', ',']).next().unwrap_or(rest).trim_end_matches(':');
            return base_image_failure(image, message);
        }
    }
    if lower.contains("dockerfile parse error") || lower.contains("failed to create llb definition") || lower.contains("failed to parse dockerfile") {
        return FailureKind::Dockerfile;
    }
    if lower.contains("failed to push") || lower.contains("push access denied") || lower.contains("exporting to image") && lower.contains("push") {
        return FailureKind::Push;
    }
    if lower.contains("did not complete successfully") || lower.contains("executor failed running") || lower.contains("exit code:") {
        return FailureKind::Run;
    }
    FailureKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_buildkit_messages() {
        assert_eq!(
            classify("failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 3: unknown instruction: FORM"),
            FailureKind::Dockerfile
        );
        assert_eq!(classify("executor failed running [/bin/sh -c make]: exit code: 2"), FailureKind::Run);
        assert_eq!(classify("process \"/bin/sh -c make\" did not complete successfully: exit code: 2"), FailureKind::Run);
        assert_eq!(
            classify(
                "failed to solve with frontend dockerfile.v0: failed to create LLB definition: failed to resolve source metadata for 127.0.0.1:5000/dtk:6.1: unexpected status code [manifests 6.1]: 401 Unauthorized"
            ),
            FailureKind::BaseImage { image: "127.0.0.1:5000/dtk:6.1".into(), registry: "127.0.0.1:5000".into(), auth: true }
        );
        assert_eq!(
            classify("failed to resolve source metadata for docker.io/library/nope:1: docker.io/library/nope:1: not found"),
            FailureKind::BaseImage { image: "docker.io/library/nope:1".into(), registry: "docker.io".into(), auth: false }
        );
        assert_eq!(classify("failed to push 127.0.0.1:5000/x:y: unexpected status: 401 Unauthorized"), FailureKind::Push);
        assert_eq!(classify("something else"), FailureKind::Other);
    }
}
