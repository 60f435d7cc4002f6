//! A real OCI registry for the end-to-end tests (Debian's `docker-registry`, Distribution 2.8) and
//! independent clients to check what kforge pushes and pulls: `skopeo`, `umoci`, `curl`.
//!
//! Self-contained (std + tempfile + external commands) so that it can be used both as
//! `support::registry` and on its own through `#[path = "support/registry.rs"] mod registry;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a freshly started registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A Debian docker-registry (Distribution 2.8) on a free loopback port with temp storage; killed and cleaned up on drop.
pub struct Registry {
    child: Child,
    host: String,
    storage: PathBuf,
    log: PathBuf,
    /// The CA certificate (PEM) of the TLS variant.
    ca: Option<PathBuf>,
    /// A directory holding only `ca.crt` (a copy of `ca`), for skopeo's `--cert-dir`.
    cert_dir: Option<PathBuf>,
    /// The htpasswd user and password of the basic-auth variant.
    creds: Option<(String, String)>,
    auth_files: AtomicUsize,
    // Last: removed after the child is killed (fields drop in declaration order, after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Registry {
    /// Plain HTTP, no auth.
    pub fn start_plain() -> Registry {
        Self::start(None)
    }

    /// HTTPS with a private CA (leaf cert CA:FALSE, subjectAltName IP:127.0.0.1, made with the
    /// openssl CLI) and htpasswd basic auth (bcrypt, `htpasswd -B -b -c`).
    pub fn start_tls_basic_auth(user: &str, password: &str) -> Registry {
        Self::start(Some((user, password)))
    }

    fn start(tls_auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new().prefix("kforge-registry-").tempdir().expect("registry tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("create registry storage dir");
        let log = dir.path().join("registry.log");

        let (ca, cert_dir, creds, tls_yaml) = match tls_auth {
            None => (None, None, None, String::new()),
            Some((user, password)) => {
                let tls = make_tls_files(dir.path());
                let htpasswd = dir.path().join("htpasswd");
                run_ok(Command::new("htpasswd").args(["-B", "-b", "-c"]).arg(&htpasswd).arg(user).arg(password));
                let yaml = format!(
                    "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: kforge-test-registry\n    path: {}\n",
                    yaml_str(&tls.cert),
                    yaml_str(&tls.key),
                    yaml_str(&htpasswd),
                );
                (Some(tls.ca), Some(tls.cert_dir), Some((user.to_string(), password.to_string())), yaml)
            }
        };

        let config = dir.path().join("config.yml");
        let mut last_log = String::new();
        // The port is free when we look but could be taken before the registry binds it: retry then.
        for _attempt in 0..5 {
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let yaml = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: kforge-test-registry-secret\n{tls_yaml}",
                yaml_str(&storage),
            );
            std::fs::write(&config, yaml).expect("write registry config");
            let log_file = std::fs::File::create(&log).expect("create registry log");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&config).stdin(Stdio::null());
            cmd.stdout(log_file.try_clone().expect("clone registry log handle")).stderr(log_file);
            // REGISTRY_* variables override the configuration file.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start docker-registry (apt-get install docker-registry): {e}"));
            let deadline = Instant::now() + READY_TIMEOUT;
            let ready = loop {
                if let Some(status) = child.try_wait().expect("poll docker-registry") {
                    last_log = read_log(&log);
                    if last_log.contains("address already in use") {
                        break false;
                    }
                    panic!("docker-registry exited early ({status}); log:\n{last_log}");
                }
                if matches!(probe(&host, ca.as_deref()), Some(200 | 401)) {
                    break true;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("docker-registry on {host} not ready after {READY_TIMEOUT:?}; log:\n{}", read_log(&log));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if ready {
                return Registry { child, host, storage, log, ca, cert_dir, creds, auth_files: AtomicUsize::new(0), dir };
            }
            // The port was taken between our check and the registry's bind: try another one.
        }
        panic!("docker-registry could not bind a free port; last log:\n{last_log}");
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Some(path to the CA certificate PEM) for the TLS variant.
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The registry's storage root directory (to inspect what was pushed).
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// Everything the registry printed so far (warnings and errors).
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// `https://host` or `http://host`.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host)
    }

    /// Writes a dockerconfigjson file `{"auths":{"127.0.0.1:PORT":{"auth":"base64(user:pass)"}}}` and
    /// returns its path (`<tempdir>/docker-config-N/config.json`: the parent also works as `DOCKER_CONFIG`).
    pub fn auth_file(&self, user: &str, password: &str) -> PathBuf {
        let n = self.auth_files.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.path().join(format!("docker-config-{n}"));
        std::fs::create_dir_all(&dir).expect("create docker config dir");
        let path = dir.join("config.json");
        let auth = base64(format!("{user}:{password}").as_bytes());
        let json = format!("{{\"auths\":{{{}:{{\"auth\":\"{auth}\"}}}}}}\n", json_str(&self.host));
        std::fs::write(&path, json).expect("write docker config.json");
        path
    }

    /// Tags of a repository through `GET /v2/<repo>/tags/list` (curl); empty if the repository does not exist.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let (status, body) = self.curl_get(&format!("/v2/{repo}/tags/list"));
        match status {
            200 => json_string_array(&body, "tags").unwrap_or_else(|| panic!("no \"tags\" in {body}")),
            404 => Vec::new(),
            _ => panic!("GET /v2/{repo}/tags/list answered {status}: {body}\nregistry log:\n{}", self.log()),
        }
    }

    /// `GET <path>` with curl (TLS and credentials as needed): (status, body).
    pub fn curl_get(&self, path: &str) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "-w", "\n%{http_code}", "-H"]);
        cmd.arg(format!("Accept: {}", MANIFEST_TYPES.join(", ")));
        self.curl_flags(&mut cmd);
        cmd.arg(format!("{}{path}", self.url()));
        let out = run_ok(&mut cmd);
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        let status = status.trim().parse().unwrap_or_else(|_| panic!("curl printed no status: {out}"));
        (status, body.to_string())
    }

    fn curl_flags(&self, cmd: &mut Command) {
        if let Some(ca) = &self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some((user, password)) = &self.creds {
            cmd.arg("-u").arg(format!("{user}:{password}"));
        }
    }

    /// skopeo flags to read from this registry (`copy` source): `--src-tls-verify=false`, or
    /// `--src-cert-dir DIR --src-creds user:pass`.
    pub fn skopeo_src_flags(&self) -> Vec<String> {
        self.skopeo_flags_with("--src-")
    }

    /// skopeo flags to write to this registry (`copy` destination): `--dest-…`.
    pub fn skopeo_dest_flags(&self) -> Vec<String> {
        self.skopeo_flags_with("--dest-")
    }

    /// skopeo flags for one-image commands (`inspect`, `list-tags`, `delete`): `--tls-verify=false`, or
    /// `--cert-dir DIR --creds user:pass`.
    pub fn skopeo_flags(&self) -> Vec<String> {
        self.skopeo_flags_with("--")
    }

    fn skopeo_flags_with(&self, prefix: &str) -> Vec<String> {
        let mut flags = Vec::new();
        match &self.cert_dir {
            None => flags.push(format!("{prefix}tls-verify=false")),
            Some(dir) => flags.extend([format!("{prefix}cert-dir"), dir.to_string_lossy().into_owned()]),
        }
        if let Some((user, password)) = &self.creds {
            flags.extend([format!("{prefix}creds"), format!("{user}:{password}")]);
        }
        flags
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `Accept` types a client must send to Distribution 2.8 (see notes/registry.md).
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

struct TlsFiles {
    ca: PathBuf,
    cert_dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A private CA and a leaf certificate for 127.0.0.1 signed by it, made with the openssl CLI.
fn make_tls_files(dir: &Path) -> TlsFiles {
    let tls = dir.join("tls");
    std::fs::create_dir(&tls).expect("create tls dir");
    let ca_key = tls.join("ca.key");
    let ca = tls.join("ca.pem");
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-new", "-nodes", "-sha256", "-days", "3650", "-newkey", "rsa:2048"])
            .args(["-subj", "/CN=kforge test registry CA/O=kforge tests"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    );
    let key = tls.join("server.key");
    let csr = tls.join("server.csr");
    let cert = tls.join("server.pem");
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-nodes", "-sha256", "-newkey", "rsa:2048", "-subj", "/CN=127.0.0.1/O=kforge tests"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    let ext = tls.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n",
    )
    .expect("write server.ext");
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-sha256", "-days", "3650", "-set_serial", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    );
    let cert_dir = tls.join("certs.d");
    std::fs::create_dir(&cert_dir).expect("create cert dir");
    std::fs::copy(&ca, cert_dir.join("ca.crt")).expect("copy ca.crt");
    TlsFiles { ca, cert_dir, cert, key }
}

/// The status of `GET /v2/` on `host`, or None if nothing answers yet.
fn probe(host: &str, ca: Option<&Path>) -> Option<u16> {
    match ca {
        None => {
            let mut s = TcpStream::connect(host).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(s, "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                match s.read(&mut head[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            // "HTTP/1.1 200 OK"
            std::str::from_utf8(&head[..n]).ok()?.split(' ').nth(1)?.parse().ok()
        }
        Some(ca) => {
            let out = Command::new("curl")
                .args(["-s", "--noproxy", "*", "--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(ca)
                .arg(format!("https://{host}/v2/"))
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok().filter(|&s| s != 0)
        }
    }
}

fn read_log(log: &Path) -> String {
    std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `skopeo copy --all` (global `--insecure-policy`): src/dst are transport refs like
/// "oci:/path:tag" or "docker://host/repo:tag"; extra flags (e.g. `skopeo_dest_flags()`) are
/// added. Panics with output on failure.
pub fn skopeo_copy(src: &str, dst: &str, flags: &[String]) {
    run_ok(Command::new("skopeo").args(["--insecure-policy", "copy", "--all"]).args(flags).args([src, dst]));
}

/// `skopeo inspect --raw` of a ref: the raw manifest bytes. For a registry, pass `Registry::skopeo_flags()`.
pub fn skopeo_raw_manifest(image: &str, flags: &[String]) -> Vec<u8> {
    run_ok_bytes(Command::new("skopeo").args(["--insecure-policy", "inspect", "--raw"]).args(flags).arg(image))
}

/// `umoci unpack --image DIR:TAG BUNDLE` (`--rootless` unless root) → returns the rootfs path.
/// BUNDLE must not exist yet (or be empty).
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !is_root() {
        cmd.arg("--rootless");
    }
    run_ok(cmd.arg("--image").arg(image_ref(layout, tag)).arg(bundle));
    bundle.join("rootfs")
}

/// One change to a root filesystem in `umoci_image`.
#[derive(Clone, Debug)]
pub enum Op {
    /// Copies the host file (second) to this path in the image (first), creating parent directories.
    Put(String, PathBuf),
    /// Deletes this path (file or directory) from the image: `umoci repack` writes a whiteout.
    Remove(String),
}

/// Builds an OCI image layout with umoci at DIR with tag TAG, one layer per step (each step a list
/// of operations on the rootfs): `umoci init` (unless DIR is already a layout), `umoci new`, then per
/// step unpack → modify → `umoci repack` to the same tag; finally `umoci gc`. Checks with
/// `skopeo inspect --raw` that the manifest has one layer per step.
pub fn umoci_image(layout: &Path, tag: &str, steps: &[Vec<Op>]) {
    if !layout.join("index.json").is_file() {
        run_ok(Command::new("umoci").arg("init").arg("--layout").arg(layout));
    }
    let image = image_ref(layout, tag);
    run_ok(Command::new("umoci").arg("new").arg("--image").arg(&image));
    let work = tempfile::Builder::new().prefix("kforge-umoci-").tempdir().expect("umoci work tempdir");
    for (i, step) in steps.iter().enumerate() {
        let bundle = work.path().join(format!("bundle-{i}"));
        let rootfs = umoci_unpack(layout, tag, &bundle);
        for op in step {
            match op {
                Op::Put(path, host_file) => {
                    let dst = in_rootfs(&rootfs, path);
                    if let Some(parent) = dst.parent() {
                        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
                    }
                    std::fs::copy(host_file, &dst).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", host_file.display(), dst.display()));
                }
                Op::Remove(path) => {
                    let dst = in_rootfs(&rootfs, path);
                    let removed = if dst.is_dir() { std::fs::remove_dir_all(&dst) } else { std::fs::remove_file(&dst) };
                    removed.unwrap_or_else(|e| panic!("step {i}: remove {path} from the image: {e}"));
                }
            }
        }
        run_ok(Command::new("umoci").arg("repack").arg("--image").arg(&image).arg(&bundle));
        std::fs::remove_dir_all(&bundle).unwrap_or_else(|e| panic!("remove {}: {e}", bundle.display()));
    }
    run_ok(Command::new("umoci").arg("gc").arg("--layout").arg(layout));
    let manifest = skopeo_raw_manifest(&format!("oci:{image}"), &[]);
    let layers = layer_count(&manifest);
    assert_eq!(layers, Some(steps.len()), "umoci image {image} should have one layer per step:\n{}", String::from_utf8_lossy(&manifest));
}

/// The number of entries of `"layers"` in a manifest (None if it has no layers array, e.g. an index).
pub fn layer_count(manifest: &[u8]) -> Option<usize> {
    json_array_len(&String::from_utf8_lossy(manifest), "layers")
}

fn image_ref(layout: &Path, tag: &str) -> String {
    format!("{}:{tag}", layout.display())
}

/// `path` (absolute or not) inside `rootfs`, refusing `..`.
fn in_rootfs(rootfs: &Path, path: &str) -> PathBuf {
    let rel = Path::new(path.trim_start_matches('/'));
    assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "bad path in image: {path:?}");
    rootfs.join(rel)
}

/// Whether the effective user is root (from /proc/self/status).
fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1)).is_some_and(|euid| euid == "0")
    })
}

/// Runs a command that must succeed and returns its stdout; panics with its output otherwise.
pub fn run_ok_bytes(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_ok(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok_bytes(cmd)).into_owned()
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A double-quoted YAML scalar for a path.
fn yaml_str(p: &Path) -> String {
    json_str(&p.to_string_lossy())
}

/// The position just after `"key":` (first occurrence), skipping whitespace.
fn json_value_at(json: &str, key: &str) -> Option<usize> {
    let needle = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = json[from..].find(&needle) {
        let after = from + i + needle.len();
        let rest = json[after..].trim_start();
        if let Some(value) = rest.strip_prefix(':') {
            return Some(json.len() - value.trim_start().len());
        }
        from = after;
    }
    None
}

/// The strings of the array under `"key"` (an absent key → None, `null` → empty). Enough for
/// registry answers: no escapes inside the strings.
fn json_string_array(json: &str, key: &str) -> Option<Vec<String>> {
    let at = json_value_at(json, key)?;
    let value = &json[at..];
    if value.starts_with("null") {
        return Some(Vec::new());
    }
    let inner = &value.strip_prefix('[')?[..value.find(']')? - 1];
    Some(inner.split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect())
}

/// The number of elements of the array under `"key"`, aware of nesting and strings.
fn json_array_len(json: &str, key: &str) -> Option<usize> {
    let at = json_value_at(json, key)?;
    let value = json[at..].strip_prefix('[')?;
    let (mut depth, mut in_string, mut escaped, mut count, mut empty) = (0usize, false, false, 0usize, true);
    for c in value.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            c if c.is_whitespace() => continue,
            '"' => in_string = true,
            '[' | '{' => depth += 1,
            ']' if depth == 0 => return Some(if empty { 0 } else { count + 1 }),
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => count += 1,
            _ => {}
        }
        empty = false;
    }
    None
}
