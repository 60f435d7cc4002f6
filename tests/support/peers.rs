//! The upstream peers that `tests/peers/build.sh` builds from their Go modules (BuildKit, etcd,
//! Kubernetes, kwok, and our reflect-client on grpc-go), found through the pins in
//! `tests/peers/versions.env` under `<cache_dir()>/bin/<name>-<version>/` (reflect-client's version
//! is its grpc pin and a hash of its source).
//!
//! A test that needs a peer carries `#[cfg_attr(kforge_no_buildkitd, ignore = "…")]` (or
//! `kforge_no_control_plane`, `kforge_no_reflect_client`): `client/build.rs` sets those when the
//! binaries are missing, except under `CI=true`, where the test runs and `binary` fails saying
//! what to do.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::dtk::cache_dir;

/// One of the pinned upstream components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `buildkitd`, `buildctl`.
    Buildkit,
    /// `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`.
    Kubernetes,
    /// `etcd`.
    Etcd,
    /// `kwok`.
    Kwok,
    /// `reflect-client`: gRPC server reflection (v1 and v1alpha) through grpc-go, built from
    /// `tests/peers/reflect-client/`.
    ReflectClient,
}

impl Peer {
    /// The name of its cache directory (before `-<version>`).
    pub fn name(self) -> &'static str {
        match self {
            Peer::Buildkit => "buildkit",
            Peer::Kubernetes => "kubernetes",
            Peer::Etcd => "etcd",
            Peer::Kwok => "kwok",
            Peer::ReflectClient => "reflect-client",
        }
    }

    /// Its pin's variable in `versions.env`.
    fn key(self) -> &'static str {
        match self {
            Peer::Buildkit => "BUILDKIT_VERSION",
            Peer::Kubernetes => "KUBERNETES_VERSION",
            Peer::Etcd => "ETCD_VERSION",
            Peer::Kwok => "KWOK_VERSION",
            Peer::ReflectClient => "REFLECT_CLIENT_GRPC_VERSION",
        }
    }

    /// The pinned version, e.g. `v0.34.2`; for reflect-client, the grpc pin and the first 16 hex
    /// digits of the SHA-256 of its `main.go` followed by its `go.mod` (as `build.sh` names it).
    pub fn version(self) -> String {
        let pin =
            pins().iter().find(|(k, _)| k == self.key()).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("tests/peers/versions.env pins no {}", self.key()));
        match self {
            Peer::ReflectClient => format!("{pin}-{}", source_hash(&peers_dir().join("reflect-client"))),
            _ => pin,
        }
    }

    /// `<cache_dir()>/bin/<name>-<version>`.
    pub fn dir(self) -> PathBuf {
        cache_dir().join("bin").join(format!("{}-{}", self.name(), self.version()))
    }

    /// The path of one of its programs; panics, saying how to build it, when it is not there.
    pub fn binary(self, program: &str) -> PathBuf {
        let path = self.dir().join(program);
        if !path.is_file() {
            panic!(
                "{program} ({} {}) is not built at {}: run tests/peers/build.sh (or tests/peers/build.sh {}), which builds the pinned peers from the Go module proxy (needs Go 1.26 or newer; tests/run.sh runs it)",
                self.name(),
                self.version(),
                path.display(),
                self.name()
            );
        }
        path
    }
}

/// The first 16 hex digits of the SHA-256 of `main.go` followed by `go.mod` in `dir`.
fn source_hash(dir: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for file in ["main.go", "go.mod"] {
        let path = dir.join(file);
        hasher.update(std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())));
    }
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `tests/peers/versions.env` as (name, value) pairs.
fn pins() -> &'static Vec<(String, String)> {
    static PINS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    PINS.get_or_init(|| {
        let path = peers_dir().join("versions.env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    })
}

/// The repository's `tests/peers/` directory (the pins and the wrapper modules).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers")
}

/// A loopback port that was free when asked (a caller that loses a race to bind it retries).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind a loopback port")
}

/// The last `lines` lines of a log file (for failure messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
