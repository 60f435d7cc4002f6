//! The signed image's config: the new layer's diff_id, a history entry and the labels.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::Error;
use crate::layer_append::NewLayer;

/// Adds the new layer's diff_id and a history entry to the config.
#[allow(clippy::too_many_arguments)]
pub(crate) fn new_config(
    config: &[u8],
    layer: &NewLayer,
    files: usize,
    subject: &str,
    hash: &str,
    image: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<Bytes, Error> {
    let bad = |reason: &str| Error::Malformed { image: image.into(), what: "config", reason: reason.into() };
    let mut c: Value = serde_json::from_slice(config).map_err(|e| bad(&e.to_string()))?;
    if !labels.is_empty() {
        if !c.get("config").is_some_and(Value::is_object) {
            c["config"] = json!({});
        }
        if !c["config"].get("Labels").is_some_and(Value::is_object) {
            c["config"]["Labels"] = json!({});
        }
        for (k, v) in labels {
            c["config"]["Labels"][k] = json!(v);
        }
    }
    c.pointer_mut("/rootfs/diff_ids").and_then(Value::as_array_mut).ok_or_else(|| bad("no rootfs.diff_ids"))?.push(json!(layer.diff_id));
    let entry = json!({
        "created_by": "kforge sign-image",
        "comment": format!("signed {files} kernel module{} with {subject} ({hash})", if files == 1 { "" } else { "s" }),
    });
    match c.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(entry),
        None => c["history"] = json!([entry]),
    }
    serde_json::to_vec(&c).map(Bytes::from).map_err(|e| bad(&e.to_string()))
}
