//! Compiles the wire contract with protox (a pure-Rust protobuf compiler), so a fresh machine builds
//! with cargo alone: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "pbflags/options.proto",
        "pbflags/v1/types.proto",
        "pbflags/v1/evaluator.proto",
        "pbflags/v1/changes.proto",
        "pbflags/v1/admin.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("pbflags_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
