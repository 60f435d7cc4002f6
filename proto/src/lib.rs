//! kforge's gRPC API, versioned by package: `kforge.signer.v1` and `kforge.builder.v1`.
#![allow(missing_docs, clippy::all)]

/// The signing service.
pub mod signer {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("kforge.signer.v1");
    }
}

/// The build service.
pub mod builder {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("kforge.builder.v1");
    }
}

/// Encoded `FileDescriptorSet` of every kforge .proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kforge_descriptor");

/// The subset of BuildKit's wire API that kforge's builder speaks (and that its tests serve).
pub mod buildkit {
    /// LLB: the build graph.
    pub mod pb {
        tonic::include_proto!("pb");
    }
    /// BuildKit's packages.
    pub mod moby {
        /// Control API and session services.
        pub mod buildkit {
            /// `moby.buildkit.v1`: Control.
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.v1");
                /// `moby.buildkit.v1.types`: workers.
                pub mod types {
                    tonic::include_proto!("moby.buildkit.v1.types");
                }
            }
            /// `moby.buildkit.secrets.v1`: build secrets served in a session.
            pub mod secrets {
                /// Version 1.
                pub mod v1 {
                    tonic::include_proto!("moby.buildkit.secrets.v1");
                }
            }
        }
        /// `moby.filesync.v1`: registry credentials served in a session.
        pub mod filesync {
            /// Version 1.
            pub mod v1 {
                tonic::include_proto!("moby.filesync.v1");
            }
        }
    }
}
