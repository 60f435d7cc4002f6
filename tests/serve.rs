//! The signing service: a real `kforge serve` process with mutual TLS and tokens, and the service
//! in-process under 100 concurrent clients; results checked against sign-file and the audit log.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use kforge_proto::signer::v1 as pb;
use kforge_proto::signer::v1::signer_client::SignerClient;
use support::pki::{Ca, Leaf};
use support::*;

/// A `kforge serve` process; stopped with SIGTERM on drop.
struct Server {
    pub child: Child,
    addr: String,
    metrics: Option<String>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = kforge().arg("serve").args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start kforge serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        let Some(addr) = line.trim().strip_prefix("kforge serves the signer and the builder on ").map(str::to_string) else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("kforge serve did not start: {line}\n{}", text(&out.stderr));
        };
        let mut second = String::new();
        reader.read_line(&mut second).expect("read");
        let metrics = second.trim().strip_prefix("metrics on ").map(str::to_string);
        Server { child, addr, metrics }
    }

    fn rss_peak_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmHWM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn audit(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).expect("audit line is JSON")).collect()
}

fn signed_lines(path: &Path) -> usize {
    audit(path).iter().filter(|r| r["result"] == "signed").count()
}

struct Tls {
    dir: tempfile::TempDir,
    ca: Ca,
    builder: Leaf,
    intruder: Leaf,
    stranger: Leaf,
    keys: Keys,
    config: PathBuf,
    audit: PathBuf,
    token: PathBuf,
}

/// A CA, server and client certificates, a signing key, and a configuration with mutual TLS,
/// a token and per-key allow lists.
fn tls_setup() -> Tls {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "kforge");
    let server = ca.issue("signer.test", true);
    let builder = ca.issue("builder", false);
    let intruder = ca.issue("intruder", false);
    let stranger = Ca::new(dir.path(), "other").issue("builder", false);
    let keys = openssl_keys(dir.path(), "prod", 2048);
    let other = openssl_keys(dir.path(), "other", 2048);
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token\n").expect("write token");
    let token_sha = ok(Command::new("sh").arg("-c").arg("printf %s s3cr3t-token | sha256sum"));
    let audit = dir.path().join("audit/audit.jsonl");
    let config = dir.path().join("kforge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
audit_log = "{audit}"
[tls]
cert = "{scert}"
key = "{skey}"
client_ca = "{ca}"
[[tokens]]
name = "ci"
sha256 = "{sha}"
[[keys]]
name = "prod"
key = "{key}"
cert = "{cert}"
allow = ["cn:builder", "token:ci"]
[[keys]]
name = "other"
key = "{okey}"
cert = "{ocert}"
allow = ["cn:somebody-else"]
"#,
            audit = audit.display(),
            scert = server.cert.display(),
            skey = server.key.display(),
            ca = ca.cert.display(),
            sha = token_sha.split_whitespace().next().expect("hash"),
            key = keys.key.display(),
            cert = keys.cert_der.display(),
            okey = other.key.display(),
            ocert = other.cert_pem.display(),
        ),
    )
    .expect("write config");
    Tls { dir, ca, builder, intruder, stranger, keys, config, audit, token }
}

impl Tls {
    fn remote_sign(&self, server: &Server, client: Option<&Leaf>, token: Option<&Path>, key: &str, module: &Path) -> Command {
        let mut c = kforge();
        c.args(["sign", "--remote", &format!("https://{}", server.addr), "--key-name", key, "--ca"]).arg(&self.ca.cert);
        if let Some(l) = client {
            c.arg("--client-cert").arg(&l.cert).arg("--client-key").arg(&l.key);
        }
        if let Some(t) = token {
            c.arg("--token-file").arg(t);
        }
        c.arg(module);
        c
    }
}

#[test]
fn a_real_server_signs_like_sign_file_for_certificate_and_token_callers() {
    let t = tls_setup();
    let m = modules();
    let server = Server::start(&["--config", t.config.to_str().expect("utf8")]);
    let expected_hello = sign_file(t.dir.path(), &m.hello, "sha256", &t.keys.key, &t.keys.cert_der, false);
    let expected_params = sign_file(t.dir.path(), &m.params, "sha256", &t.keys.key, &t.keys.cert_der, false);

    let a = copy_to(&m.hello, t.dir.path(), "a.ko");
    let out = ok(&mut t.remote_sign(&server, Some(&t.builder), None, "prod", &a));
    assert!(out.contains("signed 1 module"), "{out}");
    assert!(std::fs::read(&a).expect("read") == expected_hello, "mutual TLS: not sign-file's bytes");

    let b = copy_to(&m.params, t.dir.path(), "b.ko");
    ok(&mut t.remote_sign(&server, None, Some(&t.token), "prod", &b));
    assert!(std::fs::read(&b).expect("read") == expected_params, "token: not sign-file's bytes");

    // A compressed module comes back whole, recompressed; decompressed it is sign-file's module.
    let c = copy_to(&m.params, t.dir.path(), "c.ko");
    ok(Command::new("xz").args(["--check=crc32", "-f"]).arg(&c));
    let cxz = t.dir.path().join("c.ko.xz");
    ok(&mut t.remote_sign(&server, Some(&t.builder), None, "prod", &cxz));
    let unpacked = output(Command::new("xz").args(["-d", "-c"]).arg(&cxz));
    assert!(unpacked.status.success() && unpacked.stdout == expected_params, "remote .ko.xz: not sign-file's module inside");

    // The same bytes as local signing.
    let local = copy_to(&m.params, t.dir.path(), "local.ko");
    ok(kforge().args(["sign", "--key"]).arg(&t.keys.key).arg("--cert").arg(&t.keys.cert_der).arg(&local));
    assert!(std::fs::read(&local).expect("read") == expected_params);

    let records = audit(&t.audit);
    let signed: Vec<_> = records.iter().filter(|r| r["result"] == "signed").collect();
    assert_eq!(signed.len(), 3, "{records:?}");
    assert_eq!(signed[0]["identity"], "cn:builder");
    assert_eq!(signed[0]["module"], "kforge_hello");
    assert_eq!(signed[1]["identity"], "token:ci");
    assert_eq!(signed[1]["vermagic"].as_str().and_then(|v| v.split_whitespace().next()), Some(m.abi.as_str()));
    assert_eq!(signed[1]["sha256_out"].as_str(), Some(oci::sha256(&expected_params).trim_start_matches("sha256:")));

    let metrics = ok(Command::new("curl").args(["-sf", server.metrics.as_deref().expect("metrics address")]));
    assert!(metrics.contains("kforge_signer_signatures_total{key=\"prod\",result=\"signed\"} 3"), "{metrics}");
    assert!(metrics.contains("kforge_signer_sign_duration_seconds_count 3"), "{metrics}");
    let health = ok(Command::new("curl").args(["-sf", &server.metrics.as_deref().expect("metrics").replace("/metrics", "/healthz")]));
    assert_eq!(health.trim(), "ok");
}

#[test]
fn refusals_carry_the_right_code_and_never_produce_a_signature() {
    let t = tls_setup();
    let m = modules();
    let server = Server::start(&["--config", t.config.to_str().expect("utf8")]);
    let module = copy_to(&m.hello, t.dir.path(), "m.ko");
    let original = std::fs::read(&module).expect("read");
    let bad_token = t.dir.path().join("bad-token");
    std::fs::write(&bad_token, "guess").expect("write");

    let out = fails(&mut t.remote_sign(&server, None, None, "prod", &module));
    assert!(out.contains("(Unauthenticated)") && out.contains("client certificate"), "no credentials: {out}");
    let out = fails(&mut t.remote_sign(&server, Some(&t.stranger), None, "prod", &module));
    assert!(out.contains("closed or refused the connection"), "untrusted certificate: {out}");
    let out = fails(&mut t.remote_sign(&server, Some(&t.intruder), None, "prod", &module));
    assert!(out.contains("(PermissionDenied)") && out.contains("cn:intruder may not use key \"prod\""), "wrong identity: {out}");
    let out = fails(&mut t.remote_sign(&server, Some(&t.builder), None, "other", &module));
    assert!(out.contains("(PermissionDenied)") && out.contains("\"other\""), "key not allowed: {out}");
    let out = fails(&mut t.remote_sign(&server, None, Some(&bad_token), "prod", &module));
    assert!(out.contains("(Unauthenticated)") && out.contains("bearer token not recognised"), "bad token: {out}");
    let out = fails(&mut t.remote_sign(&server, Some(&t.builder), None, "missing", &module));
    assert!(out.contains("(NotFound)"), "unknown key: {out}");

    assert_eq!(std::fs::read(&module).expect("read"), original, "the module was not touched");
    assert_eq!(signed_lines(&t.audit), 0, "no refused attempt appears as a signature");
    assert!(audit(&t.audit).iter().any(|r| r["result"] == "denied" && r["identity"] == "cn:intruder"), "refusals are audited as such");
}

#[test]
fn a_64_mb_module_streams_through_with_bounded_server_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&["--data-dir", data.to_str().expect("utf8"), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
    let big = dir.path().join("big.ko");
    let mut bytes = std::fs::read(&modules().params).expect("read");
    bytes.resize(64 << 20, 0);
    std::fs::write(&big, &bytes).expect("write");
    let before = server.rss_peak_kb();
    ok(kforge().args(["sign", "--remote", &format!("http://{}", server.addr)]).arg(&big));
    let peak = server.rss_peak_kb();
    let local = dir.path().join("local.ko");
    std::fs::write(&local, &bytes).expect("write");
    ok(kforge().args(["sign", "--key"]).arg(data.join("dev-signing-key.pem")).arg("--cert").arg(data.join("dev-signing-cert.der")).arg(&local));
    assert!(std::fs::read(&big).expect("read") == std::fs::read(&local).expect("read"), "remote and local signatures differ");
    assert!(peak < before + 3 * 64 * 1024, "server peak RSS grew from {before} kB to {peak} kB for one 64 MB module");
    assert_eq!(signed_lines(&data.join("audit.jsonl")), 1);
}

/// Signs one module over its own stream; returns the signed bytes or the per-module error.
async fn sign(client: &mut SignerClient<tonic::transport::Channel>, id: String, key: &str, module: Vec<u8>) -> Result<Vec<u8>, pb::ModuleError> {
    use pb::sign_modules_request::Part;
    let msg = |p| pb::SignModulesRequest { part: Some(p) };
    let mut parts = vec![msg(Part::Start(pb::ModuleStart {
        id: id.clone(),
        key: key.into(),
        hash: String::new(),
        key_id: false,
        size: module.len() as u64,
        detached: false,
    }))];
    parts.extend(module.chunks(256 << 10).map(|c| msg(Part::Data(c.to_vec().into()))));
    parts.push(msg(Part::End(pb::ModuleEnd { id })));
    let mut stream = client.sign_modules(tokio_stream::iter(parts)).await.expect("stream").into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.expect("message") {
        match m.part {
            Some(pb::sign_modules_response::Part::Data(d)) => out.extend_from_slice(&d),
            Some(pb::sign_modules_response::Part::Error(e)) => return Err(e),
            _ => {}
        }
    }
    Ok(out)
}

fn in_process_config(dir: &Path, max_module_bytes: u64) -> kforge::Config {
    let mut c = kforge::Config::development(dir).expect("config");
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.metrics_listen = None;
    c.limits.max_module_bytes = max_module_bytes;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_clients_sign_two_thousand_modules_each_verified_and_audited_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = in_process_config(dir.path(), 512 << 20);
    let audit_path = config.audit_log.clone();
    let running = kforge::serve(config).await.expect("serve");
    let url = format!("http://{}", running.addr);

    let channel = tonic::transport::Channel::from_shared(url.clone()).expect("url").connect().await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: "kforge.signer.v1.Signer".into() }).await.expect("health").into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let cert = Arc::new(kforge_signer::Certificate::load(&dir.path().join("dev-signing-cert.der")).expect("cert"));
    let modules = Arc::new([std::fs::read(&modules().hello).expect("read"), std::fs::read(&modules().params).expect("read")]);
    let mut tasks = Vec::new();
    for client_no in 0..100 {
        let (url, cert, modules) = (url.clone(), cert.clone(), modules.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = SignerClient::connect(url).await.expect("connect");
            for i in 0..20 {
                let module = modules[i % 2].clone();
                let signed = sign(&mut client, format!("c{client_no}-m{i}"), "dev", module).await.expect("signed");
                let v = kforge_signer::verify(&signed, &cert).expect("verifies");
                assert_eq!(v.info.name, if i % 2 == 0 { "kforge_hello" } else { "kforge_params" });
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let records = audit(&audit_path);
    assert_eq!(records.len(), 2000, "exactly one audit line per signature");
    let mut ids: Vec<&str> = records.iter().map(|r| r["path"].as_str().expect("path")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2000, "every module once, none lost");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_module_errors_do_not_end_the_stream_and_verify_checks_cryptographically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = kforge::serve(in_process_config(dir.path(), 1 << 20)).await.expect("serve");
    let mut client = SignerClient::connect(format!("http://{}", running.addr)).await.expect("connect");
    let hello = std::fs::read(&modules().hello).expect("read");

    use pb::sign_modules_request::Part;
    let msg = |p| pb::SignModulesRequest { part: Some(p) };
    let start = |id: &str, size: usize| {
        msg(Part::Start(pb::ModuleStart { id: id.into(), key: "dev".into(), hash: String::new(), key_id: false, size: size as u64, detached: false }))
    };
    let end = |id: &str| msg(Part::End(pb::ModuleEnd { id: id.into() }));
    let parts = vec![
        start("junk", 4),
        msg(Part::Data(b"junk".to_vec().into())),
        end("junk"),
        start("huge", 2 << 20),
        end("huge"),
        start("good", hello.len()),
        msg(Part::Data(hello.clone().into())),
        end("good"),
    ];
    let mut stream = client.sign_modules(tokio_stream::iter(parts)).await.expect("stream").into_inner();
    let (mut errors, mut signed) = (Vec::new(), Vec::new());
    while let Some(m) = stream.message().await.expect("message") {
        match m.part {
            Some(pb::sign_modules_response::Part::Error(e)) => errors.push(e),
            Some(pb::sign_modules_response::Part::Signed(h)) => signed.push(h),
            _ => {}
        }
    }
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!((errors[0].id.as_str(), errors[0].code), ("junk", tonic::Code::InvalidArgument as i32));
    assert!(errors[0].message.contains("not a kernel module"), "{}", errors[0].message);
    assert_eq!((errors[1].id.as_str(), errors[1].code), ("huge", tonic::Code::ResourceExhausted as i32));
    assert_eq!(signed.len(), 1);
    assert_eq!((signed[0].id.as_str(), signed[0].module_name.as_str()), ("good", "kforge_hello"));

    let good = sign(&mut client, "again".into(), "dev", hello.clone()).await.expect("signed");
    let v = client
        .verify(pb::VerifyRequest { module: good.clone().into(), against: Some(pb::verify_request::Against::Key("dev".into())) })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(v.module_name, "kforge_hello");
    assert_eq!(v.hash, "sha256");
    let mut tampered = good;
    tampered[200] ^= 1;
    let e = client
        .verify(pb::VerifyRequest { module: tampered.into(), against: Some(pb::verify_request::Against::Key("dev".into())) })
        .await
        .expect_err("tampered");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("signature does not verify"), "{}", e.message());
    let keys = client.list_keys(pb::ListKeysRequest {}).await.expect("keys").into_inner().keys;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].certificate_pem.starts_with("-----BEGIN CERTIFICATE-----") && !keys[0].certificate_pem.contains("PRIVATE"));
    running.shutdown().await.expect("shutdown");
}

#[test]
fn a_server_killed_mid_batch_leaves_a_whole_audit_log_and_the_client_names_what_did_not_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "k", 2048);
    let audit_path = dir.path().join("audit.jsonl");
    let config = dir.path().join("kforge.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\naudit_log = \"{}\"\n[[keys]]\nname = \"k\"\nkey = \"{}\"\ncert = \"{}\"\nallow = [\"anonymous\"]\n",
            audit_path.display(),
            keys.key.display(),
            keys.cert_der.display()
        ),
    )
    .expect("config");
    let m = modules();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    const N: usize = 1000;
    for i in 0..N {
        copy_to(&m.hello, &tree, &format!("m{i:04}.ko"));
    }
    let original = std::fs::read(&m.hello).expect("read");
    let expected = sign_file(dir.path(), &m.hello, "sha256", &keys.key, &keys.cert_der, false);

    let mut server = Server::start(&["--config", config.to_str().expect("utf8")]);
    let client = kforge()
        .args(["sign", "-j", "2", "--remote", &format!("http://{}", server.addr)])
        .arg(&tree)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while signed_lines(&audit_path) < 50 {
        assert!(std::time::Instant::now() < deadline, "the batch never got going");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let out = client.wait_with_output().expect("client output");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "the client must fail when the service dies: {stdout}");

    let (mut done, mut untouched) = (0, 0);
    for i in 0..N {
        let name = format!("m{i:04}.ko");
        let bytes = std::fs::read(tree.join(&name)).expect("read");
        if bytes == expected {
            done += 1;
        } else {
            assert!(bytes == original, "{name} is neither signed nor untouched");
            assert!(stderr.contains(&format!("{name}: signing service")), "{name} did not complete but is not reported");
            untouched += 1;
        }
    }
    assert!(done >= 1 && untouched >= 1, "the kill landed mid-batch: {done} done, {untouched} not");
    assert!(stdout.contains(&format!("signed {done} modules")) && stdout.contains(&format!("{untouched} failed")), "{stdout}");

    // Restart: the audit log opens, every line parses, and no signature the client received is missing.
    let restarted = Server::start(&["--config", config.to_str().expect("utf8")]);
    let records = audit(&audit_path);
    assert!(records.iter().filter(|r| r["result"] == "signed").count() >= done);
    drop(restarted);
}

#[test]
fn sign_image_on_the_service_pushes_a_signed_image_and_audits_every_file() {
    use support::oci::{self as o, Image, Item, file};
    use support::registry::{self, Registry};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&["--data-dir", data.to_str().expect("utf8"), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
    let reg = Registry::start_plain();
    let m = modules();
    let hello = std::fs::read(&m.hello).expect("read");
    let params = std::fs::read(&m.params).expect("read");
    let base = format!("/opt/lib/modules/{}", m.abi);
    let layout = dir.path().join("src");
    o::write_image(
        &layout,
        "v1",
        &Image::oci(vec![vec![Item::Dir(base.clone()), file(&format!("{base}/a.ko"), hello.clone())], vec![file(&format!("{base}/b.ko"), params.clone())]]),
    );
    registry::skopeo_copy(&format!("oci:{}:v1", layout.display()), &format!("docker://{}/mods/src:v1", reg.host()), &reg.skopeo_dest_flags());

    let to = format!("{}/mods/signed:v1", reg.host());
    let out = output(kforge().args([
        "sign-image",
        "--remote",
        &format!("http://{}", server.addr),
        "--from",
        &format!("{}/mods/src:v1", reg.host()),
        "--to",
        &to,
        "--insecure",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("signed 2 files"), "{}", text(&out.stderr));
    let raw = registry::skopeo_raw_manifest(&format!("docker://{to}"), &reg.skopeo_flags());
    assert_eq!(o::sha256(&raw), text(&out.stdout).trim());

    let pulled = dir.path().join("pulled");
    registry::skopeo_copy(&format!("docker://{to}"), &format!("oci:{}:v1", pulled.display()), &reg.skopeo_src_flags());
    let rootfs = registry::umoci_unpack(&pulled, "v1", &dir.path().join("bundle"));
    let verify = ok(kforge().args(["verify", "-q", "--cert"]).arg(data.join("dev-signing-cert.der")).arg(rootfs.join(base.trim_start_matches('/'))));
    assert!(verify.contains("2 verified, 0 failed"), "{verify}");
    let records: Vec<_> = audit(&data.join("audit.jsonl")).into_iter().filter(|r| r["result"] == "signed").collect();
    let mut paths: Vec<String> = records.iter().map(|r| r["path"].as_str().expect("path").to_string()).collect();
    paths.sort();
    assert_eq!(paths, [format!("{base}/a.ko"), format!("{base}/b.ko")]);
    assert!(records.iter().all(|r| r["image"].as_str().is_some_and(|i| i.contains("mods/src:v1"))), "{records:?}");
    assert_eq!(reg.tags("mods/signed"), ["v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_that_cannot_be_audited_is_never_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = in_process_config(dir.path(), 1 << 20);
    // Every write to /dev/full fails with ENOSPC, like a full disk under the audit log.
    config.audit_log = PathBuf::from("/dev/full");
    let running = kforge::serve(config).await.expect("serve");
    let mut client = SignerClient::connect(format!("http://{}", running.addr)).await.expect("connect");
    let hello = std::fs::read(&modules().hello).expect("read");
    let e = sign(&mut client, "m".into(), "dev", hello).await.expect_err("no signature without an audit record");
    assert_eq!(e.code, tonic::Code::Internal as i32);
    assert!(e.message.contains("could not be recorded in the audit log"), "{}", e.message);
    running.shutdown().await.expect("shutdown");
}

/// Build requests go through the same limits as signing: a Build with more than tonic's default
/// 4 MiB of context reaches the service, the per-caller request rate applies, a failure says its
/// kind, and the metrics count builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_requests_pass_the_message_limit_and_meet_the_rate_limit_and_the_metrics() {
    use kforge_proto::builder::v1::{self as bpb, build_event::Event as E, builder_client::BuilderClient};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = in_process_config(dir.path(), 1 << 20);
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.limits.requests_per_second = 1.0;
    if let Some(b) = config.builder.as_mut() {
        b.buildkit = format!("unix://{}", dir.path().join("no-buildkitd.sock").display());
    }
    let running = kforge::serve(config).await.expect("serve");
    let mut client = BuilderClient::connect(format!("http://{}", running.addr)).await.expect("connect").max_encoding_message_size(64 << 20);

    // 6 MiB of sources: past tonic's default limit, within the service's. The request arrives and
    // fails only because no BuildKit listens there.
    let big = bpb::BuildRequest {
        image: "127.0.0.1:1/big:1".into(),
        dockerfile: "FROM scratch\nCOPY . /\n".into(),
        context: vec![bpb::ContextFile { path: "blob.c".into(), mode: 0o644, data: vec![b'x'; 6 << 20].into() }],
        ..Default::default()
    };
    let e = client.build(big).await.expect_err("no BuildKit");
    assert_eq!(e.code(), tonic::Code::Unavailable, "the request reached the service: {e:?}");
    assert!(e.message().contains("no-buildkitd.sock"), "names the BuildKit it tried: {}", e.message());

    // A sign-only request whose unsigned image cannot be read fails inside the stream, with a kind.
    let sign_only = bpb::BuildRequest {
        image: "127.0.0.1:1/signed:1".into(),
        sign: Some(bpb::SignSpec { key: "dev".into(), unsigned_image: "127.0.0.1:1/unsigned:1".into(), ..Default::default() }),
        ..Default::default()
    };
    let mut stream = client.build(sign_only.clone()).await.expect("the stream starts").into_inner();
    let mut last = None;
    while let Some(ev) = stream.message().await.expect("events") {
        last = ev.event;
    }
    let Some(E::Failed(failed)) = last else { panic!("want BuildFailed, got {last:?}") };
    assert_eq!(failed.kind(), bpb::FailureKind::Signing, "{failed:?}");
    assert!(failed.message.contains("127.0.0.1:1"), "{}", failed.message);

    // Three requests in a row from one caller, one per second allowed (bursts of two): the third
    // is refused. Earlier requests of this test used the burst, so wait for the bucket to refill.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut refused = None;
    for _ in 0..3 {
        if let Err(e) = client.build(sign_only.clone()).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("the rate limit refuses a request");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("requests per second"), "{}", refused.message());

    let metrics_addr = running.metrics_addr.expect("metrics");
    let text = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl").args(["-sf", &format!("http://{metrics_addr}/metrics")]).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .expect("curl task");
    assert!(text.lines().any(|l| l.starts_with("kforge_builder_builds_total{result=\"failed\"}")), "builds are counted:\n{text}");
    running.shutdown().await.expect("shutdown");
}

/// One cap on requests in flight for both services: an open signing stream holds its slot until it
/// ends, so a Build (or any other call) meanwhile is refused, and served once the stream is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_holds_its_slot_for_every_service_until_it_ends() {
    use kforge_proto::builder::v1::{self as bpb, builder_client::BuilderClient};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = in_process_config(dir.path(), 1 << 20);
    config.limits.max_concurrent_requests = 1;
    let running = kforge::serve(config).await.expect("serve");
    let url = format!("http://{}", running.addr);
    let mut signer = SignerClient::connect(url.clone()).await.expect("connect");
    let mut builder = BuilderClient::connect(url).await.expect("connect");

    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SignModulesRequest>(1);
    let open = signer.sign_modules(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("the stream opens");
    let build = bpb::BuildRequest { image: "127.0.0.1:1/x:1".into(), dockerfile: "FROM scratch\n".into(), ..Default::default() };
    let refused = builder.build(build.clone()).await.expect_err("the slot is taken");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("limit of 1"), "{}", refused.message());
    let refused = signer.list_keys(pb::ListKeysRequest {}).await.expect_err("the slot is taken");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);

    drop(tx);
    drop(open);
    // The stream's end frees the slot (the server notices the end of the response stream).
    let mut freed = false;
    for _ in 0..50 {
        if signer.list_keys(pb::ListKeysRequest {}).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(freed, "the slot is free again once the stream ended");
    running.shutdown().await.expect("shutdown");
}
