//! Prints the FlagEvaluator CRD (`cargo run -p pbflags-operator --bin crdgen > crds/flagevaluators.pbflags.dev.yaml`).

fn main() {
    print!("{}", pbflags_operator::crd_yaml());
}
