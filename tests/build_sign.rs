//! End to end: `kforge build-sign` (KMM's build and sign in one request) and `kforge dtk resolve`
//! against a real BuildKit — Debian's dockerd, and the pinned standalone buildkitd over `unix://` and
//! `tcp://` with mutual TLS (the in-cluster path: the unsigned build is pushed by digest) — and
//! Debian's docker-registry, for two kernels: the ABI `linux-headers-amd64` depends on and an older
//! one still in Debian's archive, each with its own Driver-Toolkit-like image.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::buildkitd::{BuildKit, Kind};
use support::docker::Engine;
use support::registry::{Registry, skopeo_copy, umoci_unpack};
use support::{dtk, fails, kernel_abi, modinfo, ok, openssl_keys, output, text};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls a repository's tag list and its tags' manifests while builds run, and remembers every
/// `tag@digest` and every tag it saw.
struct TagWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    tags_seen: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TagWatch {
    fn start(registry_url: String, repo: String, tags: Vec<String>) -> TagWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tags_seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v, t) = (stop.clone(), seen.clone(), tags_seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let list = Command::new("curl")
                    .args(["-sS", "--noproxy", "*", "-f"])
                    .arg(format!("{registry_url}/v2/{repo}/tags/list"))
                    .stderr(Stdio::null())
                    .output();
                if let Some(o) = list.ok().filter(|o| o.status.success()) {
                    let body: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
                    let mut all = t.lock().expect("lock");
                    for tag in body["tags"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
                        if !all.iter().any(|x| x == tag) {
                            all.push(tag.to_string());
                        }
                    }
                }
                for tag in &tags {
                    let out = Command::new("curl")
                        .args([
                            "-sS",
                            "--noproxy",
                            "*",
                            "-f",
                            "-H",
                            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
                        ])
                        .arg(format!("{registry_url}/v2/{repo}/manifests/{tag}"))
                        .stderr(Stdio::null())
                        .output();
                    if let Ok(o) = out
                        && o.status.success()
                    {
                        let d = format!("{tag}@sha256:{}", sha256_hex(&o.stdout));
                        let mut seen = v.lock().expect("lock");
                        if !seen.contains(&d) {
                            seen.push(d);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        TagWatch { stop, seen, tags_seen, thread: Some(thread) }
    }

    /// (every `tag@digest` seen, every tag the tag list ever showed).
    fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.seen.lock().expect("lock").clone(), self.tags_seen.lock().expect("lock").clone())
    }
}

on_every_buildkit!(builds_and_signs_for_two_kernels_and_never_tags_an_unsigned_image, a_failing_build_is_retried_then_reported_and_tags_nothing);

fn builds_and_signs_for_two_kernels_and_never_tags_an_unsigned_image(kind: Kind) {
    let abi = kernel_abi();
    let previous = dtk::previous_abi(&abi);
    let kernels: Vec<String> = std::iter::once(abi.clone()).chain(previous.clone()).collect();
    if previous.is_none() {
        eprintln!("no older linux-headers-*-amd64 in the apt sources: one kernel only");
    }
    let registry = Registry::start_plain();
    let buildkit = BuildKit::start(kind, &[&registry]);
    for k in &kernels {
        dtk::push_dtk(&registry, k, &format!("dtk:{k}"));
    }
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "module-signing", 2048);
    let template = format!("{}/dtk:${{KERNEL_FULL_VERSION}}", registry.host());
    let repo = "modules/kforge_hello";

    let build_sign = |kernel: &str, extra: &[&str]| {
        let mut cmd = support::kforge();
        cmd.arg("build-sign")
            .args(buildkit.args())
            .args(["--progress", "plain"])
            .arg("-f")
            .arg(repo_file("dockerfiles/kmm-module.Dockerfile"))
            .arg("--context")
            .arg(repo_file("tests/modules/kforge_hello"))
            .args(["--kernel", kernel, "--module-name", "kforge_hello", "--namespace", "kmm-test"])
            .args(["--build-arg", &format!("RUNTIME_IMAGE={runtime}"), "--dtk-template", &template])
            .arg("--key")
            .arg(&keys.key)
            .arg("--cert")
            .arg(&keys.cert_der)
            .args(["--to", &format!("{}/{repo}:${{KERNEL_FULL_VERSION}}", registry.host())])
            .args(extra)
            .env("DOCKER_CONFIG", dir.path())
            .env_remove("BUILDKIT_HOST")
            .stdin(Stdio::null());
        output(&mut cmd)
    };

    let watch = TagWatch::start(registry.url(), repo.to_string(), kernels.clone());
    let mut digests = Vec::new();
    for k in &kernels {
        let out = build_sign(k, &[]);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "build-sign for {k} failed:\n{stderr}\nBuildKit log:\n{}", buildkit.log_tail(30));
        // DTK_AUTO came from the template, as a digest.
        assert!(stderr.contains(&format!("DTK_AUTO = {}/dtk@sha256:", registry.host())) && stderr.contains("template"), "{stderr}");
        assert!(stderr.contains("kforge: signed /opt/lib/modules/"), "{stderr}");
        let stdout = text(&out.stdout);
        let (name, digest) = stdout.trim().rsplit_once('@').unwrap_or_else(|| panic!("no digest reference: {stdout}"));
        assert_eq!(name, format!("{}/{repo}", registry.host()));
        digests.push((k.clone(), digest.to_string()));
    }
    let (seen, tags_seen) = watch.finish();
    // The tag list never showed anything but the kernels' tags.
    for tag in &tags_seen {
        assert!(kernels.contains(tag), "the registry listed the tag {tag} during the run");
    }
    // Each tag only ever pointed at its signed image.
    let want: Vec<String> = digests.iter().map(|(k, d)| format!("{k}@{d}")).collect();
    for s in &seen {
        assert!(want.contains(s), "the tag pointed at {s}, which is not the signed image ({want:?})");
    }
    let mut tags = registry.tags(repo);
    tags.sort();
    let mut expected = kernels.clone();
    expected.sort();
    assert_eq!(tags, expected, "no extra (unsigned, temporary) tag");
    match buildkit.engine() {
        // The engine keeps no unsigned image under kforge's private name.
        Some(engine) => {
            let (_, images) = engine.get("/images/json");
            assert!(!images.contains("kforge-unsigned/"), "{images}");
        }
        // buildkitd pushed each unsigned build by digest into the repository: there, untagged.
        None => {
            let signed: Vec<&str> = digests.iter().map(|(_, d)| d.as_str()).collect();
            let untagged: Vec<String> = manifest_revisions(&registry, repo).into_iter().filter(|d| !signed.contains(&d.as_str())).collect();
            assert_eq!(untagged.len(), kernels.len(), "one unsigned manifest per kernel, pushed by digest: {untagged:?}");
        }
    }

    // Every module verifies with the certificate and is built for its kernel.
    for (k, digest) in &digests {
        let work = tempfile::tempdir().expect("tempdir");
        let layout = work.path().join("oci");
        skopeo_copy(&format!("docker://{}/{repo}@{digest}", registry.host()), &format!("oci:{}:img", layout.display()), &registry.skopeo_src_flags());
        let rootfs = umoci_unpack(&layout, "img", &work.path().join("bundle"));
        let module = rootfs.join(format!("opt/lib/modules/{k}/kforge_hello.ko"));
        let verified = ok(support::kforge().arg("verify").arg("--cert").arg(&keys.cert_der).arg(&module));
        assert!(verified.contains("kforge_hello"), "{verified}");
        assert!(modinfo(&module, "vermagic").starts_with(&format!("{k} ")));
        assert!(!modinfo(&module, "sig_key").is_empty());
        let config =
            ok(Command::new("skopeo").args(["inspect", "--config"]).args(registry.skopeo_flags()).arg(format!("docker://{}/{repo}@{digest}", registry.host())));
        assert!(config.contains("io.kforge.inputs-hash"), "{config}");
    }

    // The same request again: reused, nothing built or pushed.
    let (k, digest) = &digests[0];
    let again = build_sign(k, &[]);
    let stderr = text(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("same inputs") && !stderr.contains("RUN make"), "{stderr}");
    assert_eq!(text(&again.stdout).trim(), format!("{}/{repo}@{digest}", registry.host()));

    // One build argument changed: rebuilt and re-signed, a new image at the tag.
    let changed = build_sign(k, &["--build-arg", "EXTRA_FLAG=1"]);
    let stderr = text(&changed.stderr);
    assert!(changed.status.success(), "{stderr}");
    assert!(stderr.contains("other inputs") && stderr.contains("rebuilding"), "{stderr}");
    assert_ne!(text(&changed.stdout).trim(), format!("{}/{repo}@{digest}", registry.host()));
}

/// The digests of every manifest a repository holds, tagged or not (from the registry's storage).
fn manifest_revisions(registry: &Registry, repo: &str) -> Vec<String> {
    let dir = registry.storage().join(format!("docker/registry/v2/repositories/{repo}/_manifests/revisions/sha256"));
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect()
}

fn a_failing_build_is_retried_then_reported_and_tags_nothing(kind: Kind) {
    let registry = Registry::start_plain();
    let buildkit = BuildKit::start(kind, &[&registry]);
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "k", 2048);
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(&dockerfile, format!("FROM {runtime}\nARG KERNEL_FULL_VERSION\nRUN echo building for $KERNEL_FULL_VERSION; exit 3\n")).expect("write");
    let target = format!("{}/broken/mod:1", registry.host());
    let mut cmd = support::kforge();
    cmd.arg("build-sign")
        .args(buildkit.args())
        .args(["--kernel", "6.1.0-1-amd64", "--attempts", "2", "--to", &target])
        .arg("-f")
        .arg(&dockerfile)
        .arg("--key")
        .arg(&keys.key)
        .arg("--cert")
        .arg(&keys.cert_der)
        .env("DOCKER_CONFIG", dir.path())
        .stdin(Stdio::null());
    let e = fails(&mut cmd);
    assert!(e.contains("build attempt 1 of 2 failed"), "retried: {e}");
    assert!(e.contains("build failed after 2 attempts"), "{e}");
    let error = e.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {e}"));
    assert!(error.contains("exit code: 3"), "{error}");
    assert!(registry.tags("broken/mod").is_empty(), "nothing tagged");
}

#[test]
fn dtk_resolve_tries_each_source_and_returns_digests() {
    let abi = kernel_abi();
    let registry = Registry::start_plain();
    let pushed = dtk::push_dtk(&registry, &abi, &format!("dtk:{abi}"));
    let digest = ok(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}"]).args(registry.skopeo_flags()).arg(format!("docker://{pushed}")));
    let want = format!("{}/dtk@{}", registry.host(), digest.trim());
    let resolve = |args: &[&str]| {
        let mut cmd = support::kforge();
        cmd.args(["dtk", "resolve"]).args(args).stdin(Stdio::null());
        cmd
    };
    // A template whose image exists.
    let template = format!("{}/dtk:${{KERNEL_FULL_VERSION}}", registry.host());
    assert_eq!(ok(&mut resolve(&[&abi, "--dtk-template", &template])).trim(), want);
    // A mapping, by literal.
    assert_eq!(ok(&mut resolve(&[&abi, "--dtk-map", &format!("{abi}={pushed}")])).trim(), want);
    // A config file with a regexp mapping.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("dtk.toml");
    std::fs::write(
        &config,
        format!("[dtk]\nopenshift = false\n[[dtk.mappings]]\nregexp = '^6\\.'\nimage = \"{}/dtk:${{KERNEL_FULL_VERSION}}\"\n", registry.host()),
    )
    .expect("write");
    assert_eq!(ok(resolve(&[&abi]).arg("--dtk-config").arg(&config)).trim(), want);
    // Nothing applies: the kernel and every source tried are named.
    let e = fails(&mut resolve(&["6.1.0-999-amd64", "--dtk-template", &template]));
    assert!(e.contains("6.1.0-999-amd64") && e.contains("template") && e.contains("mapping"), "{e}");
}

/// The Builder service with KMM's sign section: a key on the service (audited), DTK_AUTO from its
/// `[dtk]` configuration, one signed image at the tag.
#[test]
fn the_service_builds_and_signs_with_its_own_key_and_audits() {
    use kforge_proto::builder::v1::{BuildArg, BuildRequest, ContextFile, ResolveDtkRequest, SignSpec, build_event::Event as E, builder_client::BuilderClient};
    use std::io::BufRead;

    let abi = kernel_abi();
    let engine = Engine::start();
    let registry = Registry::start_plain();
    dtk::push_dtk(&registry, &abi, &format!("dtk:{abi}"));
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "vendor", 2048);
    let audit = dir.path().join("audit.jsonl");
    let config = dir.path().join("kforge.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\naudit_log = \"{}\"\n\
             [[keys]]\nname = \"vendor\"\nkey = \"{}\"\ncert = \"{}\"\nallow = [\"*\", \"anonymous\"]\n\
             [builder]\nbuildkit = \"{}\"\n\
             [dtk]\nopenshift = false\ntemplate = \"{}/dtk:${{KERNEL_FULL_VERSION}}\"\n",
            audit.display(),
            keys.key.display(),
            keys.cert_der.display(),
            engine.url(),
            registry.host()
        ),
    )
    .expect("write config");
    let mut child = support::kforge()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("DOCKER_CONFIG", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let first = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines().next().and_then(Result::ok).unwrap_or_default();
    let addr = first.strip_prefix("kforge serves the signer and the builder on ").unwrap_or_else(|| panic!("serve did not start: {first}")).to_string();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(child);

    let sources = std::fs::read_dir(repo_file("tests/modules/kforge_hello"))
        .expect("sources")
        .flatten()
        .map(|e| ContextFile { path: e.file_name().to_string_lossy().into_owned(), mode: 0o644, data: std::fs::read(e.path()).expect("read").into() })
        .collect::<Vec<_>>();
    let request = BuildRequest {
        image: format!("{}/vendor/kforge_hello:${{KERNEL_FULL_VERSION}}", registry.host()),
        dockerfile: std::fs::read_to_string(repo_file("dockerfiles/kmm-module.Dockerfile")).expect("Dockerfile"),
        kernel: abi.clone(),
        module_name: "kforge_hello".into(),
        module_namespace: "vendor-ns".into(),
        build_args: vec![BuildArg { name: "RUNTIME_IMAGE".into(), value: runtime.clone() }],
        context: sources,
        sign: Some(SignSpec { key: "vendor".into(), ..Default::default() }),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let (image, messages) = rt.block_on(async {
        let mut client = BuilderClient::connect(format!("http://{addr}")).await.expect("connect");
        let dtk = client.resolve_dtk(ResolveDtkRequest { kernel: abi.clone() }).await.expect("ResolveDtk").into_inner();
        assert_eq!(dtk.source, "template");
        assert!(dtk.image.starts_with(&format!("{}/dtk@sha256:", registry.host())), "{dtk:?}");

        // No DTK for this kernel: refused before anything starts, naming the kernel.
        let nope = BuildRequest { kernel: "6.1.0-999-amd64".into(), ..request.clone() };
        let refused = client.build(nope).await.expect_err("no DTK");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("6.1.0-999-amd64") && refused.message().contains("template"), "{}", refused.message());

        let mut stream = client.build(request.clone()).await.expect("Build").into_inner();
        let mut messages = Vec::new();
        let mut last = None;
        while let Some(ev) = stream.message().await.expect("events") {
            match ev.event {
                Some(E::Log(l)) if l.step == "kforge" => messages.push(String::from_utf8_lossy(&l.data).into_owned()),
                Some(other @ (E::Done(_) | E::Failed(_))) => last = Some(other),
                _ => {}
            }
        }
        match last {
            Some(E::Done(d)) => (d.image, messages),
            other => panic!("build and sign failed: {other:?}\n{messages:?}"),
        }
    });
    assert!(image.starts_with(&format!("{}/vendor/kforge_hello@sha256:", registry.host())), "{image}");
    assert!(messages.iter().any(|m| m.contains("signed /opt/lib/modules/")), "{messages:?}");
    assert_eq!(registry.tags("vendor/kforge_hello"), vec![abi.clone()]);

    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("oci");
    skopeo_copy(&format!("docker://{image}"), &format!("oci:{}:img", layout.display()), &registry.skopeo_src_flags());
    let module = umoci_unpack(&layout, "img", &work.path().join("bundle")).join(format!("opt/lib/modules/{abi}/kforge_hello.ko"));
    ok(support::kforge().arg("verify").arg("--cert").arg(&keys.cert_der).arg(&module));
    let lines = std::fs::read_to_string(&audit).expect("audit log");
    assert!(lines.lines().any(|l| l.contains("\"signed\"") && l.contains("kforge_hello") && l.contains("vendor")), "audited: {lines}");
}

/// KMM's sign.unsignedImage: no BuildKit, the signed image pushed once, reused while the unsigned
/// tag stays put and re-signed when it moves.
#[test]
fn signs_an_unsigned_image_and_re_signs_when_its_tag_moves() {
    use support::oci::{Image, Item, file, write_image};
    let m = support::modules();
    let registry = Registry::start_plain();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "k", 2048);
    let base = format!("/opt/lib/modules/{}", m.abi);
    let push_unsigned = |layers: Vec<Vec<Item>>, name: &str| {
        let layout = dir.path().join(name);
        write_image(&layout, "v", &Image::oci(layers));
        skopeo_copy(&format!("oci:{}:v", layout.display()), &format!("docker://{}/unsigned:{}", registry.host(), m.abi), &registry.skopeo_dest_flags());
    };
    let hello = std::fs::read(&m.hello).expect("read");
    push_unsigned(vec![vec![Item::Dir(base.clone()), file(&format!("{base}/kforge_hello.ko"), hello.clone())]], "one");
    let sign = || {
        let mut cmd = support::kforge();
        cmd.args(["build-sign", "--kernel", &m.abi, "--unsigned-image", &format!("{}/unsigned:${{KERNEL_FULL_VERSION}}", registry.host())])
            .arg("--key")
            .arg(&keys.key)
            .arg("--cert")
            .arg(&keys.cert_der)
            .args(["--to", &format!("{}/signed:${{KERNEL_FULL_VERSION}}", registry.host()), "--progress", "plain"])
            .env("DOCKER_CONFIG", dir.path())
            .env("BUILDKIT_HOST", "unix:///nonexistent/buildkitd.sock")
            .stdin(Stdio::null());
        output(&mut cmd)
    };
    let first = sign();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let signed = text(&first.stdout).trim().to_string();
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("oci");
    skopeo_copy(&format!("docker://{signed}"), &format!("oci:{}:img", layout.display()), &registry.skopeo_src_flags());
    let rootfs = umoci_unpack(&layout, "img", &work.path().join("bundle"));
    ok(support::kforge().arg("verify").arg("--cert").arg(&keys.cert_der).arg(rootfs.join(format!("opt/lib/modules/{}/kforge_hello.ko", m.abi))));

    let again = sign();
    assert!(again.status.success() && text(&again.stderr).contains("same inputs"), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout).trim(), signed);

    // The unsigned tag moves (a module added): signed again.
    push_unsigned(
        vec![vec![
            Item::Dir(base.clone()),
            file(&format!("{base}/kforge_hello.ko"), hello),
            file(&format!("{base}/kforge_params.ko"), std::fs::read(&m.params).expect("read")),
        ]],
        "two",
    );
    let moved = sign();
    let stderr = text(&moved.stderr);
    assert!(moved.status.success() && stderr.contains("other inputs"), "{stderr}");
    assert!(stderr.contains("kforge_params.ko"), "the new module was signed: {stderr}");
    assert_ne!(text(&moved.stdout).trim(), signed);
    assert_eq!(registry.tags("signed"), vec![m.abi.clone()]);
}
