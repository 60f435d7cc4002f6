//! Tells the end-to-end tests in `tests/` which upstream peers (built by `tests/peers/build.sh` into
//! the test cache) are missing, so that the tests needing them are ignored with a reason instead of
//! passing silently: `cfg(kforge_no_buildkitd)`, `cfg(kforge_no_control_plane)`,
//! `cfg(kforge_no_reflect_client)`. Under `CI=true` no such cfg is set: there a missing peer fails the
//! tests that need it, saying what to install. A real cluster is opt-in everywhere:
//! `cfg(kforge_no_e2e_kubeconfig)` is set unless `KFORGE_E2E_KUBECONFIG` names one.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kforge_no_buildkitd)");
    println!("cargo::rustc-check-cfg=cfg(kforge_no_control_plane)");
    println!("cargo::rustc-check-cfg=cfg(kforge_no_reflect_client)");
    println!("cargo::rustc-check-cfg=cfg(kforge_no_e2e_kubeconfig)");
    // A real cluster is opt-in, in CI too: tests/reconcile.rs runs against it when this is set.
    println!("cargo::rerun-if-env-changed=KFORGE_E2E_KUBECONFIG");
    if std::env::var_os("KFORGE_E2E_KUBECONFIG").is_none() {
        println!("cargo::rustc-cfg=kforge_no_e2e_kubeconfig");
    }
    for var in ["CI", "KFORGE_TEST_CACHE", "XDG_CACHE_HOME", "HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let pins_file = Path::new("../tests/peers/versions.env");
    println!("cargo::rerun-if-changed={}", pins_file.display());
    let pins = std::fs::read_to_string(pins_file).unwrap_or_default();
    let reflect_client = Path::new("../tests/peers/reflect-client");
    for file in ["main.go", "go.mod"] {
        println!("cargo::rerun-if-changed={}", reflect_client.join(file).display());
    }
    let Some(cache) = cache_dir() else { return };
    let bin = cache.join("bin");
    // Peers appear as directories renamed into `bin/`, which changes its modification time.
    if let Some(watch) = [&bin, &cache].into_iter().find(|p| p.is_dir()) {
        println!("cargo::rerun-if-changed={}", watch.display());
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        return;
    }
    let pin = |key: &str| pins.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=')).map(str::trim).unwrap_or("").to_string();
    let have_in = |dir: &str, programs: &[&str]| programs.iter().all(|p| bin.join(dir).join(p).is_file());
    let have = |key: &str, name: &str, programs: &[&str]| {
        let version = pin(key);
        !version.is_empty() && have_in(&format!("{name}-{version}"), programs)
    };
    if !have("BUILDKIT_VERSION", "buildkit", &["buildkitd", "buildctl"]) {
        println!("cargo::rustc-cfg=kforge_no_buildkitd");
    }
    let control_plane = have("ETCD_VERSION", "etcd", &["etcd"])
        && have("KUBERNETES_VERSION", "kubernetes", &["kube-apiserver", "kube-controller-manager", "kube-scheduler"])
        && have("KWOK_VERSION", "kwok", &["kwok"]);
    if !control_plane {
        println!("cargo::rustc-cfg=kforge_no_control_plane");
    }
    // Named after the grpc pin and its source, as tests/peers/build.sh and tests/support/peers.rs name it.
    let grpc = pin("REFLECT_CLIENT_GRPC_VERSION");
    let built = match source_hash(reflect_client) {
        Some(hash) if !grpc.is_empty() => have_in(&format!("reflect-client-{grpc}-{hash}"), &["reflect-client"]),
        _ => false,
    };
    if !built {
        println!("cargo::rustc-cfg=kforge_no_reflect_client");
    }
}

/// The first 16 hex digits of the SHA-256 of reflect-client's `main.go` followed by its `go.mod`,
/// as `tests/peers/build.sh` computes them.
fn source_hash(dir: &Path) -> Option<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for file in ["main.go", "go.mod"] {
        hasher.update(std::fs::read(dir.join(file)).ok()?);
    }
    Some(hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The test cache as `tests/support/dtk.rs` finds it.
fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("KFORGE_TEST_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").filter(|p| p.is_absolute()).map(|x| x.join("kforge-tests")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/kforge-tests")))
}
