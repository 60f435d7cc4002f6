//! A private standalone BuildKit daemon for the end-to-end tests: the pinned `buildkitd` built by
//! `tests/peers/build.sh`, with the OCI worker running Debian's `runc`, its own root, its own unix
//! socket and, on request, a `tcp://127.0.0.1:PORT` listener with mutual TLS (certificates made by
//! the test). Its `buildkitd.toml` marks the tests' loopback registries as plain HTTP or trusts
//! their private CA. Stopped, unmounted and removed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::docker::{kill_processes_naming, signal, unmount_under};
use super::peers::{Peer, free_port, tail};
use super::pki::Ca;
use super::registry::Registry;

/// Debian's runc (package `runc`), what the OCI worker runs steps with.
pub const RUNC: &str = "/usr/sbin/runc";

/// How long buildkitd may take to answer `buildctl debug workers`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long buildkitd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest temp dir base we use: the socket path must fit in 108 bytes.
const MAX_BASE_LEN: usize = 40;

/// How to start a daemon.
#[derive(Default)]
pub struct Options<'a> {
    /// Registries buildkitd reaches: plain-HTTP ones are marked `http = true`, TLS ones trust their CA.
    pub registries: Vec<&'a Registry>,
    /// Also listen on `tcp://127.0.0.1:PORT`, with mutual TLS.
    pub tcp_mtls: bool,
}

/// Client certificates for the `tcp://` listener (`--tlscacert`, `--tlscert`, `--tlskey`).
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running buildkitd.
pub struct Buildkitd {
    child: Child,
    root: PathBuf,
    socket: PathBuf,
    tcp: Option<(u16, ClientTls)>,
    log: PathBuf,
    // Last: removed after `Drop::drop` has stopped the daemon and unmounted what it left.
    dir: tempfile::TempDir,
}

impl Buildkitd {
    /// A daemon on a unix socket only, reaching `registries`.
    pub fn start(registries: &[&Registry]) -> Buildkitd {
        Self::start_with(Options { registries: registries.to_vec(), tcp_mtls: false })
    }

    /// A daemon started with `options`; waits until its worker answers.
    pub fn start_with(options: Options) -> Buildkitd {
        assert!(super::is_root(), "buildkitd's OCI worker needs root here (the tests run as root in CI)");
        assert!(Path::new(RUNC).is_file(), "{RUNC} is missing: apt-get install runc (tests/run.sh does)");
        let buildkitd = Peer::Buildkit.binary("buildkitd");
        let tmp = std::env::temp_dir();
        let base = if tmp.as_os_str().len() <= MAX_BASE_LEN { tmp } else { PathBuf::from("/tmp") };
        let dir = tempfile::Builder::new()
            .prefix("kforge-buildkitd-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot create buildkitd's temp dir in {}: {e}", base.display()));
        let root = std::fs::canonicalize(dir.path()).unwrap_or_else(|e| panic!("canonicalize {}: {e}", dir.path().display()));
        let socket = root.join("buildkitd.sock");
        let log = root.join("buildkitd.log");
        let config = root.join("buildkitd.toml");
        std::fs::write(&config, config_toml(&options.registries)).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));

        let mut cmd = Command::new(&buildkitd);
        cmd.arg("--config").arg(&config).arg("--root").arg(root.join("state")).arg("--addr").arg(format!("unix://{}", socket.display()));
        let tcp = options.tcp_mtls.then(|| {
            let pki = root.join("pki");
            std::fs::create_dir(&pki).unwrap_or_else(|e| panic!("mkdir {}: {e}", pki.display()));
            let ca = Ca::new(&pki, "buildkitd");
            let server = ca.issue("buildkitd", true);
            let client = ca.issue("kforge client", false);
            let port = free_port();
            cmd.arg("--addr").arg(format!("tcp://127.0.0.1:{port}"));
            cmd.arg("--tlscacert").arg(&ca.cert).arg("--tlscert").arg(&server.cert).arg("--tlskey").arg(&server.key);
            (port, ClientTls { ca: ca.cert.clone(), cert: client.cert, key: client.key })
        });
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        cmd.env_remove("BUILDKIT_HOST")
            .env_remove("DOCKER_CONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the buildkitd log handle"))
            .stderr(log_file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", buildkitd.display()));
        let mut daemon = Buildkitd { child, root, socket, tcp, log, dir };
        daemon.wait_ready();
        daemon
    }

    /// Polls `buildctl debug workers` until it answers; panics with the log's tail on failure.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll buildkitd") {
                panic!("buildkitd exited during start-up ({status}); last lines of {}:\n{}", self.log.display(), self.log_tail(40));
            }
            if self.socket.exists() && self.buildctl().args(["debug", "workers"]).output().is_ok_and(|o| o.status.success()) {
                return;
            }
            if Instant::now() > deadline {
                panic!("buildkitd did not answer within {READY_TIMEOUT:?}; last lines of {}:\n{}", self.log.display(), self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `unix://` + the socket path.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `tcp://127.0.0.1:PORT` and the client certificates, when started with `tcp_mtls`.
    pub fn tcp(&self) -> Option<(String, &ClientTls)> {
        self.tcp.as_ref().map(|(port, tls)| (format!("tcp://127.0.0.1:{port}"), tls))
    }

    /// The pinned `buildctl` talking to this daemon over its unix socket.
    pub fn buildctl(&self) -> Command {
        let mut cmd = Command::new(Peer::Buildkit.binary("buildctl"));
        cmd.arg("--addr").arg(self.unix_url()).env_remove("BUILDKIT_HOST").stdin(Stdio::null());
        cmd
    }

    /// Runs `buildctl ARGS` and returns its output.
    pub fn buildctl_output(&self, args: &[&str]) -> Output {
        let mut cmd = self.buildctl();
        cmd.args(args);
        cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// What buildkitd runs right now (runc and the steps' processes): its descendants, as
    /// (pid, command line).
    pub fn descendants(&self) -> Vec<(u32, String)> {
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
                Some((pid, ppid))
            })
            .collect();
        let mut found = vec![self.child.id()];
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(pid, _)| *pid));
            i += 1;
        }
        found
            .into_iter()
            .skip(1)
            .filter_map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string()))
            })
            .collect()
    }

    /// Everything buildkitd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Empties BuildKit's build cache (`buildctl prune --all`).
    pub fn prune(&self) {
        let out = self.buildctl_output(&["prune", "--all"]);
        assert!(out.status.success(), "buildctl prune failed: {}", String::from_utf8_lossy(&out.stderr));
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
                eprintln!("buildkitd {} did not stop within {STOP_TIMEOUT:?} after SIGTERM: killing it", self.child.id());
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Buildkitd {
    fn drop(&mut self) {
        self.stop();
        // runc containers of an interrupted step name our state directory.
        kill_processes_naming(&self.root);
        unmount_under(&self.root);
    }
}

/// `buildkitd.toml`: the OCI worker with Debian's runc (no containerd), BuildKit's own GC, and one
/// `[registry."HOST"]` table per test registry (plain HTTP, or TLS trusting its private CA).
fn config_toml(registries: &[&Registry]) -> String {
    let mut toml = format!("[worker.oci]\n  enabled = true\n  binary = {RUNC:?}\n\n[worker.containerd]\n  enabled = false\n");
    for r in registries {
        toml.push_str(&format!("\n[registry.{:?}]\n", r.host()));
        match r.ca_pem() {
            None => toml.push_str("  http = true\n"),
            // Loopback registries are plain HTTP to BuildKit unless told otherwise.
            Some(ca) => toml.push_str(&format!("  http = false\n  ca = [{:?}]\n", ca.display().to_string())),
        }
    }
    toml
}

/// Which BuildKit a test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The BuildKit inside Debian's Docker engine (`docker://`).
    DockerEngine,
    /// A standalone buildkitd on a unix socket (`unix://`).
    Unix,
    /// A standalone buildkitd over TCP with mutual TLS (`tcp://`).
    TcpMtls,
}

/// A running BuildKit of one `Kind`, reaching the given registries.
pub enum BuildKit {
    Engine(super::docker::Engine),
    Daemon(Buildkitd, Kind),
}

impl BuildKit {
    /// Starts a BuildKit of `kind` that can pull from and push to `registries` (TLS ones through
    /// their CA, or, for the Docker engine, as insecure registries).
    pub fn start(kind: Kind, registries: &[&Registry]) -> BuildKit {
        match kind {
            Kind::DockerEngine => {
                let tls: Vec<String> = registries.iter().filter(|r| r.ca_pem().is_some()).map(|r| format!("https://{}", r.host())).collect();
                let config = if tls.is_empty() { serde_json::json!({}) } else { serde_json::json!({ "insecure-registries": tls }) };
                BuildKit::Engine(super::docker::Engine::start_with_config(config))
            }
            Kind::Unix => BuildKit::Daemon(Buildkitd::start(registries), kind),
            Kind::TcpMtls => BuildKit::Daemon(Buildkitd::start_with(Options { registries: registries.to_vec(), tcp_mtls: true }), kind),
        }
    }

    /// `--buildkit URL` and, for TCP, the client's TLS flags, as kforge's commands take them.
    pub fn args(&self) -> Vec<String> {
        match self {
            BuildKit::Engine(engine) => vec!["--buildkit".into(), engine.url()],
            BuildKit::Daemon(d, Kind::TcpMtls) => {
                let (url, tls) = d.tcp().expect("started with a TCP listener");
                let path = |p: &Path| p.display().to_string();
                vec!["--buildkit".into(), url, "--tlscacert".into(), path(&tls.ca), "--tlscert".into(), path(&tls.cert), "--tlskey".into(), path(&tls.key)]
            }
            BuildKit::Daemon(d, _) => vec!["--buildkit".into(), d.unix_url()],
        }
    }

    /// The daemon's last log lines (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        match self {
            BuildKit::Engine(engine) => engine.log_tail(lines),
            BuildKit::Daemon(d, _) => d.log_tail(lines),
        }
    }

    /// The standalone daemon, if this is one.
    pub fn daemon(&self) -> Option<&Buildkitd> {
        match self {
            BuildKit::Daemon(d, _) => Some(d),
            BuildKit::Engine(_) => None,
        }
    }

    /// The Docker engine, if this is one.
    pub fn engine(&self) -> Option<&super::docker::Engine> {
        match self {
            BuildKit::Engine(e) => Some(e),
            BuildKit::Daemon(..) => None,
        }
    }
}

/// Declares one test per BuildKit kind that runs `scenario(kind)`: `scenario::docker_engine`,
/// `scenario::buildkitd_unix`, `scenario::buildkitd_tcp_mtls` (the last two ignored, with the reason,
/// when buildkitd is not built outside CI).
#[macro_export]
macro_rules! on_every_buildkit {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            use $crate::support::buildkitd::Kind;
            #[test]
            fn docker_engine() {
                super::$scenario(Kind::DockerEngine)
            }
            #[test]
            #[cfg_attr(kforge_no_buildkitd, ignore = "buildkitd is not built: run tests/peers/build.sh (tests/run.sh does)")]
            fn buildkitd_unix() {
                super::$scenario(Kind::Unix)
            }
            #[test]
            #[cfg_attr(kforge_no_buildkitd, ignore = "buildkitd is not built: run tests/peers/build.sh (tests/run.sh does)")]
            fn buildkitd_tcp_mtls() {
                super::$scenario(Kind::TcpMtls)
            }
        }
    )+};
}
