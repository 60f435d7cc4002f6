//! Signing real modules: byte equality with Debian's sign-file and `openssl cms -sign`,
//! verification by `openssl cms -verify` and `modinfo`, compressed modules, re-signing.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// Signs `module` in a copy with kforge and returns the signed bytes.
fn kforge_sign(dir: &Path, module: &Path, name: &str, hash: &str, key: &Path, cert: &Path, extra: &[&str]) -> Vec<u8> {
    let copy = copy_to(module, dir, name);
    ok(kforge().args(["sign", "--hash", hash, "--key"]).arg(key).arg("--cert").arg(cert).args(extra).arg(&copy));
    std::fs::read(&copy).expect("read signed module")
}

#[test]
fn byte_identical_to_sign_file_for_every_key_size_hash_and_cert_form() {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    for bits in [2048, 4096] {
        let keys = openssl_keys(dir.path(), &format!("rsa{bits}"), bits);
        for hash in ["sha256", "sha384", "sha512"] {
            for cert in [&keys.cert_der, &keys.cert_pem] {
                for module in [&m.hello, &m.params] {
                    let expected = sign_file(dir.path(), module, hash, &keys.key, cert, false);
                    let got = kforge_sign(dir.path(), module, "k.ko", hash, &keys.key, cert, &[]);
                    assert!(got == expected, "RSA-{bits}/{hash}/{} differs from sign-file for {}", cert.display(), module.display());
                    assert!(openssl_cms_verify(dir.path(), &got, &keys.cert_pem), "openssl cms -verify rejects RSA-{bits}/{hash}");
                }
            }
        }
    }
}

#[test]
fn key_identifier_form_matches_sign_file_dash_k() {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "kid", 2048);
    for hash in ["sha256", "sha512"] {
        let expected = sign_file(dir.path(), &m.hello, hash, &keys.key, &keys.cert_der, true);
        let got = kforge_sign(dir.path(), &m.hello, "kid.ko", hash, &keys.key, &keys.cert_der, &["--key-id"]);
        assert!(got == expected, "--key-id/{hash} differs from sign-file -k");
        assert!(openssl_cms_verify(dir.path(), &got, &keys.cert_pem));
    }
}

#[test]
fn cms_equals_openssl_cms_sign_and_modinfo_names_the_signer() {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "cms", 2048);
    let signed = kforge_sign(dir.path(), &m.params, "p.ko", "sha256", &keys.key, &keys.cert_pem, &[]);
    let (body, cms) = split_signature(&signed);
    assert_eq!(body, std::fs::read(&m.params).expect("read"), "the module bytes are kept as they were");
    let reference = dir.path().join("ref.der");
    ok(Command::new("openssl")
        .args(["cms", "-sign", "-binary", "-noattr", "-nocerts", "-outform", "DER", "-md", "sha256", "-signer"])
        .arg(&keys.cert_pem)
        .arg("-inkey")
        .arg(&keys.key)
        .arg("-in")
        .arg(&m.params)
        .arg("-out")
        .arg(&reference));
    assert!(cms == std::fs::read(&reference).expect("read").as_slice(), "CMS differs from openssl cms -sign");

    let path = dir.path().join("p.ko");
    assert_eq!(modinfo(&path, "signer"), "kforge test cms");
    assert_eq!(modinfo(&path, "sig_hashalgo"), "sha256");
    let serial = ok(Command::new("openssl").args(["x509", "-noout", "-serial", "-in"]).arg(&keys.cert_pem));
    let serial = serial.trim().trim_start_matches("serial=").trim_start_matches('0').to_ascii_uppercase();
    assert_eq!(modinfo(&path, "sig_key").replace(':', "").trim_start_matches('0'), serial);
    assert_eq!(modinfo(&path, "vermagic").split_whitespace().next(), Some(m.abi.as_str()));
}

#[test]
fn verify_reports_what_modinfo_reports_and_rejects_tampering() {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "v", 2048);
    let signed = kforge_sign(dir.path(), &m.hello, "v.ko", "sha384", &keys.key, &keys.cert_der, &[]);
    let path = dir.path().join("v.ko");
    let out = ok(kforge().arg("verify").arg("--cert").arg(&keys.cert_pem).arg(&path));
    assert!(out.contains("v.ko: OK"), "{out}");
    assert!(out.contains("name:         kforge_hello"), "{out}");
    assert!(out.contains("signer:       kforge test v"), "{out}");
    assert!(out.contains("sig_hashalgo: sha384"), "{out}");
    assert!(out.contains(&format!("sig_key:      {}", modinfo(&path, "sig_key"))), "{out}");
    assert!(out.contains(&format!("vermagic:     {}", modinfo(&path, "vermagic"))), "{out}");

    // One flipped bit in the module body: the signature must no longer verify.
    let mut tampered = signed.clone();
    tampered[100] ^= 1;
    let bad = dir.path().join("tampered.ko");
    std::fs::write(&bad, &tampered).expect("write");
    let out = fails(kforge().arg("verify").arg("--cert").arg(&keys.cert_der).arg(&bad));
    assert!(out.contains("signature does not verify"), "{out}");
    assert!(!openssl_cms_verify(dir.path(), &tampered, &keys.cert_pem), "the oracle agrees it is broken");

    // An unsigned module is reported as such.
    let out = fails(kforge().arg("verify").arg("--cert").arg(&keys.cert_der).arg(&m.hello));
    assert!(out.contains("module is not signed"), "{out}");
}

#[test]
fn resigning_is_idempotent_and_a_new_key_replaces_the_old() {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = openssl_keys(dir.path(), "a", 2048);
    let b = openssl_keys(dir.path(), "b", 2048);
    let path = copy_to(&m.hello, dir.path(), "r.ko");
    let sign = |keys: &Keys| ok(kforge().args(["sign", "--key"]).arg(&keys.key).arg("--cert").arg(&keys.cert_der).arg(&path));
    sign(&a);
    let once = std::fs::read(&path).expect("read");
    let out = sign(&a);
    assert!(out.contains("1 re-signed"), "{out}");
    assert!(once == std::fs::read(&path).expect("read"), "re-signing with the same key changed the bytes");

    // sign-file on an already signed module stacks a second signature; kforge strips both.
    let stacked = dir.path().join("stacked.ko");
    ok(Command::new(SIGN_FILE).arg("sha256").arg(&a.key).arg(&a.cert_der).arg(&path).arg(&stacked));
    assert_eq!(stacked.metadata().expect("stat").len(), once.len() as u64 * 2 - std::fs::metadata(&m.hello).expect("stat").len());
    ok(kforge().args(["sign", "--key"]).arg(&a.key).arg("--cert").arg(&a.cert_der).arg(&stacked));
    assert!(once == std::fs::read(&stacked).expect("read"), "stacked signatures were not all replaced");

    sign(&b);
    let out = ok(kforge().arg("verify").arg("--cert").arg(&b.cert_pem).arg(&path));
    assert!(out.contains("1 verified, 0 failed"), "{out}");
    let out = fails(kforge().arg("verify").arg("--cert").arg(&a.cert_pem).arg(&path));
    assert!(out.contains("signed by another key"), "{out}");
    let signed = std::fs::read(&path).expect("read");
    assert!(openssl_cms_verify(dir.path(), &signed, &b.cert_pem));
    assert!(!openssl_cms_verify(dir.path(), &signed, &a.cert_pem), "key A must no longer verify");
    assert_eq!(signed.windows(MAGIC.len()).filter(|w| *w == MAGIC).count(), 1, "exactly one signature");
}

#[test]
fn compressed_modules_round_trip_through_the_real_tools() {
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "z", 2048);
    let expected = sign_file(dir.path(), &m.params, "sha256", &keys.key, &keys.cert_der, false);
    let formats: [(&str, &[&str], &[&str]); 3] = [
        ("xz", &["xz", "--check=crc32", "--lzma2=dict=1MiB", "-k", "-f"], &["xz", "-d", "-c"]),
        ("zst", &["zstd", "-q", "-f", "-k"], &["zstd", "-d", "-q", "-c"]),
        ("gz", &["gzip", "-n", "-k", "-f"], &["gzip", "-d", "-c"]),
    ];
    for (ext, compress, decompress) in formats {
        let plain = copy_to(&m.params, dir.path(), "c.ko");
        ok(Command::new(compress[0]).args(&compress[1..]).arg(&plain));
        let packed = dir.path().join(format!("c.ko.{ext}"));
        ok(kforge().args(["sign", "--key"]).arg(&keys.key).arg("--cert").arg(&keys.cert_der).arg(&packed));
        let out = output(Command::new(decompress[0]).args(&decompress[1..]).arg(&packed));
        assert!(out.status.success(), "{ext}: the real tool cannot decompress kforge's output");
        assert!(out.stdout == expected, "{ext}: decompressed module differs from sign-file's signed module");
        let out = ok(kforge().arg("verify").arg("--cert").arg(&keys.cert_pem).arg(&packed));
        assert!(out.contains("1 verified"), "{out}");
        assert!(ok(kforge().arg("inspect").arg(&packed)).contains(&format!(
            "compression:  {}",
            match ext {
                "zst" => "zstd",
                "gz" => "gzip",
                e => e,
            }
        )));
        // Re-signing a compressed module is idempotent too.
        let first = std::fs::read(&packed).expect("read");
        ok(kforge().args(["sign", "--key"]).arg(&keys.key).arg("--cert").arg(&keys.cert_der).arg(&packed));
        assert!(first == std::fs::read(&packed).expect("read"), "{ext}: re-signing changed the bytes");
    }
}

#[test]
fn directories_are_signed_recursively_into_out_keeping_modes_and_layout() {
    use std::os::unix::fs::PermissionsExt;
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "d", 2048);
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("extra/net")).expect("mkdir");
    let a = copy_to(&m.hello, &tree.join("extra"), "a.ko");
    let b = copy_to(&m.params, &tree.join("extra/net"), "b.ko");
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(tree.join("extra/README"), "not a module").expect("write");
    std::os::unix::fs::symlink("a.ko", tree.join("extra/alias.ko")).expect("symlink");
    let out_dir = dir.path().join("signed");
    let out = ok(kforge().args(["sign", "--key"]).arg(&keys.key).arg("--cert").arg(&keys.cert_der).arg("--out").arg(&out_dir).arg(&tree));
    assert!(out.contains("signed 2 modules"), "{out}");
    assert!(std::fs::read(&a).expect("read") == std::fs::read(&m.hello).expect("read"), "inputs stay untouched with --out");
    assert!(!out_dir.join("extra/README").exists() && !out_dir.join("extra/alias.ko").exists());
    let signed_b = out_dir.join("extra/net/b.ko");
    assert_eq!(signed_b.metadata().expect("stat").permissions().mode() & 0o777, 0o600, "mode preserved");
    assert!(std::fs::read(&signed_b).expect("read") == sign_file(dir.path(), &m.params, "sha256", &keys.key, &keys.cert_der, false));
    let out = ok(kforge().arg("verify").arg("-q").arg("--cert").arg(&keys.cert_der).arg(&out_dir));
    assert!(out.contains("2 verified, 0 failed"), "{out}");
    // No temporary files are left behind.
    let leftovers: Vec<_> = walk(&out_dir).into_iter().filter(|p| p.to_string_lossy().contains(".kforge-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn in_place_signing_leaves_hard_links_elsewhere_and_read_only_modes_alone() {
    use std::os::unix::fs::PermissionsExt;
    let m = modules();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path(), "l", 2048);
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    // Replacing modules recycles temporary files; a module whose inode is shared with a file
    // outside the tree must never have that inode reused, or the outside file would change.
    let linked = copy_to(&m.params, &tree, "0-linked.ko");
    let outside = dir.path().join("outside-link.ko");
    std::fs::hard_link(&linked, &outside).expect("hard link");
    for i in 1..6 {
        copy_to(if i % 2 == 0 { &m.hello } else { &m.params }, &tree, &format!("{i}.ko"));
    }
    let ro = copy_to(&m.hello, &tree, "9-readonly.ko");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let out = ok(kforge().args(["sign", "-j", "1", "--key"]).arg(&keys.key).arg("--cert").arg(&keys.cert_der).arg(&tree));
    assert!(out.contains("signed 7 modules"), "{out}");
    assert!(std::fs::read(&outside).expect("read") == std::fs::read(&m.params).expect("read"), "the outside hard link changed");
    let expected_params = sign_file(dir.path(), &m.params, "sha256", &keys.key, &keys.cert_der, false);
    let expected_hello = sign_file(dir.path(), &m.hello, "sha256", &keys.key, &keys.cert_der, false);
    assert!(std::fs::read(&linked).expect("read") == expected_params);
    for i in 1..6 {
        let expected = if i % 2 == 0 { &expected_hello } else { &expected_params };
        assert!(&std::fs::read(tree.join(format!("{i}.ko"))).expect("read") == expected, "{i}.ko");
    }
    assert!(std::fs::read(&ro).expect("read") == expected_hello);
    assert_eq!(ro.metadata().expect("stat").permissions().mode() & 0o777, 0o444);
    let names: Vec<String> = std::fs::read_dir(&tree).expect("ls").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n.ends_with(".ko") && !n.starts_with('.')), "leftovers: {names:?}");
}
