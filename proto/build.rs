//! Compiles the .proto files with protox (no protoc needed) and generates tonic code.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["kforge/signer/v1/signer.proto", "kforge/builder/v1/builder.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("kforge_descriptor.bin"), fds.encode_to_vec())?;
    // Module bytes as `bytes::Bytes`: chunks are sliced and passed on without copying.
    tonic_prost_build::configure().bytes(".kforge").compile_fds(fds)?;
    Ok(())
}
