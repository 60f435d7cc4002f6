//! End to end: `kforge build` (and `kforge build-sign`'s build secrets, mounted as KMM mounts them)
//! and the Builder service against a real BuildKit and a real Debian
//! `docker-registry`. Each scenario runs three times, against a BuildKit started privately by the
//! test: the one inside Debian's Docker engine (`docker://`), and the pinned standalone buildkitd
//! built by tests/peers/build.sh (what runs in a cluster) over `unix://` and over `tcp://` with
//! mutual TLS. The module is built for the kernel ABI `linux-headers-amd64` depends on today, in a
//! Driver-Toolkit-like image made from Debian packages (cached between runs).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::buildkitd::{BuildKit, Kind};
use support::docker::Engine;
use support::registry::{Registry, skopeo_copy, umoci_unpack};
use support::{dtk, fails, kernel_abi, modinfo, ok, output, text};

/// The repository's KMM-style Dockerfile, built as a user would.
fn kmm_dockerfile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dockerfiles/kmm-module.Dockerfile")
}

fn module_sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/modules/kforge_hello")
}

/// `kforge build` against `buildkit` with a private, empty docker config (credentials only from
/// `--auth-file`).
fn kforge_build(buildkit: &BuildKit, home: &Path) -> Command {
    let mut cmd = support::kforge();
    cmd.arg("build").args(buildkit.args()).env("DOCKER_CONFIG", home).env_remove("BUILDKIT_HOST").stdin(Stdio::null());
    cmd
}

on_every_buildkit!(
    builds_a_kmm_module_image,
    secrets_reach_run_mounts_and_no_layer,
    kmm_secrets_reach_every_run_without_a_mount_flag,
    a_private_base_needs_the_session_credentials,
    build_errors_name_the_problem,
    cancelling_the_client_stops_the_build,
    the_deadline_stops_the_build
);

/// Copies an image out of the registry into an OCI layout and unpacks it; returns the rootfs.
fn unpack(registry: &Registry, reference: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    skopeo_copy(&format!("docker://{reference}"), &format!("oci:{}:img", layout.display()), &registry.skopeo_src_flags());
    umoci_unpack(&layout, "img", &dir.join("bundle"))
}

/// Every layer blob of an OCI layout, decompressed.
fn layer_contents(layout: &Path) -> Vec<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).expect("blobs dir").flatten() {
        let bytes = std::fs::read(entry.path()).expect("read blob");
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(bytes.as_slice()).read_to_end(&mut plain).expect("gunzip layer");
            out.push(plain);
        } else {
            out.push(bytes);
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `registry/repo@sha256:…` printed by `kforge build`, checked against what the registry holds.
fn pushed_digest(registry: &Registry, stdout: &str, repo: &str, tag: &str) -> String {
    let line = stdout.trim();
    let (name, digest) = line.rsplit_once('@').unwrap_or_else(|| panic!("kforge build printed no digest reference: {stdout}"));
    assert_eq!(name, format!("{}/{repo}", registry.host()));
    let (status, _) = registry.curl_get(&format!("/v2/{repo}/manifests/{digest}"));
    assert_eq!(status, 200, "{line} is not in the registry");
    let inspect = support::ok(
        Command::new("skopeo")
            .args(["inspect", "--format", "{{.Digest}}"])
            .args(registry.skopeo_flags())
            .arg(format!("docker://{}/{repo}:{tag}", registry.host())),
    );
    assert_eq!(inspect.trim(), digest, "the tag points at the printed digest");
    digest.to_string()
}

fn builds_a_kmm_module_image(kind: Kind) {
    let abi = kernel_abi();
    let registry = Registry::start_plain();
    let engine = BuildKit::start(kind, &[&registry]);
    let dtk = dtk::push_dtk(&registry, &abi, &format!("dtk:{abi}"));
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let home = tempfile::tempdir().expect("tempdir");
    let target = format!("{}/modules/kforge_hello:{abi}", registry.host());

    let build = |extra: &[&str]| {
        let mut cmd = kforge_build(&engine, home.path());
        cmd.arg("-f").arg(kmm_dockerfile()).arg("--context").arg(module_sources());
        for arg in [format!("DTK_AUTO={dtk}"), format!("RUNTIME_IMAGE={runtime}"), format!("KERNEL_FULL_VERSION={abi}"), "MOD_NAME=kforge_hello".into()] {
            cmd.arg("--build-arg").arg(arg);
        }
        cmd.args(["--progress", "plain", "--to", &target]).args(extra);
        output(&mut cmd)
    };

    let first = build(&[]);
    let (stdout, stderr) = (text(&first.stdout), text(&first.stderr));
    assert!(first.status.success(), "kforge build failed:\n{stderr}\nBuildKit log:\n{}", engine.log_tail(30));
    // Progress like buildctl --progress=plain, with the module's compiler output.
    assert!(stderr.contains("RUN make -C /usr/src/linux-headers-"), "{stderr}");
    assert!(stderr.contains("kforge_hello.ko"), "make's output reaches the progress: {stderr}");
    assert!(stderr.lines().any(|l| l.starts_with('#') && l.ends_with(" DONE") || l.contains(" DONE ")), "{stderr}");
    let digest = pushed_digest(&registry, &stdout, "modules/kforge_hello", &abi);

    // The module inside: KMM's layout, built for the headers' kernel, with modules.dep.
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = unpack(&registry, &target, work.path());
    let module = rootfs.join(format!("opt/lib/modules/{abi}/kforge_hello.ko"));
    assert!(module.is_file(), "no module at {}", module.display());
    let vermagic = modinfo(&module, "vermagic");
    assert!(vermagic.starts_with(&format!("{abi} ")), "vermagic {vermagic:?} is not for {abi}");
    let dep = std::fs::read_to_string(rootfs.join(format!("opt/lib/modules/{abi}/modules.dep"))).expect("modules.dep");
    assert!(dep.contains("kforge_hello.ko:"), "modules.dep: {dep}");
    // The build arguments reached the image (labels from ARGs).
    let config = ok(Command::new("skopeo").args(["inspect", "--config"]).args(registry.skopeo_flags()).arg(format!("docker://{target}")));
    assert!(config.contains(&format!("\"io.kforge.kernel\": \"{abi}\"")) && config.contains("\"io.kforge.module\": \"kforge_hello\""), "{config}");

    // The target exists: nothing is built, the same digest is printed.
    let again = build(&[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("not rebuilt"), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout).trim(), format!("{}/modules/kforge_hello@{digest}", registry.host()));
    assert!(!text(&again.stderr).contains("RUN make"), "no build happened: {}", text(&again.stderr));

    // --force builds again; every step comes from BuildKit's cache and the image is the same.
    let forced = build(&["--force"]);
    let forced_err = text(&forced.stderr);
    assert!(forced.status.success(), "{forced_err}");
    assert!(forced_err.contains("CACHED"), "{forced_err}");
    assert_eq!(pushed_digest(&registry, &text(&forced.stdout), "modules/kforge_hello", &abi), digest);
    assert_eq!(registry.tags("modules/kforge_hello"), vec![abi.clone()], "no other tag was pushed");
}

fn secrets_reach_run_mounts_and_no_layer(kind: Kind) {
    let registry = Registry::start_plain();
    let engine = BuildKit::start(kind, &[&registry]);
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let home = tempfile::tempdir().expect("tempdir");
    let secret_value = "kforge-test-secret-7f3a9c";
    let secret = home.path().join("token");
    std::fs::write(&secret, secret_value).expect("write secret");
    let dockerfile = home.path().join("Dockerfile");
    // The Dockerfile names the secret only by id; the step proves it saw the content by its hash.
    std::fs::write(
        &dockerfile,
        format!("FROM {runtime}\nRUN --mount=type=secret,id=token,required=true sha256sum /run/secrets/token | cut -d' ' -f1 > /secret-sha256\n"),
    )
    .expect("write Dockerfile");
    let target = format!("{}/secrets/test:1", registry.host());
    let mut cmd = kforge_build(&engine, home.path());
    cmd.arg("-f").arg(&dockerfile).arg("--secret").arg(format!("id=token,src={}", secret.display())).args(["--to", &target]);
    let out = output(&mut cmd);
    assert!(out.status.success(), "{}\nBuildKit log:\n{}", text(&out.stderr), engine.log_tail(30));
    assert!(!text(&out.stderr).contains(secret_value), "the secret is not printed");

    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = unpack(&registry, &target, work.path());
    use sha2::Digest;
    let want = hex(&sha2::Sha256::digest(secret_value.as_bytes()));
    assert_eq!(std::fs::read_to_string(rootfs.join("secret-sha256")).expect("secret-sha256").trim(), want, "the RUN step read the secret");
    assert!(!rootfs.join("run/secrets/token").exists(), "the secret file is not in the image");
    for layer in layer_contents(&work.path().join("oci")) {
        assert!(!contains(&layer, secret_value.as_bytes()), "a layer or config holds the secret");
    }

    // Without the secret the required mount fails and names the secret (secrets are not part
    // of BuildKit's cache key, hence --no-cache).
    let mut cmd = kforge_build(&engine, home.path());
    cmd.arg("-f").arg(&dockerfile).args(["--no-cache", "--to", &format!("{}/secrets/test:2", registry.host())]);
    let e = fails(&mut cmd);
    let error = e.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {e}"));
    assert!(error.contains("secret token"), "{error}");
}

/// A Dockerfile written for KMM names no `--mount`: `kforge build-sign` (KMM's path) mounts every
/// secret into every RUN of every stage at `/run/secrets/<secret>/<key>` (or `/run/secrets/<id>`);
/// a step that finds the wrong content fails the build; no secret reaches a layer.
fn kmm_secrets_reach_every_run_without_a_mount_flag(kind: Kind) {
    let registry = Registry::start_plain();
    let engine = BuildKit::start(kind, &[&registry]);
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let home = tempfile::tempdir().expect("tempdir");
    let (token_value, plain_value) = ("kforge-kmm-token-5be1d07a", "kforge-kmm-plain-93c4e2f8");
    let token = home.path().join("token");
    std::fs::write(&token, token_value).expect("write secret");
    let plain = home.path().join("plain");
    std::fs::write(&plain, plain_value).expect("write secret");
    let dockerfile = home.path().join("Dockerfile");
    use sha2::Digest;
    let token_sha256 = hex(&sha2::Sha256::digest(token_value.as_bytes()));
    // The first RUN checks the token by its hash (the Dockerfile lands in the image's history, so
    // it holds no secret). No heredoc: Debian's Docker engine (20.10) has no heredocs without a
    // `# syntax=` frontend image; the unit tests cover them.
    std::fs::write(
        &dockerfile,
        format!(
            "FROM {runtime} AS build\n\
             RUN test \"$(sha256sum /run/secrets/mysecret/token | cut -d' ' -f1)\" = \"{token_sha256}\" || exit 42; \\\n\
             \x20   sha256sum /run/secrets/mysecret/token | cut -d' ' -f1 > /token-sha256\n\
             # a comment line\n\
             RUN test -s /run/secrets/plain && \\\n\
             \x20   wc -c < /run/secrets/plain > /plain-length\n\
             FROM {runtime}\n\
             COPY --from=build /token-sha256 /plain-length /opt/\n\
             run test -s /run/secrets/mysecret/token && test -s /run/secrets/plain && echo the final stage sees both > /opt/seen\n"
        ),
    )
    .expect("write Dockerfile");
    let build_sign = |tag: &str, token: &Path, extra: &[&str]| {
        let mut cmd = support::kforge();
        cmd.arg("build-sign")
            .args(engine.args())
            .args(["--kernel", "6.1.0-1-amd64", "--module-name", "kforge_hello", "--progress", "plain"])
            .arg("-f")
            .arg(&dockerfile)
            .arg("--secret")
            .arg(format!("id=mysecret/token,src={}", token.display()))
            .arg("--secret")
            .arg(format!("id=plain,src={}", plain.display()))
            .args(["--to", &format!("{}/kmm-secrets/test:{tag}", registry.host())])
            .args(extra)
            .env("DOCKER_CONFIG", home.path())
            .env_remove("BUILDKIT_HOST")
            .stdin(Stdio::null());
        cmd
    };

    // A secret with other content: the step's own check fails the build (secrets are not part of
    // BuildKit's cache key, hence --no-cache).
    let wrong = home.path().join("wrong");
    std::fs::write(&wrong, "not-the-token").expect("write");
    let e = fails(&mut build_sign("wrong", &wrong, &["--no-cache"]));
    let error = e.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {e}"));
    assert!(error.contains("exit code: 42"), "{error}");
    assert!(registry.tags("kmm-secrets/test").is_empty(), "nothing pushed");

    let out = output(&mut build_sign("1", &token, &[]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}\nBuildKit log:\n{}", engine.log_tail(30));
    assert!(!stderr.contains(token_value) && !stderr.contains(plain_value), "the secrets are not printed");
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = unpack(&registry, &format!("{}/kmm-secrets/test:1", registry.host()), work.path());
    let read = |rel: &str| std::fs::read_to_string(rootfs.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(read("opt/token-sha256").trim(), token_sha256, "the first stage read <secret>/<key>");
    assert_eq!(read("opt/plain-length").trim(), plain_value.len().to_string(), "the second RUN read the plain id");
    assert_eq!(read("opt/seen").trim(), "the final stage sees both");
    // No secret file in the image. BuildKit may leave the mount points' parent directories
    // (`/run/secrets/mysecret/`), empty.
    let mut left = vec![rootfs.join("run/secrets")];
    while let Some(path) = left.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        assert!(meta.is_dir(), "{} is in the image", path.display());
        left.extend(std::fs::read_dir(&path).expect("read dir").flatten().map(|e| e.path()));
    }
    for layer in layer_contents(&work.path().join("oci")) {
        assert!(!contains(&layer, token_value.as_bytes()) && !contains(&layer, plain_value.as_bytes()), "a layer or config holds a secret");
    }
}

fn a_private_base_needs_the_session_credentials(kind: Kind) {
    let (user, password) = ("builder", "b1-pass");
    let registry = Registry::start_tls_basic_auth(user, password);
    let engine = BuildKit::start(kind, &[&registry]);
    let runtime = dtk::push_runtime(&registry, "private/kmod:bookworm");
    let home = tempfile::tempdir().expect("tempdir");
    let dockerfile = home.path().join("Dockerfile");
    std::fs::write(&dockerfile, format!("FROM {runtime}\nRUN echo built > /marker\n")).expect("write Dockerfile");
    let target = format!("{}/private/out:1", registry.host());

    // No credentials: the pull is refused, and the error names the base and its registry.
    let mut cmd = kforge_build(&engine, home.path());
    cmd.arg("-f").arg(&dockerfile).args(["--to", &target]);
    let e = fails(&mut cmd);
    assert!(e.contains(&format!("base image {runtime}")) || e.contains(&runtime), "{e}");
    assert!(e.contains(registry.host()), "{e}");
    assert!(registry.tags("private/out").is_empty(), "nothing was pushed");

    // With them (served through the session, and given to the engine's push): built and pushed.
    let auth = registry.auth_file(user, password);
    let mut cmd = kforge_build(&engine, home.path());
    cmd.arg("-f").arg(&dockerfile).arg("--auth-file").arg(&auth).args(["--to", &target]);
    let out = output(&mut cmd);
    assert!(out.status.success(), "{}\nBuildKit log:\n{}", text(&out.stderr), engine.log_tail(30));
    pushed_digest(&registry, &text(&out.stdout), "private/out", "1");
    // The engine's own CLI holds no credentials: they came with the request.
    if let Some(engine) = engine.engine() {
        assert!(!engine.cli_config().join("config.json").exists());
    }
}

fn build_errors_name_the_problem(kind: Kind) {
    let registry = Registry::start_plain();
    let engine = BuildKit::start(kind, &[&registry]);
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let home = tempfile::tempdir().expect("tempdir");
    let run = |dockerfile: &str, tag: &str| {
        let path = home.path().join(format!("Dockerfile.{tag}"));
        std::fs::write(&path, dockerfile).expect("write Dockerfile");
        let mut cmd = kforge_build(&engine, home.path());
        cmd.arg("-f").arg(&path).args(["--to", &format!("{}/errors/x:{tag}", registry.host())]);
        fails(&mut cmd)
    };

    let e = run(&format!("FROM {runtime}\nRUN true\nFORM x\n"), "typo");
    assert!(e.contains("Dockerfile error") && e.contains("line 3") && e.contains("FORM"), "{e}");

    let e = run(&format!("FROM {runtime}\nRUN echo compiling; for i in 1 2 3; do echo line-$i; done; echo 'error: no rule' >&2; exit 2\n"), "run");
    assert!(e.contains("step [2/2] RUN echo compiling"), "the failing step is named: {e}");
    assert!(e.contains("exit code: 2"), "{e}");
    assert!(e.contains("| line-3") && e.contains("| error: no rule"), "the last log lines are shown: {e}");

    let missing = format!("{}/nope/base:1", registry.host());
    let e = run(&format!("FROM {missing}\nRUN true\n"), "base");
    assert!(e.contains(&format!("base image {missing}")) && e.contains("cannot be pulled"), "{e}");

    assert!(registry.tags("errors/x").is_empty(), "no failed build pushed anything");

    // A registry that refuses the push (nothing listens there): the build succeeds, the push fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let mut cmd = kforge_build(&engine, home.path());
    cmd.arg("-f").arg(home.path().join("Dockerfile.run")).args(["--to", &format!("{closed}/errors/x:push")]);
    std::fs::write(home.path().join("Dockerfile.run"), format!("FROM {runtime}\nRUN true\n")).expect("write Dockerfile");
    let e = fails(&mut cmd);
    let error = e.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {e}"));
    // The engine pushes after the build, buildkitd's exporter during it: both name the target.
    assert!(error.contains(&format!("{closed}/errors/x:push")) && (error.contains("push of") || error.contains("refused the push")), "{error}");

    // A BuildKit that is not there.
    let gone = home.path().join("absent.sock");
    let scheme = if kind == Kind::DockerEngine { "docker" } else { "unix" };
    let mut cmd = support::kforge();
    cmd.args(["build", "--buildkit", &format!("{scheme}://{}", gone.display())]).env("DOCKER_CONFIG", home.path()).env_remove("BUILDKIT_HOST");
    cmd.arg("-f").arg(home.path().join("Dockerfile.typo")).args(["--to", &format!("{}/errors/x:gone", registry.host())]);
    let e = fails(&mut cmd);
    assert!(e.contains("unreachable") && e.contains(&gone.display().to_string()), "{e}");
}

/// A Dockerfile whose step runs until it is stopped, and the command line of that step's process,
/// unique to this call so that the test can find it among every process of the machine.
fn endless_step(runtime: &str) -> (String, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seconds = format!(
        "{}.{:06}{n}",
        86_400 + std::process::id() % 10_000,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_micros()).unwrap_or(0)
    );
    (format!("FROM {runtime}\nRUN echo started; exec sleep {seconds}\n"), format!("sleep {seconds}"))
}

/// The pids of the machine's processes whose command line is `cmdline`.
fn processes(cmdline: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmdline))
        .collect()
}

/// Waits up to `limit` for `done`; false if it never became true.
fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    done()
}

fn cancelling_the_client_stops_the_build(kind: Kind) {
    let registry = Registry::start_plain();
    let buildkit = BuildKit::start(kind, &[&registry]);
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let home = tempfile::tempdir().expect("tempdir");
    let (dockerfile, step) = endless_step(&runtime);
    let path = home.path().join("Dockerfile");
    std::fs::write(&path, dockerfile).expect("write Dockerfile");
    let mut cmd = kforge_build(&buildkit, home.path());
    cmd.arg("-f").arg(&path).args(["--progress", "plain", "--to", &format!("{}/cancel/x:1", registry.host())]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start kforge build");
    let running = wait_for(std::time::Duration::from_secs(120), || !processes(&step).is_empty());
    if !running {
        let _ = child.kill();
        panic!("the step `{step}` never ran; BuildKit log:\n{}", buildkit.log_tail(30));
    }

    // Ctrl-C on the client: the solve is cancelled and the step's process goes away.
    support::docker::signal("INT", child.id());
    let exited = wait_for(std::time::Duration::from_secs(30), || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for kforge build");
    assert!(exited, "kforge build did not exit within 30 s of SIGINT");
    assert!(!status.success(), "an interrupted build does not succeed");
    assert!(
        wait_for(std::time::Duration::from_secs(30), || processes(&step).is_empty()),
        "BuildKit still runs `{step}` 30 s after the client went away (pids {:?}); log:\n{}",
        processes(&step),
        buildkit.log_tail(30)
    );
    assert!(registry.tags("cancel/x").is_empty(), "a cancelled build pushed nothing");
}

fn the_deadline_stops_the_build(kind: Kind) {
    let registry = Registry::start_plain();
    let buildkit = BuildKit::start(kind, &[&registry]);
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let home = tempfile::tempdir().expect("tempdir");
    let (dockerfile, step) = endless_step(&runtime);
    let path = home.path().join("Dockerfile");
    std::fs::write(&path, dockerfile).expect("write Dockerfile");
    let mut cmd = kforge_build(&buildkit, home.path());
    cmd.arg("-f").arg(&path).args(["--deadline", "20", "--to", &format!("{}/deadline/x:1", registry.host())]).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start kforge build");
    let ran = wait_for(std::time::Duration::from_secs(20), || !processes(&step).is_empty());
    let exited = wait_for(std::time::Duration::from_secs(60), || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait for kforge build");
    let e = text(&out.stderr);
    assert!(ran, "the step `{step}` never ran before the deadline: {e}");
    assert!(exited, "kforge build did not stop within 40 s after its deadline: {e}");
    assert!(!out.status.success(), "{e}");
    let error = e.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {e}"));
    assert!(error.contains("did not finish within 20 s") && error.contains("cancelled"), "{error}");
    assert!(
        wait_for(std::time::Duration::from_secs(30), || processes(&step).is_empty()),
        "BuildKit still runs `{step}` after the deadline (pids {:?}); log:\n{}",
        processes(&step),
        buildkit.log_tail(30)
    );
    assert!(registry.tags("deadline/x").is_empty(), "a build past its deadline pushed nothing");
}

/// `kforge serve` running the Builder service against the engine, for gRPC callers.
struct Service {
    child: std::process::Child,
    addr: String,
}

impl Service {
    fn start(buildkit: &str, data: &Path) -> Service {
        use std::io::BufRead;
        let mut child = support::kforge()
            .args(["serve", "--listen", "127.0.0.1:0", "--buildkit", buildkit])
            .arg("--data-dir")
            .arg(data)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .env("DOCKER_CONFIG", data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kforge serve");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let addr =
            first.strip_prefix("kforge serves the signer and the builder on ").unwrap_or_else(|| panic!("kforge serve did not start: {first}")).to_string();
        let _metrics = lines.next();
        let builder_line = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(builder_line.contains(buildkit), "{builder_line}");
        Service { child, addr }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

#[test]
fn the_builder_service_builds_and_shares_identical_requests() {
    use kforge_proto::builder::v1::{BuildArg, BuildRequest, ContextFile, ImageRequest, RegistryTls, build_event::Event as E, builder_client::BuilderClient};

    let abi = kernel_abi();
    let engine = Engine::start();
    let registry = Registry::start_plain();
    let dtk = dtk::push_dtk(&registry, &abi, &format!("dtk:{abi}"));
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let data = tempfile::tempdir().expect("tempdir");
    let service = Service::start(&engine.url(), data.path());
    let target = format!("{}/service/kforge_hello:{abi}", registry.host());
    let context = std::fs::read_dir(module_sources())
        .expect("module sources")
        .flatten()
        .map(|e| ContextFile { path: e.file_name().to_string_lossy().into_owned(), mode: 0o644, data: std::fs::read(e.path()).expect("read source").into() })
        .collect::<Vec<_>>();
    let request = BuildRequest {
        image: target.clone(),
        dockerfile: std::fs::read_to_string(kmm_dockerfile()).expect("Dockerfile"),
        // KMM's arguments come from kernel, module name and namespace.
        kernel: abi.clone(),
        module_name: "kforge_hello".into(),
        module_namespace: "kmm-test".into(),
        build_args: vec![BuildArg { name: "DTK_AUTO".into(), value: dtk.clone() }, BuildArg { name: "RUNTIME_IMAGE".into(), value: runtime.clone() }],
        context,
        ..Default::default()
    };

    let runtime_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    runtime_rt.block_on(async {
        let url = format!("http://{}", service.addr);
        let client = BuilderClient::connect(url).await.expect("connect to kforge serve");

        let image_request =
            ImageRequest { image: target.clone(), registry_tls: Some(RegistryTls { insecure: true, ..Default::default() }), ..Default::default() };
        let exists = client.clone().image_exists(image_request.clone()).await.expect("ImageExists").into_inner().exists;
        assert!(!exists, "nothing is there yet");

        // Two identical requests at once: one solve, both get the image, one says it joined.
        let run = |mut c: BuilderClient<tonic::transport::Channel>, r: BuildRequest| async move {
            let mut stream = c.build(r).await.expect("Build").into_inner();
            let mut steps = Vec::new();
            let mut last = None;
            while let Some(ev) = stream.message().await.expect("event stream") {
                match ev.event {
                    Some(E::Step(s)) => steps.push(s.name),
                    Some(other) => last = Some(other),
                    None => {}
                }
            }
            (steps, last)
        };
        let (a, b) = tokio::join!(run(client.clone(), request.clone()), run(client.clone(), request.clone()));
        let (Some(E::Done(da)), Some(E::Done(db))) = (&a.1, &b.1) else { panic!("both builds finish: {:?} / {:?}", a.1, b.1) };
        assert_eq!(da.image, db.image);
        assert!(da.joined != db.joined, "exactly one request joined the other's build: {da:?} {db:?}");
        assert!(a.0.iter().any(|s| s.contains("RUN make")) && b.0.iter().any(|s| s.contains("RUN make")), "both saw the steps");
        assert!(da.image.starts_with(&format!("{}/service/kforge_hello@sha256:", registry.host())), "{da:?}");
        assert!(!da.skipped);

        let exists = client.clone().image_exists(image_request).await.expect("ImageExists").into_inner().exists;
        assert!(exists);
        // Asked again: the target exists, nothing is built.
        let (_, last) = run(client.clone(), request.clone()).await;
        assert!(matches!(&last, Some(E::Done(d)) if d.skipped && d.image == da.image), "{last:?}");

        // A bad request is refused before anything runs.
        let bad = BuildRequest { image: "not a reference".into(), ..request.clone() };
        let mut c = client.clone();
        let refused = c.build(bad).await.expect_err("invalid target");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    });

    // The module is right (built once, for the headers' kernel).
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = unpack(&registry, &target, work.path());
    let vermagic = modinfo(&rootfs.join(format!("opt/lib/modules/{abi}/kforge_hello.ko")), "vermagic");
    assert!(vermagic.starts_with(&format!("{abi} ")), "{vermagic}");
}

/// `buildctl` as an oracle: the same Dockerfile, context and build arguments built by `buildctl
/// build` and by `kforge build` on the same buildkitd give the same layers (diff_ids) and the same
/// image configuration, apart from the creation times BuildKit stamps.
#[test]
#[cfg_attr(kforge_no_buildkitd, ignore = "buildkitd is not built: run tests/peers/build.sh (tests/run.sh does)")]
fn buildctl_and_kforge_build_the_same_image() {
    let abi = kernel_abi();
    let registry = Registry::start_plain();
    let buildkit = BuildKit::start(Kind::Unix, &[&registry]);
    let daemon = buildkit.daemon().expect("a buildkitd");
    let dtk = dtk::push_dtk(&registry, &abi, &format!("dtk:{abi}"));
    let runtime = dtk::push_runtime(&registry, "kmod:bookworm");
    let work = tempfile::tempdir().expect("tempdir");
    // buildctl sends the context's files as they are on disk; kforge sends them with the Unix epoch
    // as their time, mode 0644 and owner root: give the files on disk the same.
    let context = work.path().join("context");
    std::fs::create_dir(&context).expect("mkdir context");
    for entry in std::fs::read_dir(module_sources()).expect("module sources").flatten() {
        let to = context.join(entry.file_name());
        std::fs::copy(entry.path(), &to).expect("copy source");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        ok(Command::new("touch").args(["-h", "-d", "@0"]).arg(&to));
    }
    let args = [format!("DTK_AUTO={dtk}"), format!("RUNTIME_IMAGE={runtime}"), format!("KERNEL_FULL_VERSION={abi}"), "MOD_NAME=kforge_hello".to_string()];

    let by_buildctl = format!("{}/oracle/buildctl:1", registry.host());
    let mut buildctl = daemon.buildctl();
    buildctl.args(["build", "--frontend", "dockerfile.v0", "--progress", "plain"]);
    buildctl.arg("--local").arg(format!("context={}", context.display()));
    buildctl.arg("--local").arg(format!("dockerfile={}", kmm_dockerfile().parent().expect("dockerfiles dir").display()));
    buildctl.args(["--opt", "filename=kmm-module.Dockerfile", "--opt", "force-network-mode=none"]);
    for a in &args {
        buildctl.args(["--opt", &format!("build-arg:{a}")]);
    }
    buildctl.args(["--output", &format!("type=image,name={by_buildctl},push=true")]);
    let out = output(&mut buildctl);
    assert!(out.status.success(), "buildctl build failed:\n{}", text(&out.stderr));

    let by_kforge = format!("{}/oracle/kforge:1", registry.host());
    let mut cmd = kforge_build(&buildkit, work.path());
    cmd.arg("-f").arg(kmm_dockerfile()).arg("--context").arg(&context);
    for a in &args {
        cmd.arg("--build-arg").arg(a);
    }
    ok(cmd.args(["--to", &by_kforge]));

    let config = |image: &str| -> serde_json::Value {
        let raw = ok(Command::new("skopeo").args(["inspect", "--config", "--raw"]).args(registry.skopeo_flags()).arg(format!("docker://{image}")));
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("the config of {image} is not JSON ({e}): {raw}"))
    };
    let without_times = |mut c: serde_json::Value| {
        if let Some(o) = c.as_object_mut() {
            o.remove("created");
        }
        for h in c["history"].as_array_mut().into_iter().flatten() {
            if let Some(o) = h.as_object_mut() {
                o.remove("created");
            }
        }
        c
    };
    let (a, mut b) = (config(&by_buildctl), config(&by_kforge));
    let diff_ids = |c: &serde_json::Value| c["rootfs"]["diff_ids"].as_array().cloned().unwrap_or_default();
    assert!(diff_ids(&a).len() >= 3, "the runtime's layer, the module and depmod's files: {a}");
    assert_eq!(diff_ids(&b), diff_ids(&a), "the same layers");
    // kforge records what the image was built from (its reuse rule); buildctl does not.
    let labels = b["config"]["Labels"].as_object_mut().expect("kforge's image has labels");
    let hash = labels.remove("io.kforge.inputs-hash").expect("the inputs hash label");
    assert!(hash.as_str().is_some_and(|h| h.starts_with("sha256:")), "{hash}");
    if labels.is_empty() && a["config"].get("Labels").is_none_or(serde_json::Value::is_null) {
        b["config"].as_object_mut().expect("config").remove("Labels");
    }
    assert_eq!(without_times(b), without_times(a), "the same configuration apart from times and the inputs hash");
}
