//! Bad input: every case gets a clear error naming the file and the problem, the exit status is
//! non-zero, and the original file is left exactly as it was.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

struct Case {
    dir: tempfile::TempDir,
    keys: Keys,
}

fn case() -> Case {
    let dir = world_tempdir();
    let keys = openssl_keys(dir.path(), "bad", 2048);
    Case { dir, keys }
}

impl Case {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sign(&self) -> Command {
        let mut c = kforge();
        c.env_remove("KBUILD_SIGN_PIN").args(["sign", "--key"]).arg(&self.keys.key).arg("--cert").arg(&self.keys.cert_der);
        c
    }

    /// Signs `file` expecting failure; checks the message and that the file is unchanged.
    fn refuses(&self, file: &Path, expected: &[&str]) {
        let before = std::fs::read(file).ok();
        let out = fails(self.sign().arg(file));
        for e in expected {
            assert!(out.contains(e), "expected {e:?} in:\n{out}");
        }
        assert!(out.contains(&file.display().to_string()), "the error names the file:\n{out}");
        assert_eq!(std::fs::read(file).ok(), before, "{} was modified", file.display());
        assert_no_temp_files(self.dir.path());
    }
}

fn assert_no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        assert!(!e.file_name().to_string_lossy().starts_with(".kforge-"), "temporary file left: {}", e.path().display());
    }
}

#[test]
fn non_modules_are_refused_with_what_they_are() {
    let c = case();
    let m = modules();
    std::fs::write(c.path("empty.ko"), b"").expect("write");
    c.refuses(&c.path("empty.ko"), &["not a kernel module: empty file"]);

    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(c.path("random.ko"), &random).expect("write");
    c.refuses(&c.path("random.ko"), &["not a kernel module: not an ELF file"]);

    let whole = std::fs::read(&m.hello).expect("read");
    std::fs::write(c.path("truncated.ko"), &whole[..whole.len() / 2]).expect("write");
    c.refuses(&c.path("truncated.ko"), &["not a kernel module: truncated or corrupt ELF"]);

    std::fs::write(c.path("main.c"), "int main(void) { return 0; }\n").expect("write");
    ok(Command::new("gcc").args(["-no-pie", "-o"]).arg(c.path("exec.ko")).arg(c.path("main.c")));
    c.refuses(&c.path("exec.ko"), &["not a kernel module: ELF executable (ET_EXEC)"]);
    ok(Command::new("gcc").args(["-pie", "-fPIE", "-o"]).arg(c.path("pie.ko")).arg(c.path("main.c")));
    c.refuses(&c.path("pie.ko"), &["ELF shared object or PIE executable (ET_DYN)"]);

    ok(Command::new("gcc").args(["-c", "-o"]).arg(c.path("plain.ko")).arg(c.path("main.c")));
    c.refuses(&c.path("plain.ko"), &["without a .modinfo section"]);
    // The module's own object file has .modinfo (license, description) but not what modpost adds.
    copy_to(&m.object, c.dir.path(), "object.ko");
    c.refuses(&c.path("object.ko"), &[".modinfo has no name= entry"]);
}

#[test]
fn a_trailer_claiming_more_than_the_file_is_refused() {
    let c = case();
    let mut bytes = std::fs::read(&modules().hello).expect("read");
    bytes.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&(50_000_000u32).to_be_bytes());
    bytes.extend_from_slice(MAGIC);
    std::fs::write(c.path("liar.ko"), &bytes).expect("write");
    c.refuses(&c.path("liar.ko"), &["malformed module signature", "claims a 50000000-byte signature"]);
    let out = fails(kforge().arg("inspect").arg(c.path("liar.ko")));
    assert!(out.contains("claims a 50000000-byte signature"), "{out}");
}

#[test]
fn key_problems_are_reported_before_any_module_is_touched() {
    let c = case();
    let m = modules();
    let module = copy_to(&m.hello, c.dir.path(), "m.ko");
    let before = std::fs::read(&module).expect("read");
    let other = openssl_keys(c.dir.path(), "other", 2048);

    let out = fails(kforge().args(["sign", "--key"]).arg(&other.key).arg("--cert").arg(&c.keys.cert_der).arg(&module));
    assert!(out.contains("does not match certificate") && out.contains("other.key.pem"), "{out}");

    let encrypted = c.path("enc.pem");
    ok(Command::new("openssl").args(["pkey", "-aes256", "-passout", "pass:s3cret", "-in"]).arg(&c.keys.key).arg("-out").arg(&encrypted));
    let sign_enc = || {
        let mut cmd = kforge();
        cmd.env_remove("KBUILD_SIGN_PIN").args(["sign", "--key"]).arg(&encrypted).arg("--cert").arg(&c.keys.cert_der);
        cmd
    };
    let out = fails(sign_enc().arg(&module));
    assert!(out.contains("private key is encrypted") && out.contains("KBUILD_SIGN_PIN"), "{out}");
    let out = fails(sign_enc().env("KBUILD_SIGN_PIN", "wrong").arg(&module));
    assert!(out.contains("wrong passphrase"), "{out}");
    std::fs::write(c.path("pass"), "wrong\n").expect("write");
    let out = fails(sign_enc().arg("--passphrase-file").arg(c.path("pass")).arg(&module));
    assert!(out.contains("wrong passphrase"), "{out}");

    let out = fails(c.sign().args(["--hash", "md5"]).arg(&module));
    assert!(out.contains("unsupported hash algorithm \"md5\"") && out.contains("sha256, sha384, sha512, sha224, sha1"), "{out}");
    let out = fails(kforge().args(["sign", "--key"]).arg(&c.keys.cert_pem).arg("--cert").arg(&c.keys.cert_der).arg(&module));
    assert!(out.contains("not a PEM private key"), "{out}");
    let out = fails(kforge().args(["sign", "--key"]).arg(&c.keys.key).arg("--cert").arg(&module).arg(&module));
    assert!(out.contains("not an X.509 certificate"), "{out}");
    assert_eq!(std::fs::read(&module).expect("read"), before, "no module was touched");

    // The right passphrase, from either source, signs exactly as sign-file with KBUILD_SIGN_PIN does.
    let expected_path = c.path("expected.ko");
    ok(Command::new(SIGN_FILE).env("KBUILD_SIGN_PIN", "s3cret").arg("sha256").arg(&encrypted).arg(&c.keys.cert_der).arg(&module).arg(&expected_path));
    ok(sign_enc().env("KBUILD_SIGN_PIN", "s3cret").arg(&module));
    assert!(std::fs::read(&module).expect("read") == std::fs::read(&expected_path).expect("read"));
    std::fs::write(c.path("pass"), "s3cret\n").expect("write");
    ok(sign_enc().arg("--passphrase-file").arg(c.path("pass")).arg(&module));
    assert!(std::fs::read(&module).expect("read") == std::fs::read(&expected_path).expect("read"));
}

#[test]
fn one_bad_file_fails_the_run_but_every_good_module_is_signed_and_every_failure_listed() {
    let c = case();
    let m = modules();
    let tree = c.path("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    let good = copy_to(&m.hello, &tree, "good.ko");
    std::fs::write(tree.join("bad1.ko"), b"junk").expect("write");
    std::fs::write(tree.join("bad2.ko"), b"").expect("write");
    let out = fails(c.sign().arg(&tree));
    assert!(out.contains("bad1.ko: not a kernel module") && out.contains("bad2.ko: not a kernel module: empty file"), "{out}");
    assert!(out.contains("signed 1 module") && out.contains("2 failed"), "{out}");
    assert!(std::fs::read(&good).expect("read").ends_with(MAGIC));
    assert_eq!(std::fs::read(tree.join("bad1.ko")).expect("read"), b"junk");
}

#[test]
fn a_symlink_leaving_the_tree_is_refused_and_its_target_untouched() {
    let c = case();
    let m = modules();
    let outside = copy_to(&m.hello, c.dir.path(), "outside.ko");
    let tree = c.path("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    copy_to(&m.params, &tree, "inside.ko");
    std::os::unix::fs::symlink(&outside, tree.join("escape.ko")).expect("symlink");
    let out = fails(c.sign().arg(&tree));
    assert!(out.contains("escape.ko: symlink points outside"), "{out}");
    assert!(std::fs::read(&outside).expect("read") == std::fs::read(&m.hello).expect("read"), "the link target was modified");
    assert!(std::fs::read(tree.join("inside.ko")).expect("read").ends_with(MAGIC), "the rest of the tree is signed");
}

#[test]
fn unreadable_files_and_read_only_output_directories_are_reported() {
    use std::os::unix::fs::PermissionsExt;
    let c = case();
    let m = modules();
    let set_mode = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    for p in [&c.keys.key, &c.keys.cert_der] {
        set_mode(p, 0o644);
    }
    let secret = copy_to(&m.hello, c.dir.path(), "secret.ko");
    set_mode(&secret, 0o000);
    let out = fails(kforge_unprivileged().args(["sign", "--key"]).arg(&c.keys.key).arg("--cert").arg(&c.keys.cert_der).arg(&secret));
    assert!(out.contains("secret.ko: cannot read") && out.contains("ermission denied"), "{out}");
    assert!(std::fs::read(&secret).expect("read as the test user") == std::fs::read(&m.hello).expect("read"));

    let module = copy_to(&m.hello, c.dir.path(), "readable.ko");
    set_mode(&module, 0o644);
    let ro = c.path("readonly");
    std::fs::create_dir(&ro).expect("mkdir");
    set_mode(&ro, 0o555);
    let out = fails(kforge_unprivileged().args(["sign", "--key"]).arg(&c.keys.key).arg("--cert").arg(&c.keys.cert_der).arg("--out").arg(&ro).arg(&module));
    assert!(out.contains("readonly: cannot create a temporary file in") && out.contains("ermission denied"), "{out}");
    assert!(std::fs::read_dir(&ro).expect("read_dir").next().is_none(), "nothing was written");
    assert!(std::fs::read(&module).expect("read") == std::fs::read(&m.hello).expect("read"));
    set_mode(&ro, 0o755);
}
