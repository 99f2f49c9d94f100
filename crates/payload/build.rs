//! Compiles our CrAU manifest schema with protox (a protobuf compiler in Rust), so building
//! fastpatch-payload needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/update_metadata.proto");
    let descriptors = protox::compile(["update_metadata.proto"], ["proto/"])?;
    prost_build::compile_fds(descriptors)?;
    Ok(())
}
