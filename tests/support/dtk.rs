//! Base images made from Debian packages with `mmdebstrap`, as single-layer OCI image layouts (gzip
//! layer made by `umoci raw add-layer`), cached between test runs and processes in `cache_dir()`:
//! - a Driver-Toolkit-like image (what KMM's `DTK_AUTO` points at): bookworm minbase with gcc, make,
//!   kmod, libc6-dev and `linux-headers-<ABI>`, per ABI in `dtk-<ABI>/` (tag `DTK_TAG`); about 30 s
//!   and 460 MB (130 MB compressed) to build;
//! - a small runtime image for module images (KMM's `RUNTIME_IMAGE`): bookworm minbase with kmod
//!   (`modprobe`, `depmod`), in `runtime-bookworm/` (tag `RUNTIME_TAG`).
//!
//! Each is built in a temp dir next to its final place and renamed into place, under an exclusive
//! lock, so that concurrent tests build it once.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::registry::{Registry, layer_count, run_ok_bytes, skopeo_copy, skopeo_raw_manifest};

/// The tag of the image in a cached DTK layout (`oci:<layout>:dtk`).
pub const DTK_TAG: &str = "dtk";

/// The tag of the image in the cached runtime layout (`oci:<layout>:runtime`).
pub const RUNTIME_TAG: &str = "runtime";

/// The image's `PATH` (Debian's default for root).
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the DTK holds besides minbase and the headers.
const DTK_PACKAGES: &str = "gcc,make,kmod,libc6-dev";

/// What the runtime image holds besides minbase.
const RUNTIME_PACKAGES: &str = "kmod";

/// bookworm with its updates: current kernel ABIs are often only in bookworm-security.
const SOURCES: [&str; 3] = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

/// Files the image does not need (smaller, faster to compress).
const EXCLUDES: [&str; 4] = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*"];

/// Where cached test fixtures live: `$KFORGE_TEST_CACHE`, else `$XDG_CACHE_HOME/kforge-tests`, else
/// `$HOME/.cache/kforge-tests`.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("KFORGE_TEST_CACHE") {
        return dir;
    }
    if let Some(xdg) = var("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return xdg.join("kforge-tests");
    }
    let home = var("HOME").unwrap_or_else(|| panic!("set KFORGE_TEST_CACHE, XDG_CACHE_HOME or HOME for the test cache"));
    home.join(".cache/kforge-tests")
}

/// The OCI image layout of the DTK for `abi` (e.g. `6.1.0-56-amd64`), built with mmdebstrap on
/// first use and cached; its image is tagged `DTK_TAG`.
pub fn dtk_layout(abi: &str) -> PathBuf {
    assert!(!abi.is_empty() && abi.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '~')), "not a kernel ABI: {abi:?}");
    cached_layout(&format!("dtk-{abi}"), &format!("{DTK_PACKAGES},linux-headers-{abi}"), DTK_TAG, &format!("kforge.test.abi={abi}"))
}

/// The OCI image layout of the runtime image (bookworm minbase + kmod), built on first use and
/// cached; its image is tagged `RUNTIME_TAG`.
pub fn runtime_layout() -> PathBuf {
    cached_layout("runtime-bookworm", RUNTIME_PACKAGES, RUNTIME_TAG, "kforge.test.image=runtime")
}

/// `<cache_dir()>/<name>`: built by `build` (mmdebstrap with `include`, image tagged `tag`, with
/// `label`) unless already there, under the lock `<name>.lock`.
fn cached_layout(name: &str, include: &str, tag: &str, label: &str) -> PathBuf {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("create the test cache {}: {e}", cache.display()));
    let layout = cache.join(name);
    if is_layout(&layout) {
        return layout;
    }
    let _lock = lock(&cache.join(format!("{name}.lock")));
    // Another process may have built it while we waited for the lock.
    if is_layout(&layout) {
        return layout;
    }
    let stage_prefix = format!(".{name}-");
    remove_stale(&cache, &stage_prefix);
    if layout.exists() {
        // Not a complete layout (removed by hand?): start again.
        std::fs::remove_dir_all(&layout).unwrap_or_else(|e| panic!("remove the broken {}: {e}", layout.display()));
    }
    let started = std::time::Instant::now();
    eprintln!("building the test image {name} ({include}) with mmdebstrap into {} (cached)", layout.display());
    let stage =
        tempfile::Builder::new().prefix(&stage_prefix).tempdir_in(&cache).unwrap_or_else(|e| panic!("create a staging dir in {}: {e}", cache.display()));
    let oci = build(include, tag, label, stage.path());
    std::fs::rename(&oci, &layout).unwrap_or_else(|e| panic!("rename {} -> {}: {e}", oci.display(), layout.display()));
    eprintln!("built the test image {name} in {:.1} s", started.elapsed().as_secs_f64());
    layout
}

/// Copies the DTK for `abi` into `registry` as `repo_tag` (e.g. `dtk:6.1.0-56-amd64`) with skopeo
/// and returns the full reference `127.0.0.1:PORT/repo:tag`.
pub fn push_dtk(registry: &Registry, abi: &str, repo_tag: &str) -> String {
    let layout = dtk_layout(abi);
    let reference = format!("{}/{repo_tag}", registry.host());
    skopeo_copy(&format!("oci:{}:{DTK_TAG}", layout.display()), &format!("docker://{reference}"), &registry.skopeo_dest_flags());
    reference
}

/// Copies the runtime image (bookworm minbase + kmod) into `registry` as `repo_tag` (e.g.
/// `kmod:bookworm`) with skopeo and returns the full reference `127.0.0.1:PORT/repo:tag`.
pub fn push_runtime(registry: &Registry, repo_tag: &str) -> String {
    let layout = runtime_layout();
    let reference = format!("{}/{repo_tag}", registry.host());
    skopeo_copy(&format!("oci:{}:{RUNTIME_TAG}", layout.display()), &format!("docker://{reference}"), &registry.skopeo_dest_flags());
    reference
}

/// The newest ABI older than `abi` (`6.1.0-56-amd64` → `6.1.0-55-amd64`, or further back when a
/// number was skipped) whose `linux-headers-*` the host's apt sources offer; None if apt knows none.
pub fn previous_abi(abi: &str) -> Option<String> {
    let (rest, flavour) = abi.rsplit_once('-')?;
    let (version, number) = rest.rsplit_once('-')?;
    let number: u32 = number.parse().ok()?;
    (number.saturating_sub(10)..number).rev().map(|n| format!("{version}-{n}-{flavour}")).find(|candidate| in_archive(&format!("linux-headers-{candidate}")))
}

/// Whether an apt source (not only dpkg's status) offers the package: `apt-cache madison` lists it.
fn in_archive(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["madison", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(package))
}

/// Whether `dir` is a complete layout (the last step renames it into place, so `index.json` is enough).
fn is_layout(dir: &Path) -> bool {
    dir.join("index.json").is_file()
}

/// Takes an exclusive lock on `path` (created if missing), released when the file is dropped.
// The tests run on the pinned toolchain (1.95); File::lock is stable since 1.89.
#[allow(clippy::incompatible_msrv)]
fn lock(path: &Path) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open the lock file {}: {e}", path.display()));
    file.lock().unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

/// Removes staging dirs (`<prefix>*`) left by interrupted builds; call with the lock held.
fn remove_stale(cache: &Path, prefix: &str) {
    for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            eprintln!("removing {}, left by an interrupted build", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Builds an image in `work` (mmdebstrap → rootfs.tar → umoci) and returns the finished layout dir.
fn build(packages: &str, tag: &str, label: &str, work: &Path) -> PathBuf {
    let tar = work.join("rootfs.tar");
    let log = work.join("mmdebstrap.log");
    let include = format!("--include={packages}");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", &include, "--aptopt=Acquire::Retries \"3\""]);
    for pattern in EXCLUDES {
        cmd.arg(format!("--dpkgopt=path-exclude={pattern}"));
    }
    // The output name must end in .tar, or mmdebstrap writes a directory.
    cmd.arg("bookworm").arg(&tar).args(SOURCES);
    let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    cmd.stdin(Stdio::null()).stdout(log_file.try_clone().expect("clone the mmdebstrap log handle")).stderr(log_file);
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run mmdebstrap (apt-get install mmdebstrap; tests/run.sh does): {e}"));
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        panic!("mmdebstrap {include} failed ({status}); last lines:\n{}", lines[lines.len().saturating_sub(30)..].join("\n"));
    }

    let oci = work.join("oci");
    let image = format!("{}:{tag}", oci.display());
    run_ok_bytes(Command::new("umoci").arg("init").arg("--layout").arg(&oci));
    run_ok_bytes(Command::new("umoci").args(["new", "--image", &image]));
    let created_by = format!("mmdebstrap --variant=minbase {include} bookworm");
    run_ok_bytes(Command::new("umoci").args(["raw", "add-layer", "--image", &image, "--history.created_by", &created_by]).arg(&tar));
    std::fs::remove_file(&tar).unwrap_or_else(|e| panic!("remove {}: {e}", tar.display()));
    run_ok_bytes(Command::new("umoci").args(["config", "--image", &image, "--no-history", "--os", "linux", "--architecture", "amd64"]).args([
        "--config.env",
        PATH_ENV,
        "--config.cmd",
        "/bin/bash",
        "--config.workingdir",
        "/",
        "--config.label",
        label,
    ]));
    run_ok_bytes(Command::new("umoci").arg("gc").arg("--layout").arg(&oci));
    let manifest = skopeo_raw_manifest(&format!("oci:{image}"), &[]);
    assert_eq!(layer_count(&manifest), Some(1), "the image should have one layer:\n{}", String::from_utf8_lossy(&manifest));
    oci
}
