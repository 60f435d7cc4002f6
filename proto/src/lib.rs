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
