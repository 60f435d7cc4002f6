//! Shared fixtures for the end-to-end tests: real modules built against Debian's current kernel
//! headers, keys made with the openssl CLI, and the oracles (`sign-file`, `openssl cms`, `modinfo`).
#![allow(dead_code)]

pub mod buildkitd;
pub mod control_plane;
pub mod docker;
pub mod dtk;
pub mod oci;
pub mod peers;
pub mod pki;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Debian's `sign-file`, from the `linux-kbuild-6.1` package.
pub const SIGN_FILE: &str = "/usr/lib/linux-kbuild-6.1/scripts/sign-file";

/// The magic string at the end of a signed module.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";

/// The kforge binary under test.
pub fn kforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kforge"))
}

/// Runs a command and returns its output, panicking with everything it printed if it could not start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed and returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Runs a command that must fail and returns stdout and stderr together.
pub fn fails(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(!out.status.success(), "{cmd:?} should have failed:\nstdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The current Debian kernel ABI (e.g. `6.1.0-56-amd64`): what `linux-headers-amd64` depends on.
pub fn kernel_abi() -> String {
    static ABI: OnceLock<String> = OnceLock::new();
    ABI.get_or_init(|| {
        let depends = Command::new("dpkg-query")
            .args(["-W", "-f=${Depends}", "linux-headers-amd64"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| text(&o.stdout))
            .unwrap_or_default();
        let depends = if depends.contains("linux-headers-") { depends } else { ok(Command::new("apt-cache").args(["depends", "linux-headers-amd64"])) };
        depends
            .split(|c: char| c == ',' || c.is_whitespace())
            .find_map(|w| w.strip_prefix("linux-headers-").filter(|abi| abi.chars().next().is_some_and(|c| c.is_ascii_digit())))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("cannot resolve the kernel ABI from linux-headers-amd64's dependencies ({depends:?}); run tests/run.sh"))
    })
    .clone()
}

/// Modules built once per test process from `tests/modules/*` against the current headers.
pub struct Modules {
    pub abi: String,
    pub dir: PathBuf,
    /// `kforge_hello.ko`: a minimal module.
    pub hello: PathBuf,
    /// `kforge_params.ko`: a module with a parameter and a 256 KiB table.
    pub params: PathBuf,
    /// `kforge_hello.o`: an ELF relocatable without `.modinfo`.
    pub object: PathBuf,
}

/// Builds (or reuses, per ABI, under the target directory) the test modules.
pub fn modules() -> &'static Modules {
    static M: OnceLock<Modules> = OnceLock::new();
    M.get_or_init(|| {
        let abi = kernel_abi();
        let headers = PathBuf::from(format!("/usr/src/linux-headers-{abi}"));
        assert!(headers.is_dir(), "{} is missing: install linux-headers-{abi} (tests/run.sh does)", headers.display());
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kforge-test-modules-{abi}"));
        if !cache.join("kforge_params/kforge_params.ko").is_file() {
            let build = tempfile::Builder::new().prefix("modules-build-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/modules");
            for name in ["kforge_hello", "kforge_params"] {
                let dir = build.path().join(name);
                std::fs::create_dir_all(&dir).expect("mkdir");
                for f in [format!("{name}.c"), "Kbuild".to_string()] {
                    std::fs::copy(src.join(name).join(&f), dir.join(&f)).expect("copy module source");
                }
                ok(Command::new("make").arg("-s").arg("-C").arg(&headers).arg(format!("M={}", dir.display())).arg("modules"));
            }
            let staged = build.keep();
            if std::fs::rename(&staged, &cache).is_err() {
                // Another test process finished first; use its build.
                let _ = std::fs::remove_dir_all(&staged);
            }
        }
        Modules {
            abi,
            hello: cache.join("kforge_hello/kforge_hello.ko"),
            params: cache.join("kforge_params/kforge_params.ko"),
            object: cache.join("kforge_hello/kforge_hello.o"),
            dir: cache,
        }
    })
}

/// A key pair made with the openssl CLI, with the certificate in PEM and DER.
pub struct Keys {
    pub key: PathBuf,
    pub cert_pem: PathBuf,
    pub cert_der: PathBuf,
}

/// Generates an RSA key and self-signed certificate in `dir` with `openssl req`.
pub fn openssl_keys(dir: &Path, name: &str, bits: u32) -> Keys {
    let keys = Keys { key: dir.join(format!("{name}.key.pem")), cert_pem: dir.join(format!("{name}.crt.pem")), cert_der: dir.join(format!("{name}.crt.der")) };
    ok(Command::new("openssl")
        .args(["req", "-new", "-nodes", "-x509", "-sha256", "-days", "3650", "-newkey", &format!("rsa:{bits}")])
        .args(["-subj", &format!("/CN=kforge test {name}/O=kforge tests")])
        .arg("-keyout")
        .arg(&keys.key)
        .arg("-out")
        .arg(&keys.cert_pem));
    ok(Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&keys.cert_pem).arg("-out").arg(&keys.cert_der));
    keys
}

/// Splits a signed module into (module bytes, CMS DER); panics if it is not signed.
pub fn split_signature(signed: &[u8]) -> (&[u8], &[u8]) {
    assert!(signed.ends_with(MAGIC), "module is not signed");
    let n = signed.len() - MAGIC.len();
    let sig_len = u32::from_be_bytes(signed[n - 4..n].try_into().expect("4 bytes")) as usize;
    let cms_at = n - 12 - sig_len;
    (&signed[..cms_at], &signed[cms_at..n - 12])
}

/// Verifies a signed module with `openssl cms -verify` against a PEM certificate.
pub fn openssl_cms_verify(dir: &Path, signed: &[u8], cert_pem: &Path) -> bool {
    let (body, cms) = split_signature(signed);
    let work = tempfile::tempdir_in(dir).expect("tempdir");
    std::fs::write(work.path().join("body"), body).expect("write");
    std::fs::write(work.path().join("sig.der"), cms).expect("write");
    Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-nointern", "-noverify", "-out", "/dev/null"])
        .arg("-in")
        .arg(work.path().join("sig.der"))
        .arg("-content")
        .arg(work.path().join("body"))
        .arg("-certfile")
        .arg(cert_pem)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `modinfo -F field` of a module file.
pub fn modinfo(module: &Path, field: &str) -> String {
    ok(Command::new("modinfo").args(["-F", field]).arg(module)).trim().to_string()
}

/// Copies `src` into `dir` under `name` and returns the new path.
pub fn copy_to(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
    dst
}

/// Signs a copy of `module` with Debian's sign-file and returns the signed bytes.
pub fn sign_file(dir: &Path, module: &Path, hash: &str, key: &Path, cert: &Path, key_id: bool) -> Vec<u8> {
    let out = dir.join(format!("sign-file-{}-{hash}-{}.ko", module.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default(), key_id));
    let mut cmd = Command::new(SIGN_FILE);
    if key_id {
        cmd.arg("-k");
    }
    ok(cmd.arg(hash).arg(key).arg(cert).arg(module).arg(&out));
    std::fs::read(&out).expect("read sign-file output")
}

/// Whether this process runs as root (CI does): permission tests then run kforge as `nobody`.
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| text(&o.stdout).trim() == "0").unwrap_or(false)
}

/// kforge, run as an unprivileged user when the tests run as root, so file permissions apply.
pub fn kforge_unprivileged() -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(env!("CARGO_BIN_EXE_kforge"));
        c
    } else {
        kforge()
    }
}

/// A temporary directory that the unprivileged user can enter.
pub fn world_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
