//! Prints the FlagEvaluator CRD:
//! `cargo run -p pbflags-operator --bin crdgen > crds/flagevaluators.pbflags.dev.yaml`, or with
//! `--helm` the chart's template (`> charts/pbflags-operator/templates/crd.yaml`).

fn main() {
    if std::env::args().any(|a| a == "--helm") {
        print!("{}", pbflags_operator::crd_helm_template());
    } else {
        print!("{}", pbflags_operator::crd_yaml());
    }
}
