//! OpenShift's Driver Toolkit: ImageStream `openshift/driver-toolkit`, one tag per RHCOS version, and
//! the RHCOS version of the Nodes running a kernel (`status.nodeInfo.osImage`).

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kubeapi::get_opt;
use crate::lookup::DigestLookup;
use crate::reference::{pinned, with_digest};

/// The ImageStream's namespace.
pub const NAMESPACE: &str = "openshift";
/// The ImageStream's name.
pub const NAME: &str = "driver-toolkit";
/// How it is named in messages.
pub const OBJECT: &str = "ImageStream openshift/driver-toolkit";

const PAGE: u32 = 500;

/// What the OpenShift source gave.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A digest reference and how it was found.
    Found { image: String, detail: String },
    /// Why this source does not apply.
    Skipped(String),
}

fn image_stream_resource() -> ApiResource {
    ApiResource {
        group: "image.openshift.io".into(),
        version: "v1".into(),
        api_version: "image.openshift.io/v1".into(),
        kind: "ImageStream".into(),
        plural: "imagestreams".into(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct ImageStream {
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(default)]
    tags: Vec<SpecTag>,
}

#[derive(Debug, Deserialize)]
struct SpecTag {
    name: String,
    #[serde(default)]
    from: Option<ObjectRef>,
}

#[derive(Debug, Deserialize)]
struct ObjectRef {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    tags: Vec<StatusTag>,
}

#[derive(Debug, Deserialize)]
struct StatusTag {
    tag: String,
    #[serde(default)]
    items: Vec<TagEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagEvent {
    #[serde(default)]
    docker_image_reference: String,
}

/// The (RH)CoreOS version in a node's `osImage`, e.g. `412.86.202301061548-0` from
/// `Red Hat Enterprise Linux CoreOS 412.86.202301061548-0 (Ootpa)`.
pub fn coreos_version(os_image: &str) -> Option<&str> {
    let (_, rest) = os_image.split_once("CoreOS ")?;
    rest.split_whitespace().next().filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
}

/// Nodes running `kernel`: (name, osImage).
async fn nodes_with_kernel(client: &Client, kernel: &str) -> Result<Vec<(String, String)>> {
    let api: Api<Node> = Api::all(client.clone());
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = api.list(&params).await.map_err(|source| Error::Kube { what: "list Nodes".into(), source })?;
        for node in &page.items {
            let Some(info) = node.status.as_ref().and_then(|s| s.node_info.as_ref()) else { continue };
            if info.kernel_version == kernel {
                found.push((node.metadata.name.clone().unwrap_or_default(), info.os_image.clone()));
            }
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(found);
        }
    }
}

/// The DTK image of the RHCOS version that the Nodes running `kernel` have.
pub(crate) async fn resolve(client: &Client, kernel: &str, lookup: &dyn DigestLookup) -> Result<Outcome> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &image_stream_resource());
    let Some(object) = get_opt(&api, NAME, || format!("get {OBJECT}")).await? else {
        return Ok(Outcome::Skipped(format!("{OBJECT}: not found (not OpenShift)")));
    };
    let stream: ImageStream = serde_json::from_value(object.data).map_err(|e| Error::Malformed { object: OBJECT.into(), reason: e.to_string() })?;

    let nodes = nodes_with_kernel(client, kernel).await?;
    if nodes.is_empty() {
        return Ok(Outcome::Skipped(format!("{OBJECT}: no Node runs kernel {kernel}, so its RHCOS version is unknown")));
    }
    let mut versions: Vec<(&str, &str)> = Vec::new();
    for (node, os) in &nodes {
        match coreos_version(os) {
            Some(v) if !versions.iter().any(|(seen, _)| *seen == v) => versions.push((v, node)),
            _ => {}
        }
    }
    if versions.is_empty() {
        let (node, os) = &nodes[0];
        return Ok(Outcome::Skipped(format!("{OBJECT}: the Nodes running kernel {kernel} have no RHCOS osImage (Node {node}: {os:?})")));
    }

    let mut reasons = Vec::new();
    for (version, node) in versions {
        let origin = format!("{OBJECT} tag {version}");
        let from_status = stream
            .status
            .tags
            .iter()
            .find(|t| t.tag == version)
            .and_then(|t| t.items.first())
            .map(|i| i.docker_image_reference.as_str())
            .filter(|r| !r.is_empty());
        let from_spec = stream
            .spec
            .tags
            .iter()
            .find(|t| t.name == version)
            .and_then(|t| t.from.as_ref())
            .filter(|f| f.kind == "DockerImage" && !f.name.is_empty())
            .map(|f| f.name.as_str());
        let Some(reference) = from_status.or(from_spec) else {
            let tags: Vec<&str> = stream.spec.tags.iter().map(|t| t.name.as_str()).collect();
            reasons.push(format!(
                "{OBJECT}: no tag {version} for the RHCOS of Node {node} (tags: {})",
                if tags.is_empty() { "none".to_string() } else { tags.join(", ") }
            ));
            continue;
        };
        let detail = format!("{origin} (RHCOS of Node {node}, which runs {kernel})");
        if let Some(image) = pinned(reference, &origin)? {
            return Ok(Outcome::Found { image, detail });
        }
        match lookup.digest(reference).await {
            Ok(Some(digest)) => return Ok(Outcome::Found { image: with_digest(reference, &digest, &origin)?, detail: format!("{detail} via {reference}") }),
            Ok(None) => reasons.push(format!("{origin}: {reference} does not exist in its registry")),
            Err(source) => return Err(Error::Registry { image: reference.to_string(), source }),
        }
    }
    Ok(Outcome::Skipped(reasons.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coreos_versions() {
        assert_eq!(coreos_version("Red Hat Enterprise Linux CoreOS 412.86.202301061548-0 (Ootpa)"), Some("412.86.202301061548-0"));
        assert_eq!(coreos_version("Red Hat Enterprise Linux CoreOS 9.6.20250523-0 (Plow)"), Some("9.6.20250523-0"));
        assert_eq!(coreos_version("Red Hat Enterprise Linux CoreOS 416.94.202405291527-0"), Some("416.94.202405291527-0"));
        assert_eq!(coreos_version("Debian GNU/Linux 12 (bookworm)"), None);
        assert_eq!(coreos_version("Red Hat Enterprise Linux 8.6 (Ootpa)"), None);
        assert_eq!(coreos_version("Red Hat Enterprise Linux CoreOS (unknown)"), None);
    }
}
