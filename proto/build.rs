//! Compiles the .proto files with protox (no protoc needed) and generates tonic code.

use prost::Message;

/// kforge's own API, relative to `.`.
const KFORGE: [&str; 2] = ["kforge/signer/v1/signer.proto", "kforge/builder/v1/builder.proto"];
/// The subset of BuildKit's API kforge speaks, relative to `buildkit/`.
const BUILDKIT: [&str; 5] = [
    "pb/ops.proto",
    "moby/buildkit/v1/types/worker.proto",
    "moby/buildkit/v1/control.proto",
    "moby/filesync/v1/auth.proto",
    "moby/buildkit/secrets/v1/secrets.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=kforge");
    println!("cargo:rerun-if-changed=buildkit");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile(KFORGE, ["."])?;
    std::fs::write(out.join("kforge_descriptor.bin"), fds.encode_to_vec())?;
    // Module bytes as `bytes::Bytes`: chunks are sliced and passed on without copying.
    tonic_prost_build::configure().bytes(".kforge").compile_fds(fds)?;

    let buildkit = protox::compile(BUILDKIT, ["buildkit"])?;
    tonic_prost_build::configure()
        // Session tunnel frames are passed through without copying.
        .bytes(".moby.buildkit.v1.BytesMessage")
        .compile_fds(buildkit)?;
    Ok(())
}
