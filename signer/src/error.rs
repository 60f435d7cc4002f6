//! The crate's error type. Messages are complete sentence fragments that carry their own
//! context, so callers print them with `{}` and need not walk a source chain.

use std::path::PathBuf;

use crate::compress::Compression;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while signing, verifying or inspecting modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a kernel module.
    #[error("not a kernel module: {0}")]
    NotModule(#[from] NotModule),
    /// The appended-signature trailer is inconsistent with the file.
    #[error("malformed module signature: {0}")]
    Trailer(String),
    /// Decompressing or compressing a `.ko.xz`/`.ko.zst`/`.ko.gz` failed.
    #[error("{format} data is corrupt or could not be processed: {cause}")]
    Compression {
        /// Which format.
        format: Compression,
        /// What the codec said.
        cause: std::io::Error,
    },
    /// A decompressed module is larger than the configured limit.
    #[error("decompressed module exceeds {limit} bytes; refusing to continue")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Loading or checking a key or certificate failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The hash algorithm is not one the kernel accepts for module signatures.
    #[error("unsupported hash algorithm {name:?}: use one of sha256, sha384, sha512, sha224, sha1")]
    UnsupportedHash {
        /// The name that was asked for.
        name: String,
    },
    /// A key-generation request is invalid.
    #[error("cannot generate a key: {0}")]
    Keygen(String),
    /// The CMS structure could not be parsed.
    #[error("malformed CMS signature: {0}")]
    Cms(String),
    /// An OpenSSL operation failed.
    #[error("{what} failed: {cause}")]
    Crypto {
        /// The operation.
        what: &'static str,
        /// OpenSSL's error stack.
        cause: openssl::error::ErrorStack,
    },
    /// The module carries no appended signature.
    #[error("module is not signed (no \"~Module signature appended~\" trailer)")]
    Unsigned,
    /// The module was signed by a key other than the certificate's.
    #[error("signed by another key: the signature names {signed_by}, the certificate is {certificate}")]
    OtherSigner {
        /// Identity in the signature.
        signed_by: String,
        /// Identity of the certificate given.
        certificate: String,
    },
    /// The signature does not match the module contents.
    #[error("signature does not verify: the module was modified after signing or the signature is corrupt")]
    BadSignature,
    /// A file-system operation failed.
    #[error("{}: cannot {op}: {cause}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("read", "write", "create a temporary file in", …).
        op: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A symlink inside a directory tree points outside it.
    #[error("{}: symlink points outside {} (to {}); sign the target explicitly if that is intended", link.display(), root.display(), target.display())]
    SymlinkEscape {
        /// The link.
        link: PathBuf,
        /// Where it points.
        target: PathBuf,
        /// The tree being signed.
        root: PathBuf,
    },
    /// A path given explicitly is not named like a module and is not a directory.
    #[error("{}: not a module file name (expected *.ko, *.ko.xz, *.ko.zst or *.ko.gz)", path.display())]
    NotModuleName {
        /// The path.
        path: PathBuf,
    },
    /// Two inputs would be written to the same output file.
    #[error("{} and {} would both be written to {}", first.display(), second.display(), dst.display())]
    OutputCollision {
        /// First input.
        first: PathBuf,
        /// Second input.
        second: PathBuf,
        /// The shared output path.
        dst: PathBuf,
    },
    /// Whatever signs on this crate's behalf (a remote signing service, say) failed; its own
    /// error type says how.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// An error about one file: the path, then what went wrong with it.
    #[error("{}: {error}", path.display())]
    At {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: Box<Error>,
    },
}

impl Error {
    /// Attaches a file path to an error about that file's contents.
    pub fn at(self, path: impl Into<PathBuf>) -> Error {
        match self {
            // Errors that already name their path stay as they are.
            e @ (Error::Io { .. } | Error::At { .. } | Error::SymlinkEscape { .. }) => e,
            e => Error::At { path: path.into(), error: Box::new(e) },
        }
    }

    pub(crate) fn crypto(what: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> Error {
        move |cause| Error::Crypto { what, cause }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { path, op, cause }
    }
}

/// Why some bytes are not a kernel module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotModule {
    /// Zero bytes.
    #[error("empty file")]
    Empty,
    /// No ELF magic.
    #[error("not an ELF file (starts with {0})")]
    NotElf(String),
    /// ELF, but not a relocatable object.
    #[error("ELF {0}, a kernel module is an ELF relocatable object (ET_REL)")]
    WrongType(&'static str),
    /// The ELF structure ends early or points past the end of the file.
    #[error("truncated or corrupt ELF: {0}")]
    Truncated(String),
    /// No `.modinfo` section.
    #[error("ELF relocatable without a .modinfo section (an ordinary object file, not a module)")]
    NoModinfo,
    /// `.modinfo` lacks a required key.
    #[error(".modinfo has no {0}= entry")]
    MissingField(&'static str),
}

/// Problems with keys and certificates, reported before any module is touched.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key or certificate file cannot be read.
    #[error("{}: cannot read {what}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// "private key" or "certificate".
        what: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The private key is encrypted and no passphrase was given.
    #[error("{}: private key is encrypted; give its passphrase (KBUILD_SIGN_PIN or a passphrase file)", path.display())]
    NeedsPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// The passphrase does not decrypt the key.
    #[error("{}: wrong passphrase for the encrypted private key", path.display())]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is not a PEM private key.
    #[error("{}: not a PEM private key ({cause})", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// OpenSSL's error stack.
        cause: openssl::error::ErrorStack,
    },
    /// The key is not RSA.
    #[error("{}: {kind} key; kforge signs modules with RSA keys (the kernels this targets accept RSA module signatures)", path.display())]
    NotRsa {
        /// The key file.
        path: PathBuf,
        /// Key type.
        kind: String,
    },
    /// The certificate is neither DER nor PEM X.509.
    #[error("{}: not an X.509 certificate in DER or PEM form", path.display())]
    BadCert {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key does not belong to the certificate.
    #[error("private key {} does not match certificate {} (its public key is different)", key.display(), cert.display())]
    Mismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The subject-key-identifier form was asked for but the certificate has none.
    #[error("{}: certificate has no subjectKeyIdentifier extension, which a signature identified by key id needs", path.display())]
    NoSubjectKeyId {
        /// The certificate file.
        path: PathBuf,
    },
    /// The certificate's DER could not be taken apart.
    #[error("{}: certificate structure is malformed: {detail}", path.display())]
    MalformedCert {
        /// The certificate file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}
