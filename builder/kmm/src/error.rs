//! Errors of kernel-variable expansion, DTK resolution and KMM's requests; each names the kernel,
//! template, mapping, image, secret or Kubernetes object involved.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while expanding KMM variables or resolving `DTK_AUTO`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel does not split into at least x.y.z at `.`, `,` or `-` (KMM refuses it too).
    #[error("kernel {kernel:?} does not split into x.y.z at '.', ',' or '-', so KERNEL_XYZ/X/Y/Z cannot be derived (KMM refuses it too)")]
    KernelVersion {
        /// The kernel as given.
        kernel: String,
    },
    /// A template is malformed.
    #[error("cannot expand {template:?}: {reason}")]
    Template {
        /// The template.
        template: String,
        /// What is wrong ("closing brace expected").
        reason: &'static str,
    },
    /// A DTK mapping in the configuration or the ConfigMap is malformed.
    #[error("DTK mapping {mapping}: {reason}")]
    Mapping {
        /// Which mapping ("configuration entry 2", "ConfigMap kmm/dtk key regexps line 3").
        mapping: String,
        /// What is wrong.
        reason: String,
    },
    /// A mapping's regular expression does not compile.
    #[error("DTK mapping {mapping}: invalid regexp {regexp:?}: {source}")]
    Regexp {
        /// Which mapping.
        mapping: String,
        /// The expression.
        regexp: String,
        /// What the regex engine said.
        #[source]
        source: regex::Error,
    },
    /// A mapping matched the kernel but its image is not in the registry.
    #[error("DTK mapping {mapping} matches kernel {kernel} but its image {image} does not exist in the registry")]
    MappingImageMissing {
        /// Which mapping.
        mapping: String,
        /// The kernel.
        kernel: String,
        /// The image it names (expanded).
        image: String,
    },
    /// A registry could not be asked about an image.
    #[error("cannot look up {image} in its registry: {source}")]
    Registry {
        /// The image.
        image: String,
        /// What the registry client said.
        #[source]
        source: kforge_image::Error,
    },
    /// An image reference is malformed.
    #[error("invalid image reference {image:?} ({origin}): {reason}")]
    Reference {
        /// The reference.
        image: String,
        /// Where it came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The Kubernetes API refused or failed a request other than with "not found".
    #[error("Kubernetes API: {what}: {source}")]
    Kube {
        /// The request ("get ImageStream openshift/driver-toolkit", "list Nodes").
        what: String,
        /// What kube said.
        #[source]
        source: kube::Error,
    },
    /// An OpenShift object does not have the expected shape.
    #[error("{object}: {reason}")]
    Malformed {
        /// The object ("ImageStream openshift/driver-toolkit").
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// No source gave an image for the kernel.
    #[error("no Driver Toolkit image (DTK_AUTO) for kernel {kernel}: {}", tried.join("; "))]
    NothingApplies {
        /// The kernel.
        kernel: String,
        /// Each source tried and why it did not apply.
        tried: Vec<String>,
    },
    /// A value of the request could not be expanded or used.
    #[error("in {field}")]
    Field {
        /// Which field ("build arg SRC", "containerImage", "filesToSign").
        field: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// The Dockerfile uses `DTK_AUTO` but nothing can resolve it.
    #[error("the Dockerfile uses DTK_AUTO but {reason}: pass DTK_AUTO as a build argument or configure where Driver Toolkit images come from")]
    DtkUnconfigured {
        /// Why it cannot be resolved.
        reason: &'static str,
    },
    /// A build secret's id cannot be mounted at `/run/secrets/<id>` in every `RUN`.
    #[error(
        "build secret {id:?} cannot be mounted at /run/secrets/{id} in the Dockerfile's RUN steps: {reason}; name secrets <secret>/<key> (a Kubernetes Secret and one of its keys) or with a plain name such as token"
    )]
    SecretId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The request builds, but no BuildKit was given.
    #[error("building {image} needs BuildKit, and none is configured")]
    NoBuildKit {
        /// The target image.
        image: String,
    },
    /// A request that cannot be carried out as given.
    #[error("invalid request: {0}")]
    Request(String),
    /// A local file or directory could not be used.
    #[error("{}: {action}", path.display())]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// What kforge was doing.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The build failed.
    #[error(transparent)]
    Build(#[from] kforge_builder::Error),
    /// Reading, signing or pushing the image failed.
    #[error(transparent)]
    Image(#[from] kforge_image::Error),
    /// The key or certificate cannot sign.
    #[error(transparent)]
    Signer(#[from] kforge_signer::Error),
    /// The whole request ran past its deadline and was cancelled.
    #[error("building and signing {image} did not finish within {seconds} s and was cancelled")]
    Deadline {
        /// The target image.
        image: String,
        /// The deadline.
        seconds: u64,
    },
}

impl Error {
    /// This error, said to be about `field`.
    pub fn in_field(self, field: impl Into<String>) -> Error {
        Error::Field { field: field.into(), source: Box::new(self) }
    }
}
