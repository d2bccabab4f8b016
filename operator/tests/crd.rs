//! The committed CRD is what the types generate. Regenerate with
//! `cargo run -p pbflags-operator --bin crdgen > crds/flagevaluators.pbflags.dev.yaml`.

#[test]
fn committed_crd_matches_the_types() {
    let path = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("../crds/flagevaluators.pbflags.dev.yaml");
    let committed = std::fs::read_to_string(&path).expect("read committed CRD");
    assert!(
        committed == pbflags_operator::crd_yaml(),
        "crds/flagevaluators.pbflags.dev.yaml is stale; regenerate it with \
         `cargo run -p pbflags-operator --bin crdgen > crds/flagevaluators.pbflags.dev.yaml`"
    );
}
