//! gRPC server reflection as a client that is not tonic sees it: grpc-go's reflection stubs
//! (`tests/peers/reflect-client`, built by `tests/peers/build.sh`) against a real `kforge serve`,
//! in both protocol versions, grpc.reflection.v1 and the v1alpha that grpcio, grpc_cli and older
//! grpcurl speak.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use support::peers::{Peer, tail};
use support::*;

/// A plain `kforge serve` on a loopback port of its choosing, with a development key in a
/// temporary directory; stopped with SIGTERM on drop.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let log = dir.path().join("serve.log");
        let stderr = std::fs::File::create(&log).expect("create the server log");
        let mut child = kforge()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start kforge serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the banner");
        let Some(addr) = line.trim().strip_prefix("kforge serves the signer and the builder on ").map(str::to_string) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kforge serve did not start: {line}\n{}", tail(&log, 40));
        };
        Server { child, addr, log, _dir: dir }
    }

    /// What `reflect-client -api <api>` prints about this server, line by line; panics with the
    /// client's errors and the server's log if it fails.
    fn reflect(&self, api: &str) -> Vec<String> {
        let client = Peer::ReflectClient.binary("reflect-client");
        let out = output(Command::new(&client).args(["-addr", &self.addr, "-api", api, "-timeout", "60s"]));
        assert!(
            out.status.success(),
            "reflect-client -api {api} failed ({}):\nstdout: {}\nstderr: {}\nserver log:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            tail(&self.log, 40)
        );
        text(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Services every client must find, whichever version of reflection it speaks.
const SERVICES: [&str; 5] = [
    "kforge.signer.v1.Signer",
    "kforge.builder.v1.Builder",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Methods resolved through the file descriptors the server returns for those services.
const METHODS: [&str; 10] = [
    "kforge.signer.v1.Signer/SignModules",
    "kforge.signer.v1.Signer/SignImage",
    "kforge.signer.v1.Signer/Verify",
    "kforge.signer.v1.Signer/ListKeys",
    "kforge.builder.v1.Builder/Build",
    "kforge.builder.v1.Builder/ResolveDtk",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

#[test]
#[cfg_attr(kforge_no_reflect_client, ignore = "reflect-client is not built: run tests/peers/build.sh reflect-client (tests/run.sh builds every peer)")]
fn grpc_go_lists_every_service_and_method_through_reflection_v1_and_v1alpha() {
    let server = Server::start();
    let v1 = server.reflect("v1");
    let v1alpha = server.reflect("v1alpha");
    for (api, lines) in [("v1", &v1), ("v1alpha", &v1alpha)] {
        let has = |line: String| lines.contains(&line);
        for service in SERVICES {
            assert!(has(format!("service {service}")), "reflection {api} does not list {service}:\n{}", lines.join("\n"));
        }
        for method in METHODS {
            assert!(has(format!("method {method}")), "reflection {api} does not describe {method}:\n{}", lines.join("\n"));
        }
    }
    assert_eq!(v1, v1alpha, "v1 and v1alpha describe the server differently");
}

#[test]
#[cfg_attr(kforge_no_reflect_client, ignore = "reflect-client is not built: run tests/peers/build.sh reflect-client (tests/run.sh builds every peer)")]
fn reflect_client_fails_where_there_is_no_reflection() {
    // The client must not pass by printing nothing: a port where nobody listens is an error.
    let port = support::peers::free_port();
    let client = Peer::ReflectClient.binary("reflect-client");
    let out = output(Command::new(&client).args(["-addr", &format!("127.0.0.1:{port}"), "-api", "v1alpha", "-timeout", "10s"]));
    assert!(!out.status.success(), "reflect-client succeeded against a closed port:\n{}", text(&out.stdout));
    assert!(out.stdout.is_empty(), "reflect-client printed services for a closed port:\n{}", text(&out.stdout));
}
