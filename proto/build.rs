//! Compiles the .proto files with the vendored protoc (no system install needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    let protos = ["csi.proto", "chunk.proto", "meta.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_build::configure()
        // Chunk data as `bytes::Bytes`: pieces are slices of the chunk, not copies.
        .bytes([".cairn.chunk.v1.PutRequest.data", ".cairn.chunk.v1.GetResponse.data", ".cairn.chunk.v1.GetRangeResponse.data", ".cairn.chunk.v1.JournalAppendRequest.payload", ".cairn.chunk.v1.JournalRecord.payload"])
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &[std::path::PathBuf::from("."), include])?;
    Ok(())
}
