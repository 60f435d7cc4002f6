//! A throw-away PKI made with the openssl CLI: a CA, a server certificate for 127.0.0.1 and client
//! certificates, for mutual-TLS tests; leaves with any subject and subjectAltNames, and bare RSA key
//! pairs, for the private control plane.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ok;

/// A certificate authority in a directory.
pub struct Ca {
    pub dir: PathBuf,
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let ca = Ca { dir: dir.into(), name: name.into(), cert: dir.join(format!("{name}-ca.pem")), key: dir.join(format!("{name}-ca.key")) };
        ok(Command::new("openssl")
            .args(["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-sha256", "-days", "30"])
            .args(["-subj", &format!("/CN={name} test CA")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca.key)
            .arg("-out")
            .arg(&ca.cert));
        ca
    }

    /// Issues a leaf: `server` adds serverAuth and SANs for 127.0.0.1/localhost, otherwise clientAuth.
    pub fn issue(&self, cn: &str, server: bool) -> Leaf {
        let base = self.dir.join(format!("{}-{}", self.name, cn.replace(' ', "_")));
        let extensions = if server {
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        } else {
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
        };
        let serial = format!("{}", std::process::id() as u64 * 1000 + cn.len() as u64);
        self.sign(&base, &format!("/CN={cn}"), extensions, Some(&serial))
    }

    /// Issues a leaf named `<ca name>-<file>.pem`/`.key` for `subject` (e.g.
    /// `/O=system:masters/CN=admin`), for `usage`, with these subjectAltNames (e.g. `IP:127.0.0.1`,
    /// `DNS:kubernetes`) and a random serial.
    pub fn issue_for(&self, file: &str, subject: &str, usage: Usage, sans: &[&str]) -> Leaf {
        let base = self.dir.join(format!("{}-{file}", self.name));
        let mut extensions = String::from("basicConstraints=critical,CA:FALSE\n");
        extensions.push_str(match usage {
            Usage::Server => "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
            Usage::Client => "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        });
        if !sans.is_empty() {
            extensions.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        self.sign(&base, subject, &extensions, None)
    }

    /// A new RSA key and a certificate for it signed by this CA: `<base>.pem`, `<base>.key`.
    fn sign(&self, base: &Path, subject: &str, extensions: &str, serial: Option<&str>) -> Leaf {
        let leaf = Leaf { cert: base.with_extension("pem"), key: base.with_extension("key") };
        let csr = base.with_extension("csr");
        let ext = base.with_extension("ext");
        ok(Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj", subject])
            .arg("-keyout")
            .arg(&leaf.key)
            .arg("-out")
            .arg(&csr));
        std::fs::write(&ext, extensions).expect("write extensions");
        let mut cmd = Command::new("openssl");
        cmd.args(["x509", "-req", "-sha256", "-days", "30"]);
        // Without -set_serial (and no serial file) openssl picks a random serial.
        if let Some(serial) = serial {
            cmd.args(["-set_serial", serial]);
        }
        ok(cmd.arg("-in").arg(&csr).arg("-CA").arg(&self.cert).arg("-CAkey").arg(&self.key).arg("-extfile").arg(&ext).arg("-out").arg(&leaf.cert));
        leaf
    }
}

/// What a leaf certificate may be used for (its extendedKeyUsage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (serverAuth).
    Server,
    /// TLS client (clientAuth).
    Client,
}

/// An RSA key pair (2048 bits, PEM): the private key at `<dir>/<name>.key`, the public one at `<dir>/<name>.pub`.
pub fn rsa_key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    ok(Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(&key));
    ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public));
    (key, public)
}
