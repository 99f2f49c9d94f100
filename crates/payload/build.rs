fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/update_metadata.proto");
    prost_build::compile_protos(&["proto/update_metadata.proto"], &["proto/"])
}
