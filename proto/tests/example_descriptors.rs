//! The committed `proto/example/descriptors.pb` must be what the example proto compiles to.
//! Regenerate with `PBFLAGS_BLESS=1 cargo test -p pbflags-proto --test example_descriptors`.

use std::path::Path;

#[test]
fn committed_example_descriptor_set_matches_its_source() {
    let root = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = root.as_path();
    let fresh = compile_example(root);
    let committed_path = root.join("example/descriptors.pb");
    if std::env::var_os("PBFLAGS_BLESS").is_some() {
        std::fs::write(&committed_path, &fresh).expect("write descriptors.pb");
    }
    let committed = std::fs::read(&committed_path).expect("read committed descriptors.pb");
    assert!(
        committed == fresh,
        "proto/example/descriptors.pb is stale ({} bytes committed, {} bytes fresh); \
         regenerate with PBFLAGS_BLESS=1 cargo test -p pbflags-proto --test example_descriptors",
        committed.len(),
        fresh.len()
    );
}

#[test]
fn example_descriptor_set_includes_its_imports() {
    let fds: prost_types::FileDescriptorSet =
        prost::Message::decode(pbflags_proto::EXAMPLE_DESCRIPTORS).expect("decodes");
    let names: Vec<_> = fds.file.iter().map(|f| f.name()).collect();
    for want in [
        "google/protobuf/descriptor.proto",
        "google/protobuf/wrappers.proto",
        "pbflags/options.proto",
        "example/notifications.proto",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

/// Compiles the example with its imports. `encode_file_descriptor_set` keeps option extensions, which
/// a round trip through `prost_types` would drop.
fn compile_example(root: &Path) -> Vec<u8> {
    let mut compiler = protox::Compiler::new([root]).expect("include path");
    compiler.include_imports(true);
    compiler
        .open_file("example/notifications.proto")
        .expect("example proto compiles");
    compiler.encode_file_descriptor_set()
}
