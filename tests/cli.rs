//! The `kforge` command line: keygen, the deprecated and less common hashes, inspect, exit codes.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::*;

#[test]
fn keygen_makes_a_kernel_style_signing_pair_that_sign_file_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("signing_key.pem");
    let cert = dir.path().join("signing_key.x509");
    let out = ok(kforge()
        .args(["keygen", "--subject", "CN=Example module key,O=Example Corp", "--bits", "2048", "--der", "--key-out"])
        .arg(&key)
        .arg("--cert-out")
        .arg(&cert));
    assert!(out.contains("mokutil --import"), "{out}");
    assert_eq!(key.metadata().expect("stat").permissions().mode() & 0o777, 0o600, "private key is private");
    let text = ok(Command::new("openssl").args(["x509", "-inform", "DER", "-noout", "-text", "-in"]).arg(&cert));
    for needle in [
        "X509v3 Basic Constraints: critical",
        "CA:FALSE",
        "Digital Signature",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "Subject: CN = Example module key, O = Example Corp",
        "Public-Key: (2048 bit)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let m = modules();
    let expected = sign_file(dir.path(), &m.hello, "sha256", &key, &cert, false);
    let module = copy_to(&m.hello, dir.path(), "m.ko");
    ok(kforge().args(["sign", "--key"]).arg(&key).arg("--cert").arg(&cert).arg(&module));
    assert!(std::fs::read(&module).expect("read") == expected);
    assert_eq!(modinfo(&module, "signer"), "Example module key");

    let out = fails(kforge().args(["keygen", "--subject", "CN=x", "--bits", "2048", "--key-out"]).arg(&key).arg("--cert-out").arg(&cert));
    assert!(out.contains("already exists; pass --force"), "{out}");
    let out = fails(
        kforge().args(["keygen", "--subject", "CN=x", "--bits", "1024", "--key-out"]).arg(dir.path().join("a")).arg("--cert-out").arg(dir.path().join("b")),
    );
    assert!(out.contains("2048, 3072 or 4096"), "{out}");
}

#[test]
fn sha1_warns_and_sha224_signs_like_sign_file() {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "h", 2048);
    for hash in ["sha1", "sha224"] {
        let module = copy_to(&m.hello, dir.path(), "h.ko");
        let out = output(kforge().args(["sign", "--hash", hash, "--key"]).arg(&keys.key).arg("--cert").arg(&keys.cert_der).arg(&module));
        assert!(out.status.success());
        assert_eq!(text(&out.stderr).contains("deprecated"), hash == "sha1", "{}", text(&out.stderr));
        assert!(std::fs::read(&module).expect("read") == sign_file(dir.path(), &m.hello, hash, &keys.key, &keys.cert_der, false), "{hash}");
        assert_eq!(modinfo(&module, "sig_hashalgo"), hash);
    }
}

#[test]
fn inspect_shows_module_and_signature_without_a_certificate() {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ok(kforge().arg("inspect").arg(&m.params));
    assert!(out.contains("name:         kforge_params") && out.contains("signature:    none"), "{out}");
    assert!(out.contains(&format!("vermagic:     {}", modinfo(&m.params, "vermagic"))), "{out}");
    let keys = openssl_keys(dir.path(), "i", 4096);
    let signed = dir.path().join("s.ko");
    std::fs::write(&signed, sign_file(dir.path(), &m.params, "sha512", &keys.key, &keys.cert_pem, false)).expect("write");
    let out = ok(kforge().arg("inspect").arg(&signed));
    assert!(out.contains("signer:       kforge test i") && out.contains("sig_hashalgo: sha512"), "{out}");
    assert!(out.contains(&format!("sig_key:      {}", modinfo(&signed, "sig_key"))), "{out}");
}

#[test]
fn a_tree_without_modules_is_an_error_not_a_silent_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "e", 2048);
    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    let out = fails(kforge().args(["sign", "--key"]).arg(&keys.key).arg("--cert").arg(&keys.cert_der).arg(dir.path().join("empty")));
    assert!(out.contains("no kernel modules"), "{out}");
}
