//! `kforge sign-image` end to end: images made by the tests' own OCI writer and by umoci, real
//! Debian registries (plain, and TLS with basic auth), results checked with skopeo, umoci,
//! `kforge verify`, `openssl cms -verify` and `modinfo`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::oci::{self, Image, Item, file};
use support::registry::{self, Registry};
use support::*;

struct Fx {
    dir: tempfile::TempDir,
    keys: Keys,
    hello: Vec<u8>,
    params: Vec<u8>,
    abi: String,
}

fn fx() -> Fx {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "img", 2048);
    Fx { keys, hello: std::fs::read(&m.hello).expect("read"), params: std::fs::read(&m.params).expect("read"), abi: m.abi.clone(), dir }
}

impl Fx {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mods(&self, rest: &str) -> String {
        format!("/opt/lib/modules/{}/{rest}", self.abi)
    }

    fn sign_image(&self, from: &str, to: &str) -> Command {
        let mut c = kforge();
        c.env("KFORGE_PROGRESS", "1")
            .args(["sign-image", "--key"])
            .arg(&self.keys.key)
            .arg("--cert")
            .arg(&self.keys.cert_der)
            .args(["--from", from, "--to", to]);
        c
    }

    /// What sign-file makes of `module` bytes.
    fn expected(&self, module: &[u8]) -> Vec<u8> {
        let path = self.p(&format!("expect-{}.ko", oci::sha256(module)[7..19].to_owned()));
        std::fs::write(&path, module).expect("write");
        sign_file(self.dir.path(), &path, "sha256", &self.keys.key, &self.keys.cert_der, false)
    }

    fn xz(&self, module: &[u8]) -> Vec<u8> {
        let path = self.p("tmp-module.ko");
        std::fs::write(&path, module).expect("write");
        ok(Command::new("xz").args(["--check=crc32", "--lzma2=dict=1MiB", "-f", "-k"]).arg(&path));
        std::fs::read(self.p("tmp-module.ko.xz")).expect("read")
    }

    /// Unpacks a layout tag with umoci and returns the rootfs.
    fn unpack(&self, layout: &Path, tag: &str) -> PathBuf {
        let bundle = self.p(&format!("bundle-{}-{tag}", layout.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
        registry::umoci_unpack(layout, tag, &bundle)
    }

    /// Checks a signed module in an unpacked rootfs with sign-file's bytes, kforge verify,
    /// openssl cms -verify and modinfo.
    fn check_signed(&self, rootfs: &Path, image_path: &str, original: &[u8]) {
        let path = rootfs.join(image_path.trim_start_matches('/'));
        let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{image_path} missing from the signed image: {e}"));
        assert!(got == self.expected(original), "{image_path}: not what sign-file makes of the original");
        assert!(openssl_cms_verify(self.dir.path(), &got, &self.keys.cert_pem), "{image_path}: openssl cms -verify");
        assert_eq!(modinfo(&path, "signer"), "kforge test img", "{image_path}");
    }
}

fn stack(fx: &Fx) -> Image {
    Image::oci(vec![
        vec![
            Item::Dir(fx.mods("extra")),
            file(&fx.mods("extra/kforge_hello.ko"), fx.hello.clone()),
            file(&fx.mods("extra/kforge_params.ko"), fx.hello.clone()),
            file(&fx.mods("extra/gone.ko"), fx.hello.clone()),
            file(&fx.mods("modules.dep"), b"extra/kforge_hello.ko:\n".to_vec()),
            file("/etc/hostname", b"module-loader\n".to_vec()),
        ],
        vec![
            // Replaced in an upper layer, deleted by a whiteout, added compressed, linked.
            file(&fx.mods("extra/kforge_params.ko"), fx.params.clone()),
            Item::Whiteout(fx.mods("extra/gone.ko")),
            file(&fx.mods("extra/xz/kforge_hello.ko.xz"), fx.xz(&fx.hello)),
            Item::Symlink { path: fx.mods("extra/alias.ko"), target: "kforge_hello.ko".into() },
        ],
    ])
}

fn new_layer_names(layout: &Path, manifest: &serde_json::Value) -> Vec<String> {
    let last = manifest["layers"].as_array().and_then(|l| l.last()).expect("layers");
    let blob = layout.join("blobs/sha256").join(&last["digest"].as_str().expect("digest")[7..]);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(blob).expect("open layer")));
    archive.entries().expect("tar").map(|e| e.expect("entry").path().expect("path").display().to_string()).collect()
}

#[test]
fn layout_to_layout_resolves_the_layer_stack_and_appends_exactly_the_signed_files() {
    let fx = fx();
    let (src, dst) = (fx.p("src"), fx.p("dst"));
    oci::write_image(&src, "v1", &stack(&fx));
    let out = ok(&mut fx.sign_image(&format!("oci:{}:v1", src.display()), &format!("oci:{}:signed", dst.display())));
    let digest = out.trim().to_string();
    assert_eq!(oci::tag_digest(&dst, "signed").as_deref(), Some(digest.as_str()), "stdout is the pushed digest");

    let before = oci::manifest(&src, "v1");
    let after = oci::manifest(&dst, "signed");
    let (old, new) = (before["layers"].as_array().expect("layers"), after["layers"].as_array().expect("layers"));
    assert_eq!(new.len(), old.len() + 1);
    assert_eq!(&new[..old.len()], &old[..], "original layers are reused unchanged");
    assert_eq!(after["annotations"], before["annotations"]);
    let config = oci::blob_json(&dst, after["config"]["digest"].as_str().expect("digest"));
    assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(3));
    assert_eq!(config["history"].as_array().and_then(|h| h.last()).map(|h| h["created_by"].clone()), Some("kforge sign-image".into()));
    assert_eq!(config["config"]["Labels"]["made-by"], "kforge tests", "the rest of the config is kept");

    let mut names = new_layer_names(&dst, &after);
    names.sort();
    let m = |p: &str| fx.mods(p).trim_start_matches('/').to_string();
    assert_eq!(names, [m("extra/kforge_hello.ko"), m("extra/kforge_params.ko"), m("extra/xz/kforge_hello.ko.xz")], "exactly the signed files");

    let rootfs = fx.unpack(&dst, "signed");
    fx.check_signed(&rootfs, &fx.mods("extra/kforge_hello.ko"), &fx.hello);
    fx.check_signed(&rootfs, &fx.mods("extra/kforge_params.ko"), &fx.params);
    assert!(!rootfs.join(m("extra/gone.ko")).exists(), "a whiteout-deleted module must stay deleted");
    assert_eq!(std::fs::read(rootfs.join(m("modules.dep"))).expect("read"), b"extra/kforge_hello.ko:\n");
    let xz = output(Command::new("xz").args(["-d", "-c"]).arg(rootfs.join(m("extra/xz/kforge_hello.ko.xz"))));
    assert!(xz.status.success() && xz.stdout == fx.expected(&fx.hello), "the .ko.xz holds the signed module");
    let verify = ok(kforge().args(["verify", "-q", "--cert"]).arg(&fx.keys.cert_pem).arg(rootfs.join("opt/lib/modules")));
    assert!(verify.contains("3 verified, 0 failed"), "{verify}");

    // Same input, same key: same digest.
    let again = ok(&mut fx.sign_image(&format!("oci:{}:v1", src.display()), &format!("oci:{}:again", dst.display())));
    assert_eq!(again.trim(), digest, "signing is deterministic");
}

#[test]
fn plain_registry_round_trip_mounts_blobs_and_leaves_only_the_target_tag() {
    let fx = fx();
    let reg = Registry::start_plain();
    let src = fx.p("src");
    oci::write_image(&src, "v1", &stack(&fx));
    // Pushed as a Docker v2 schema 2 image: the signed image must stay in that family.
    let mut flags = reg.skopeo_dest_flags();
    flags.extend(["--format".to_string(), "v2s2".to_string()]);
    registry::skopeo_copy(&format!("oci:{}:v1", src.display()), &format!("docker://{}/mods/src:v1", reg.host()), &flags);

    let from = format!("{}/mods/src:v1", reg.host());
    let to = format!("{}/mods/signed:{}", reg.host(), fx.abi);
    let out = output(fx.sign_image(&from, &to).arg("--insecure").arg("--digest-file").arg(fx.p("digest")));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("mounted"), "layers of the source repository are mounted, not copied:\n{stderr}");
    let digest = stdout.trim();
    assert_eq!(std::fs::read_to_string(fx.p("digest")).expect("digest file").trim(), digest);

    let raw = registry::skopeo_raw_manifest(&format!("docker://{to}"), &reg.skopeo_flags());
    assert_eq!(oci::sha256(&raw), digest, "the tag points at the digest kforge printed");
    let manifest: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    assert_eq!(manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(manifest["layers"][2]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
    assert_eq!(reg.tags("mods/signed"), std::slice::from_ref(&fx.abi), "no intermediate or unsigned tag");
    assert_eq!(reg.tags("mods/src"), ["v1"]);

    let out_layout = fx.p("pulled");
    registry::skopeo_copy(&format!("docker://{to}"), &format!("oci:{}:signed", out_layout.display()), &reg.skopeo_src_flags());
    let rootfs = fx.unpack(&out_layout, "signed");
    fx.check_signed(&rootfs, &fx.mods("extra/kforge_params.ko"), &fx.params);
    fx.check_signed(&rootfs, &fx.mods("extra/kforge_hello.ko"), &fx.hello);

    // Into the source repository itself: every original blob is already there. Plain HTTP for
    // just this registry works as well as for all.
    let out = output(fx.sign_image(&from, &format!("{}/mods/src:signed", reg.host())).args(["--insecure-registry", reg.host()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("present"), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), digest, "same image, same key: same digest in any repository");
}

#[test]
fn a_loopback_registry_is_plain_http_without_insecure() {
    let fx = fx();
    let reg = Registry::start_plain();
    let src = fx.p("src");
    oci::write_image(&src, "v1", &stack(&fx));
    registry::skopeo_copy(&format!("oci:{}:v1", src.display()), &format!("docker://{}/mods/src:v1", reg.host()), &reg.skopeo_dest_flags());

    // 127.0.0.1:PORT with no TLS flag at all: plain HTTP at once, as `kforge build` does, with no
    // HTTPS attempt retried first.
    let from = format!("{}/mods/src:v1", reg.host());
    let to = format!("{}/mods/signed:{}", reg.host(), fx.abi);
    let out = output(&mut fx.sign_image(&from, &to));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("retrying"), "no HTTPS attempt is retried:\n{stderr}");
    let digest = stdout.trim();

    let raw = registry::skopeo_raw_manifest(&format!("docker://{to}"), &reg.skopeo_flags());
    assert_eq!(oci::sha256(&raw), digest, "the tag points at the digest kforge printed");
    assert_eq!(reg.tags("mods/signed"), std::slice::from_ref(&fx.abi));
    let pulled = fx.p("pulled");
    registry::skopeo_copy(&format!("docker://{to}"), &format!("oci:{}:signed", pulled.display()), &reg.skopeo_src_flags());
    let rootfs = fx.unpack(&pulled, "signed");
    fx.check_signed(&rootfs, &fx.mods("extra/kforge_params.ko"), &fx.params);
    fx.check_signed(&rootfs, &fx.mods("extra/kforge_hello.ko"), &fx.hello);

    // The same registry named `localhost:PORT` is on this machine as well.
    let port = reg.host().rsplit_once(':').map(|(_, p)| p.to_string()).expect("port");
    let out = output(&mut fx.sign_image(&format!("localhost:{port}/mods/src:v1"), &format!("localhost:{port}/mods/signed:localhost")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), digest, "same image, same key: same digest");

    // A CA bundle asks for HTTPS: the plain-HTTP answer is reported at once, not retried.
    let out = output(fx.sign_image(&from, &format!("{}/mods/signed:https", reg.host())).arg("--registry-ca").arg(&fx.keys.cert_pem));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("answered plain HTTP") && stderr.contains("--insecure") && stderr.contains(reg.host()), "{stderr}");
    assert!(!stderr.contains("retrying"), "a plain-HTTP answer is not retried:\n{stderr}");
}

#[test]
fn tls_registry_with_basic_auth_and_a_wrong_password_pushes_nothing() {
    let fx = fx();
    let reg = Registry::start_tls_basic_auth("builder", "s3cret:pw");
    let src = fx.p("src");
    oci::write_image(&src, "v1", &stack(&fx));
    registry::skopeo_copy(&format!("oci:{}:v1", src.display()), &format!("docker://{}/mods/src:v1", reg.host()), &reg.skopeo_dest_flags());
    let ca = reg.ca_pem().expect("ca").to_path_buf();
    let from = format!("{}/mods/src:v1", reg.host());

    let bad = reg.auth_file("builder", "wrong");
    let out = fails(fx.sign_image(&from, &format!("{}/mods/signed:v1", reg.host())).arg("--registry-ca").arg(&ca).arg("--auth-file").arg(&bad));
    assert!(out.contains("authentication failed") || out.contains("401") || out.contains("nauthorized"), "{out}");
    assert!(reg.tags("mods/signed").is_empty(), "nothing pushed");

    // With no TLS setting a registry on this machine is plain HTTP: the HTTPS answer is named, with
    // the flags that reach it over TLS.
    let out = fails(fx.sign_image(&from, &format!("{}/mods/signed:v1", reg.host())).arg("--auth-file").arg(reg.auth_file("builder", "s3cret:pw")));
    assert!(out.contains(&reg.host().to_string()) && out.contains("speaks HTTPS") && out.contains("--registry-ca"), "{out}");
    // Over HTTPS certificates are checked: a CA that did not sign the registry's certificate is refused.
    let out = fails(
        fx.sign_image(&from, &format!("{}/mods/signed:v1", reg.host()))
            .arg("--registry-ca")
            .arg(&fx.keys.cert_pem)
            .arg("--auth-file")
            .arg(reg.auth_file("builder", "s3cret:pw")),
    );
    assert!(out.contains(&reg.host().to_string()) && out.contains("certificate"), "an untrusted certificate names the registry: {out}");

    let good = reg.auth_file("builder", "s3cret:pw");
    let out = output(fx.sign_image(&from, &format!("{}/mods/signed:v1", reg.host())).arg("--registry-ca").arg(&ca).arg("--auth-file").arg(&good));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pulled = fx.p("pulled");
    registry::skopeo_copy(&format!("docker://{}/mods/signed:v1", reg.host()), &format!("oci:{}:v1", pulled.display()), &reg.skopeo_src_flags());
    let rootfs = fx.unpack(&pulled, "v1");
    fx.check_signed(&rootfs, &fx.mods("extra/kforge_params.ko"), &fx.params);
}

#[test]
fn a_two_platform_index_is_signed_per_platform_and_keeps_platforms_and_annotations() {
    let fx = fx();
    let reg = Registry::start_plain();
    let src = fx.p("src");
    let arm = Image { arch: "arm64".into(), ..stack(&fx) };
    oci::write_index(&src, "multi", &[stack(&fx), arm]);
    registry::skopeo_copy(&format!("oci:{}:multi", src.display()), &format!("docker://{}/mods/multi:v1", reg.host()), &{
        let mut f = reg.skopeo_dest_flags();
        f.push("--all".into());
        f
    });
    let to = format!("{}/mods/multi-signed:v1", reg.host());
    ok(fx.sign_image(&format!("{}/mods/multi:v1", reg.host()), &to).arg("--insecure"));
    let raw = registry::skopeo_raw_manifest(&format!("docker://{to}"), &reg.skopeo_flags());
    let index: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    let before = oci::manifest(&src, "multi");
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(index["annotations"], before["annotations"]);
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2);
    for (new, old) in entries.iter().zip(before["manifests"].as_array().expect("manifests")) {
        assert_eq!(new["platform"], old["platform"]);
        assert_eq!(new["annotations"], old["annotations"]);
        assert_ne!(new["digest"], old["digest"]);
    }
    let pulled = fx.p("pulled");
    let mut flags = reg.skopeo_src_flags();
    flags.push("--all".into());
    registry::skopeo_copy(&format!("docker://{to}"), &format!("oci:{}:v1", pulled.display()), &flags);
    for entry in entries {
        let manifest = oci::blob_json(&pulled, entry["digest"].as_str().expect("digest"));
        assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(3), "{}", entry["platform"]);
        let names = new_layer_names(&pulled, &manifest);
        assert_eq!(names.len(), 3, "{names:?}");
    }
    assert_eq!(reg.tags("mods/multi-signed"), ["v1"]);
}

#[test]
fn an_image_made_by_umoci_with_a_whiteout_is_signed() {
    let fx = fx();
    let m = modules();
    let layout = fx.p("umoci");
    let other = fx.p("other.ko");
    std::fs::copy(&m.hello, &other).expect("copy");
    registry::umoci_image(
        &layout,
        "v1",
        &[
            vec![registry::Op::Put(fx.mods("extra/kforge_hello.ko"), m.hello.clone()), registry::Op::Put(fx.mods("extra/kforge_params.ko"), m.params.clone())],
            vec![registry::Op::Remove(fx.mods("extra/kforge_hello.ko")), registry::Op::Put(fx.mods("updates/other.ko"), other)],
        ],
    );
    ok(&mut fx.sign_image(&format!("oci:{}:v1", layout.display()), &format!("oci:{}:signed", layout.display())));
    let rootfs = fx.unpack(&layout, "signed");
    fx.check_signed(&rootfs, &fx.mods("extra/kforge_params.ko"), &fx.params);
    fx.check_signed(&rootfs, &fx.mods("updates/other.ko"), &fx.hello);
    assert!(!rootfs.join(fx.mods("extra/kforge_hello.ko").trim_start_matches('/')).exists());
    let tagged = fx.unpack(&layout, "v1");
    assert!(std::fs::read(tagged.join(fx.mods("extra/kforge_params.ko").trim_start_matches('/'))).expect("read") == fx.params, "the source tag is untouched");
}

#[test]
fn files_to_sign_paths_and_patterns_follow_links_inside_the_image() {
    let fx = fx();
    let src = fx.p("src");
    oci::write_image(
        &src,
        "v1",
        &Image::oci(vec![vec![
            file("/usr/lib/drivers/acme.ko", fx.params.clone()),
            file("/usr/lib/drivers/other.ko", fx.hello.clone()),
            Item::Symlink { path: "/opt/drivers".into(), target: "/usr/lib/drivers".into() },
        ]]),
    );
    let dst = fx.p("dst");
    ok(fx.sign_image(&format!("oci:{}:v1", src.display()), &format!("oci:{}:v1", dst.display())).args(["--files", "/opt/drivers/acme.ko"]));
    assert_eq!(new_layer_names(&dst, &oci::manifest(&dst, "v1")), ["usr/lib/drivers/acme.ko"], "written at the link's target");
    ok(fx.sign_image(&format!("oci:{}:v1", src.display()), &format!("oci:{}:v2", dst.display())).args(["--files", "/usr/lib/drivers/*.ko"]));
    assert_eq!(new_layer_names(&dst, &oci::manifest(&dst, "v2")), ["usr/lib/drivers/acme.ko", "usr/lib/drivers/other.ko"]);
    let rootfs = fx.unpack(&dst, "v2");
    fx.check_signed(&rootfs, "/usr/lib/drivers/acme.ko", &fx.params);
}

#[test]
fn bad_images_and_requests_fail_clearly_and_push_nothing() {
    let fx = fx();
    let src = fx.p("src");
    let dst = fx.p("dst");
    let from = |tag: &str| format!("oci:{}:{tag}", src.display());
    let to = format!("oci:{}:out", dst.display());
    let refused = |cmd: &mut Command, expected: &str| {
        let out = fails(cmd);
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
        assert_eq!(oci::tag_digest(&dst, "out"), None, "nothing may be tagged after: {out}");
    };

    oci::write_image(&src, "empty", &Image::oci(vec![vec![file("/etc/hostname", b"x\n".to_vec())]]));
    refused(&mut fx.sign_image(&from("empty"), &to), "no file matches *.ko, *.ko.xz, *.ko.zst or *.ko.gz under /opt/lib/modules");

    oci::write_image(&src, "v1", &stack(&fx));
    refused(fx.sign_image(&from("v1"), &to).args(["--files", "/opt/lib/modules/missing.ko"]), "/opt/lib/modules/missing.ko does not exist in the image");
    refused(fx.sign_image(&from("v1"), &to).args(["--files", "/etc/hostname"]), "/etc/hostname: not a kernel module");
    refused(fx.sign_image(&from("v1"), &to).args(["--files", "/nowhere/*.ko"]), "no file matches the pattern /nowhere/*.ko");

    oci::write_image(&src, "dotdot", &Image::oci(vec![vec![Item::RawName { name: "opt/../../etc/evil.ko".into(), content: fx.hello.clone() }]]));
    refused(&mut fx.sign_image(&from("dotdot"), &to), "unsafe entry");
    oci::write_image(&src, "hardlink", &Image::oci(vec![vec![Item::Hardlink { path: fx.mods("x.ko"), target: "../../../etc/shadow".into() }]]));
    refused(&mut fx.sign_image(&from("hardlink"), &to), "unsafe hard link");
    oci::write_image(
        &src,
        "escape",
        &Image::oci(vec![vec![
            file("/opt/real.ko", fx.hello.clone()),
            Item::Symlink { path: "/opt/lib/modules".into(), target: "../../../../../host".into() },
        ]]),
    );
    refused(fx.sign_image(&from("escape"), &to).args(["--files", "/opt/lib/modules/x.ko"]), "points outside the image root");

    oci::write_raw(
        &src,
        "schema1",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#,
    );
    refused(&mut fx.sign_image(&from("schema1"), &to), "unsupported manifest media type");

    let encrypted = fx.p("enc.pem");
    ok(Command::new("openssl").args(["pkey", "-aes256", "-passout", "pass:right", "-in"]).arg(&fx.keys.key).arg("-out").arg(&encrypted));
    let mut cmd = kforge();
    cmd.env("KBUILD_SIGN_PIN", "wrong").args(["sign-image", "--key"]).arg(&encrypted).arg("--cert").arg(&fx.keys.cert_der).args([
        "--from",
        &from("v1"),
        "--to",
        &to,
    ]);
    refused(&mut cmd, "wrong passphrase");

    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    refused(fx.sign_image(&format!("127.0.0.1:{port}/mods/x:v1"), &to).args(["--insecure", "--timeout", "2"]), "unreachable");
}
