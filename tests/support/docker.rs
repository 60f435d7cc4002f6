//! A private Docker engine for the end-to-end tests: Debian's `dockerd` (package `docker.io`, 20.10
//! with BuildKit 0.8 embedded) on its own socket, data root and exec root in a temp dir, with no
//! bridge network and no iptables rules, stopped and cleaned up on drop.
//!
//! What this engine does and does not do (checked with docker.io 20.10.24):
//! - With `--bridge=none`, BuildKit `RUN` steps need `docker build --network none` (or `host`);
//!   the default network mode fails with "network bridge not found". `docker run` likewise needs
//!   `--network none`.
//! - Registries on 127.0.0.0/8 are insecure by default: `docker pull`/`push`/`login` use plain HTTP,
//!   or TLS without verification, so no CA is needed for them.
//! - BuildKit (`FROM`, `COPY --from`) always uses plain HTTP for loopback registries, even with
//!   `/etc/docker/certs.d/<host:port>/ca.crt`. For a TLS registry on loopback, start the engine with
//!   `Engine::start_with_config(json!({"insecure-registries": ["https://127.0.0.1:PORT"]}))` (TLS
//!   without verification; read at start-up only, a SIGHUP reload is not enough) and `Engine::login`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's Docker engine (package `docker.io`).
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// Debian's Docker CLI (20.10, matching the engine); `/usr/local/bin/docker` may be another version.
pub const DOCKER_CLI: &str = "/usr/bin/docker";

/// How long dockerd may take to answer `GET /_ping` (a few seconds is usual).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long dockerd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest temp dir we put the engine in: the exec root holds unix sockets (108-byte limit).
const MAX_BASE_LEN: usize = 40;

/// A private dockerd with its own containerd; stopped, unmounted and removed on drop.
pub struct Engine {
    child: Child,
    /// The canonical path of `dir`: everything of this engine lives below it.
    root: PathBuf,
    socket: PathBuf,
    data_root: PathBuf,
    exec_root: PathBuf,
    log: PathBuf,
    /// `DOCKER_CONFIG` of `docker()`: the CLI's private config (credentials from `login`).
    cli_config: PathBuf,
    // Last: removed after `Drop::drop` has stopped the engine and unmounted what it left.
    dir: tempfile::TempDir,
}

impl Engine {
    /// Starts a private engine with the default configuration and waits until it answers.
    pub fn start() -> Engine {
        Self::start_with_config(serde_json::json!({}))
    }

    /// Starts a private engine whose `daemon.json` also holds the keys of `config` (an object),
    /// e.g. `{"insecure-registries": ["https://127.0.0.1:5000"]}`; they must not repeat a flag.
    pub fn start_with_config(config: serde_json::Value) -> Engine {
        assert!(is_root(), "the Docker engine tests need root (dockerd runs as root; CI does)");
        assert!(Path::new(DOCKERD).is_file(), "{DOCKERD} is missing: apt-get install docker.io (tests/run.sh does)");
        let extra = match config {
            serde_json::Value::Object(map) => map,
            other => panic!("Engine::start_with_config takes a JSON object, not {other}"),
        };

        let tmp = std::env::temp_dir();
        let base = if tmp.as_os_str().len() <= MAX_BASE_LEN { tmp } else { PathBuf::from("/tmp") };
        let dir = tempfile::Builder::new()
            .prefix("kforge-dockerd-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot create the engine's temp dir in {}: {e}", base.display()));
        // Mount points in /proc/self/mountinfo and process command lines use the real path.
        let root = std::fs::canonicalize(dir.path()).unwrap_or_else(|e| panic!("canonicalize {}: {e}", dir.path().display()));
        let socket = root.join("docker.sock");
        let data_root = root.join("data");
        let exec_root = root.join("exec");
        let log = root.join("dockerd.log");
        let cli_config = root.join("cli");
        std::fs::create_dir(&cli_config).unwrap_or_else(|e| panic!("mkdir {}: {e}", cli_config.display()));

        // A daemon.json of our own, so that the host's /etc/docker/daemon.json does not apply, and a
        // private identity key instead of /etc/docker/key.json.
        let mut daemon_json = serde_json::Map::new();
        daemon_json.insert("deprecated-key-path".into(), root.join("key.json").to_string_lossy().into_owned().into());
        daemon_json.extend(extra);
        let config_file = root.join("daemon.json");
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(daemon_json)).expect("serialize daemon.json");
        std::fs::write(&config_file, text).unwrap_or_else(|e| panic!("write {}: {e}", config_file.display()));

        // Only used if a system containerd runs (/run/containerd/containerd.sock): then dockerd uses
        // it instead of starting its own, and distinct namespaces keep several engines apart.
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut cmd = Command::new(DOCKERD);
        cmd.arg("--config-file")
            .arg(&config_file)
            .arg(format!("--host=unix://{}", socket.display()))
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false"])
            .arg(format!("--containerd-namespace={name}"))
            .arg(format!("--containerd-plugins-namespace={name}-plugins"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONFIG")
            .env_remove("DOCKER_TMPDIR")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the dockerd log handle"))
            .stderr(log_file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {DOCKERD}: {e}"));
        let mut engine = Engine { child, root, socket, data_root, exec_root, log, cli_config, dir };
        engine.wait_ready();
        engine
    }

    /// Polls `GET /_ping` until it answers OK; panics with the log's tail if dockerd exits or is too slow.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll dockerd") {
                panic!("dockerd exited during start-up ({status}); last lines of {}:\n{}", self.log.display(), self.log_tail(40));
            }
            if self.socket.exists() && matches!(self.request("GET", "/_ping"), Some((200, ref body)) if body == "OK") {
                return;
            }
            if Instant::now() > deadline {
                // Drop stops it and cleans up.
                panic!("dockerd did not answer /_ping within {READY_TIMEOUT:?}; last lines of {}:\n{}", self.log.display(), self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The engine's API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `docker://` + the absolute socket path, e.g. `docker:///tmp/kforge-dockerd-Ab12/docker.sock`.
    pub fn url(&self) -> String {
        format!("docker://{}", self.socket.display())
    }

    /// `unix://` + the socket path (what `DOCKER_HOST` takes).
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The engine's data root (images, BuildKit's cache).
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// The `DOCKER_CONFIG` directory of `docker()` (its `config.json` holds `login` credentials).
    pub fn cli_config(&self) -> &Path {
        &self.cli_config
    }

    /// dockerd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything dockerd (and its containerd) logged so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Debian's docker CLI talking to this engine: `DOCKER_HOST`, a private `DOCKER_CONFIG`, and
    /// `DOCKER_BUILDKIT=1` (override with `.env("DOCKER_BUILDKIT", "0")` for the legacy builder).
    pub fn docker(&self) -> Command {
        let cli = if Path::new(DOCKER_CLI).is_file() { DOCKER_CLI } else { "docker" };
        let mut cmd = Command::new(cli);
        cmd.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", &self.cli_config)
            .env("DOCKER_BUILDKIT", "1")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION")
            .stdin(Stdio::null());
        cmd
    }

    /// `docker login --password-stdin HOST` into the CLI config of `docker()`; panics with the output on failure.
    pub fn login(&self, host: &str, user: &str, password: &str) {
        let mut cmd = self.docker();
        cmd.args(["login", "--username", user, "--password-stdin", host]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        child.stdin.take().expect("piped stdin").write_all(password.as_bytes()).expect("write the password to docker login");
        let out = child.wait_with_output().expect("wait for docker login");
        assert!(
            out.status.success(),
            "docker login {host} failed ({}):\n{}{}\nengine log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
    }

    /// The ids (`sha256:…`) of the engine's images, from `GET /images/json`.
    pub fn image_ids(&self) -> Vec<String> {
        let (status, body) = self.get("/images/json");
        assert_eq!(status, 200, "GET /images/json: {body}");
        let images: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /images/json: {e}: {body}"));
        images
            .as_array()
            .unwrap_or_else(|| panic!("GET /images/json is not an array: {body}"))
            .iter()
            .filter_map(|i| i["Id"].as_str().map(str::to_string))
            .collect()
    }

    /// `GET path` on the engine API: (status, body); panics if the engine does not answer.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path).unwrap_or_else(|| panic!("no answer to GET {path} from dockerd; log:\n{}", self.log_tail(20)))
    }

    /// One HTTP/1.0 request without a body on the socket: Some((status, body)), None if nothing answers.
    fn request(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "{method} {path} HTTP/1.0\r\nHost: docker\r\n\r\n").ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// SIGTERM, then SIGKILL after `STOP_TIMEOUT`.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal("TERM", self.child.id());
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                eprintln!("dockerd {} did not stop within {STOP_TIMEOUT:?} after SIGTERM: killing it", self.child.id());
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        // Its containerd, shims and runc (if dockerd died without stopping them) name our directories.
        kill_processes_naming(&self.root);
        unmount_under(&self.root);
    }
}

/// `kill -s SIG PID`.
pub fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill").args(["-s", sig, &pid.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// SIGKILLs every process (but this one) whose command line contains `dir`, and waits until they are gone.
pub fn kill_processes_naming(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let found: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle)))
        .collect();
    for &pid in &found {
        eprintln!("killing process {pid} left behind by the engine in {}", dir.display());
        signal("KILL", pid);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while found.iter().any(|pid| is_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a process exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z'))).unwrap_or(false)
}

/// Lazily unmounts (`umount -l`) every mount at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> =
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape_mountinfo(p))).filter(|p| p.starts_with(dir)).collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    mounts.dedup();
    for m in mounts {
        let out = Command::new("umount").arg("-l").arg(&m).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("umount -l {} failed: {out:?}", m.display());
        }
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0');
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the effective user is root (from /proc/self/status).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1)).map(|euid| euid == "0"))
        .unwrap_or(false)
}
