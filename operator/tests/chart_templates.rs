//! The Helm chart without a cluster: lint, rendered output for the main value combinations, and
//! the values schema. Needs only the helm that `e2e/controlplane/build.sh` builds; `chart.rs`
//! installs the chart into the local control plane.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "support/helm.rs"]
mod support;

use std::path::PathBuf;

use support::{chart, helm, run};

fn tools() -> PathBuf {
    pbflags_e2e::tool_dir().unwrap()
}

fn render(set: &[&str]) -> Vec<serde_json::Value> {
    let mut c = helm(&tools(), None);
    c.args(["template", "r"])
        .arg(chart())
        .args(["--namespace", "ops"]);
    for s in set {
        c.args(["--set", s]);
    }
    let text = run(c);
    text.split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn kinds(docs: &[serde_json::Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    k.sort();
    k
}

#[test]
fn the_chart_lints_and_its_crd_template_is_fresh() {
    let mut c = helm(&tools(), None);
    c.arg("lint").arg(chart());
    run(c);
    let committed = std::fs::read_to_string(chart().join("templates/crd.yaml")).unwrap();
    assert!(
        committed == pbflags_operator::crd_helm_template(),
        "charts/pbflags-operator/templates/crd.yaml is stale; regenerate with \
         `cargo run -p pbflags-operator --bin crdgen -- --helm > charts/pbflags-operator/templates/crd.yaml`"
    );
}

#[test]
fn default_values_install_cluster_wide_with_a_kept_crd_and_a_hardened_pod() {
    let docs = render(&[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let crd = docs
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .unwrap();
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| !a.as_str().unwrap().starts_with("--watch-namespaces"))
    );
}

#[test]
fn listed_namespaces_get_roles_and_the_operator_watches_only_them() {
    let docs = render(&["rbac.watchNamespaces={team-a,team-b}", "crds.keep=false"]);
    assert!(!kinds(&docs).contains(&"ClusterRole".to_owned()));
    let roles: Vec<&str> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "Role"
                && !d["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("leader-election")
        })
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["team-a", "team-b"]);
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args = &dep["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--watch-namespaces=team-a,team-b"),
        "{args}"
    );
    let crd = docs
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .unwrap();
    assert!(
        crd["metadata"]["annotations"]
            .get("helm.sh/resource-policy")
            .is_none()
    );
}

#[test]
fn optional_objects_follow_their_values() {
    let docs = render(&[
        "crds.enabled=false",
        "metrics.serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
    ]);
    let k = kinds(&docs);
    assert!(!k.contains(&"CustomResourceDefinition".to_owned()));
    assert!(k.contains(&"ServiceMonitor".to_owned()) && k.contains(&"NetworkPolicy".to_owned()));
}

#[test]
fn the_schema_rejects_wrong_types_naming_the_value() {
    for (set, path) in [
        ("replicaCount=many", "/replicaCount"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("nope=1", "nope"),
    ] {
        let out = helm(&tools(), None)
            .args(["template", "r"])
            .arg(chart())
            .args(["--set", set])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{set} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(path), "{set}: {err}");
    }
}
