//! Label names and values kforge writes, and the deterministic object names derived from them.
//!
//! Kubernetes label values are at most 63 characters from `[A-Za-z0-9._-]`, starting and ending
//! with an alphanumeric character. [`label_value`] makes any text fit; the kernel label on nodes and
//! the loader's nodeSelector both go through it, so they always agree.

use sha2::{Digest, Sha256};

/// `app.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/component`.
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// The Module's name on its DaemonSets (KMM's label).
pub const MODULE_NAME: &str = "kmm.node.kubernetes.io/module.name";
/// The hash of the kernel (and architecture) a loader DaemonSet serves.
pub const KERNEL_HASH: &str = "kforge.io/kernel-hash";
/// The kernel label kforge puts on every node (KMM's name).
pub const KERNEL_FULL: &str = "kmm.node.kubernetes.io/kernel-version.full";
/// The prefix of KMM's node labels (the kernel label and the per-Module ready labels).
pub const NODE_PREFIX: &str = "kmm.node.kubernetes.io/";
/// The node label with the architecture.
pub const ARCH: &str = "kubernetes.io/arch";
/// Annotation: the hash over every build input of a loader's image.
pub const INPUTS_HASH: &str = "kforge.io/inputs-hash";
/// Annotation: a loader's image as its Module names it (by tag, expanded).
pub const IMAGE: &str = "kforge.io/image";
/// Annotation: the digest a loader's image is pinned to.
pub const IMAGE_DIGEST: &str = "kforge.io/image-digest";
/// Annotation: the hash of the desired DaemonSet (without this annotation).
pub const SPEC_HASH: &str = "kforge.io/spec-hash";
/// The value of [`MANAGED_BY`].
pub const MANAGER: &str = "kforge";
/// [`COMPONENT`] of loader DaemonSets.
pub const LOADER: &str = "module-loader";
/// [`COMPONENT`] of device-plugin DaemonSets.
pub const DEVICE_PLUGIN: &str = "device-plugin";

/// Longest label value (and label name part).
const LABEL_MAX: usize = 63;
/// Longest DaemonSet name kforge generates (room for the pod suffix the controller adds).
pub(crate) const NAME_MAX: usize = 57;
/// Hex digits of the short hashes in names and labels.
const SHORT: usize = 10;

/// The first [`SHORT`] hex digits of sha256(`text`).
pub(crate) fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = hex::encode(&digest[..SHORT / 2]);
    hex.truncate(SHORT);
    hex
}

/// `text` as a valid label value: characters outside `[A-Za-z0-9._-]` become `_`; leading and
/// trailing characters that are not alphanumeric are dropped. When the result is longer than 63
/// characters it is cut to 52 characters (again trimmed at the end) followed by `-` and 10 hex digits
/// of sha256 of the original text, so distinct long values stay distinct.
pub fn label_value(text: &str) -> String {
    let safe: String = text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let trimmed = trim_alnum(&safe);
    if trimmed.len() <= LABEL_MAX {
        return trimmed.to_string();
    }
    let keep = LABEL_MAX - SHORT - 1;
    format!("{}-{}", trim_alnum(&trimmed[..keep]), short_hash(text))
}

/// `text` without leading and trailing non-alphanumeric characters (all ASCII by then).
fn trim_alnum(text: &str) -> &str {
    text.trim_matches(|c: char| !c.is_ascii_alphanumeric())
}

/// The node label saying `namespace/module` is loaded: `kmm.node.kubernetes.io/<ns>.<module>.ready`.
/// When `<ns>.<module>.ready` exceeds 63 characters the name part becomes the first 46 characters of
/// `<ns>.<module>` (trimmed), `-`, 10 hex digits of sha256(`<ns>/<module>`), then `.ready`.
pub fn ready_label(namespace: &str, module: &str) -> String {
    let part = format!("{namespace}.{module}");
    if part.len() + ".ready".len() <= LABEL_MAX {
        return format!("kmm.node.kubernetes.io/{part}.ready");
    }
    let keep = LABEL_MAX - ".ready".len() - SHORT - 1;
    let head = trim_alnum(&part[..keep]);
    format!("kmm.node.kubernetes.io/{head}-{}.ready", short_hash(&format!("{namespace}/{module}")))
}

/// Whether kforge manages node label `key`: the kernel label and the ready labels.
pub fn is_managed_node_label(key: &str) -> bool {
    key == KERNEL_FULL || (key.starts_with(NODE_PREFIX) && key.ends_with(".ready"))
}

/// The Module name cut to `max` characters for use in a generated name: names that fit are kept,
/// longer ones become their first `max - 11` characters, `-` and 10 hex digits of their sha256.
fn name_part(module: &str, max: usize) -> String {
    if module.len() <= max {
        return module.to_string();
    }
    let head = module[..max - SHORT - 1].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{}", short_hash(module))
}

/// The [`KERNEL_HASH`] of a loader: the short hash of `kernel`, or of `kernel/arch` when the kernel
/// runs on several architectures and each gets its own DaemonSet.
pub(crate) fn kernel_hash(kernel: &str, arch: Option<&str>) -> String {
    match arch {
        Some(arch) => short_hash(&format!("{kernel}/{arch}")),
        None => short_hash(kernel),
    }
}

/// The loader DaemonSet's name: `<module>-<kernel hash>`, at most 57 characters.
pub(crate) fn loader_name(module: &str, kernel_hash: &str) -> String {
    format!("{}-{kernel_hash}", name_part(module, NAME_MAX - SHORT - 1))
}

/// The device-plugin DaemonSet's name: `<module>-device-plugin`, at most 57 characters.
pub(crate) fn device_plugin_name(module: &str) -> String {
    const SUFFIX: &str = "-device-plugin";
    format!("{}{SUFFIX}", name_part(module, NAME_MAX - SUFFIX.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_made_safe() {
        let cases = [("6.1.0-1-amd64", "6.1.0-1-amd64".to_string()), ("5.14.0+rt", "5.14.0_rt".to_string()), ("_x_", "x".to_string()), ("", String::new())];
        for (input, want) in cases {
            assert_eq!(label_value(input), want, "{input:?}");
        }
        let long = format!("6.1.0-{}", "a".repeat(80));
        let v = label_value(&long);
        assert_eq!(v.len(), 63, "{v}");
        assert!(v.starts_with("6.1.0-aaa") && v.ends_with(&short_hash(&long)), "{v}");
        // Two long values sharing a prefix stay distinct.
        assert_ne!(v, label_value(&format!("{long}b")));
    }

    #[test]
    fn ready_labels_fit() {
        assert_eq!(ready_label("gpu", "nvidia"), "kmm.node.kubernetes.io/gpu.nvidia.ready");
        let long = ready_label(&"n".repeat(40), &"m".repeat(40));
        let name = long.strip_prefix("kmm.node.kubernetes.io/").expect("prefix");
        assert!(name.len() <= 63 && name.ends_with(".ready"), "{name}");
        assert_ne!(long, ready_label(&"n".repeat(40), &"m".repeat(41)));
    }

    #[test]
    fn managed_node_labels() {
        assert!(is_managed_node_label(KERNEL_FULL));
        assert!(is_managed_node_label(&ready_label("kmm", "m")));
        assert!(is_managed_node_label(&ready_label(&"n".repeat(40), &"m".repeat(40))));
        assert!(!is_managed_node_label("kmm.node.kubernetes.io/other"));
        assert!(!is_managed_node_label("kubernetes.io/hostname"));
    }

    #[test]
    fn names_are_bounded_and_deterministic() {
        let h = kernel_hash("6.1.0-1-amd64", None);
        assert_eq!(h.len(), 10);
        assert_ne!(h, kernel_hash("6.1.0-1-amd64", Some("arm64")));
        assert_eq!(loader_name("nvidia", &h), format!("nvidia-{h}"));
        let long = "m".repeat(100);
        assert_eq!(loader_name(&long, &h).len(), 57);
        assert!(device_plugin_name(&long).len() <= 57);
        assert_ne!(loader_name(&long, &h), loader_name(&format!("{long}x"), &h));
        assert_eq!(device_plugin_name("nvidia"), "nvidia-device-plugin");
    }
}
