//! Helpers shared by the integration tests: compile small protos into descriptor sets.
#![allow(dead_code)]

use std::path::Path;

/// Compiles `source` (a proto3 file that may import `pbflags/options.proto`) into serialized
/// `FileDescriptorSet` bytes with every import included.
pub fn compile(source: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("test.proto"), source).expect("write proto");
    let proto_root =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("../proto");
    // encode_file_descriptor_set keeps option extensions; a prost_types round trip would drop them.
    let mut compiler =
        protox::Compiler::new([dir.path(), proto_root.as_path()]).expect("include paths");
    compiler.include_imports(true);
    compiler
        .open_file("test.proto")
        .expect("test proto compiles");
    compiler.encode_file_descriptor_set()
}

/// A descriptor set with one feature `f` and `n` int64 flags, numbered 1..=n.
pub fn many_flags(feature: &str, n: u32) -> Vec<u8> {
    let mut src = format!(
        "syntax = \"proto3\";\npackage gen;\nimport \"pbflags/options.proto\";\nmessage M {{\n  option (pbflags.feature) = {{ id: \"{feature}\" }};\n"
    );
    for i in 1..=n {
        src.push_str(&format!(
            "  int64 f{i} = {i} [(pbflags.flag) = {{ default: {{ int64_value: {{ value: {i} }} }} layer: \"user\" }}];\n"
        ));
    }
    src.push_str("}\n");
    compile(&src)
}
