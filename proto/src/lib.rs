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

/// Size of the data parts a module travels in on `SignModules`, both ways (1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// `bytes` cut into the data parts of a module stream (at most [`CHUNK_BYTES`] each; none for empty).
pub fn chunks(bytes: &bytes::Bytes) -> impl Iterator<Item = bytes::Bytes> + '_ {
    (0..bytes.len()).step_by(CHUNK_BYTES).map(move |at| bytes.slice(at..(at + CHUNK_BYTES).min(bytes.len())))
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

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_cover_the_bytes_in_order() {
        let bytes = bytes::Bytes::from(vec![7u8; 2 * super::CHUNK_BYTES + 5]);
        let parts: Vec<_> = super::chunks(&bytes).collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [super::CHUNK_BYTES, super::CHUNK_BYTES, 5]);
        assert_eq!(parts.concat(), bytes.to_vec());
        assert_eq!(super::chunks(&bytes::Bytes::new()).count(), 0);
    }
}
