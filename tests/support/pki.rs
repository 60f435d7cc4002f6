//! A throw-away PKI made with the openssl CLI: a CA, a server certificate for 127.0.0.1 and client
//! certificates, for mutual-TLS tests.
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
        let leaf = Leaf { cert: base.with_extension("pem"), key: base.with_extension("key") };
        let csr = base.with_extension("csr");
        let ext = base.with_extension("ext");
        ok(Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj", &format!("/CN={cn}")])
            .arg("-keyout")
            .arg(&leaf.key)
            .arg("-out")
            .arg(&csr));
        let extensions = if server {
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        } else {
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
        };
        std::fs::write(&ext, extensions).expect("write extensions");
        ok(Command::new("openssl")
            .args(["x509", "-req", "-sha256", "-days", "30", "-set_serial", &format!("{}", std::process::id() as u64 * 1000 + cn.len() as u64)])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.cert)
            .arg("-CAkey")
            .arg(&self.key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&leaf.cert));
        leaf
    }
}
