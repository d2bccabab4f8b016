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
    // The oldest Kubernetes the chart supports (its kubeVersion).
    c.args(["template", "r"])
        .arg(chart())
        .args(["--namespace", "ops", "--kube-version", "1.30.0"]);
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
    assert!(!k.contains(&"PodMonitor".to_owned()));

    // The evaluator pods' PodMonitor, over the watched namespaces.
    let docs = render(&[
        "metrics.evaluatorPodMonitor.enabled=true",
        "metrics.evaluatorPodMonitor.scheme=https",
        "rbac.watchNamespaces={team-a}",
    ]);
    let pm = docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
    assert_eq!(pm["spec"]["namespaceSelector"]["matchNames"][0], "team-a");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "pbflags-evaluator"
    );
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        (endpoint["port"].as_str(), endpoint["scheme"].as_str()),
        (Some("http"), Some("https"))
    );
    assert_eq!(endpoint["tlsConfig"]["insecureSkipVerify"], true);
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

/// The values table of the chart's README, from `values.yaml`: every key with a `# --` comment
/// (continued by the `#` lines under it), its default, and the comment.
fn values_table(values: &str) -> String {
    let parsed: serde_json::Value = serde_yaml_ng::from_str(values).unwrap();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<String> = None;
    for line in values.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(text) = trimmed.strip_prefix("# -- ") {
            pending = Some(text.trim().to_owned());
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            if let Some(p) = pending.as_mut() {
                p.push(' ');
                p.push_str(text.trim());
            }
            continue;
        }
        let Some((key, inline)) = trimmed.split_once(':') else {
            continue;
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_owned()));
        if let Some(description) = pending.take() {
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            let inline = inline.trim();
            let default = if inline.is_empty() {
                let value = path.iter().fold(&parsed, |v, k| &v[*k]);
                serde_json::to_string(value).unwrap()
            } else {
                inline.to_owned()
            };
            rows.push((path.join("."), default, description));
        }
    }
    // A documented map whose keys are documented too shows them, not itself as a blob.
    let documented: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let mut table = String::from("| key | default | description |\n|---|---|---|\n");
    for (key, default, description) in rows {
        let parent = documented.iter().any(|k| k.starts_with(&format!("{key}.")));
        let default = if parent {
            String::new()
        } else {
            format!("`{default}`")
        };
        table.push_str(&format!(
            "| `{key}` | {default} | {} |\n",
            description.replace('|', "\\|")
        ));
    }
    table
}

#[test]
fn the_chart_readme_lists_every_value_as_values_yaml_documents_it() {
    const BEGIN: &str = "<!-- values: generated from values.yaml by tests/chart_templates.rs -->\n";
    const END: &str = "<!-- end of values -->\n";
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let path = chart().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = readme
        .split_once(BEGIN)
        .expect("README has the values marker");
    let (_, tail) = rest.split_once(END).expect("README has the end marker");
    let fresh = format!("{head}{BEGIN}{}{END}{tail}", values_table(&values));
    if std::env::var_os("PBFLAGS_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    assert!(
        readme == fresh,
        "charts/pbflags-operator/README.md is stale; regenerate with \
         `PBFLAGS_BLESS=1 cargo test -p pbflags-operator --test chart_templates`"
    );
    // Every top-level value is documented.
    let parsed: serde_json::Value = serde_yaml_ng::from_str(&values).unwrap();
    for key in parsed.as_object().unwrap().keys() {
        assert!(
            fresh.contains(&format!("| `{key}")),
            "values.yaml: {key} has no `# --` comment"
        );
    }
}

#[test]
fn operator_pod_knobs_reach_the_deployment() {
    let docs = render(&[]);
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert!(
        c["args"].as_array().unwrap().contains(&serde_json::json!(
            "--evaluator-image=pbflags-evaluator:0.1.0"
        )),
        "the evaluator image follows the chart's appVersion: {c}"
    );
    assert!(
        !kinds(&docs).contains(&"PodDisruptionBudget".to_owned()),
        "one replica: no PDB"
    );
    assert!(dep["spec"]["template"]["spec"]["topologySpreadConstraints"].is_null());

    let docs = render(&[
        "replicaCount=2",
        "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "podLabels.team=platform",
        "podLabels.app\\.kubernetes\\.io/name=mine",
        "extraArgs={--log-level=debug}",
        "extraEnv[0].name=HTTPS_PROXY",
        "extraEnv[0].value=http://proxy:3128",
    ]);
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &dep["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        "pbflags-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/name"], "pbflags-operator",
        "the selector labels win"
    );
    assert!(!pod["metadata"].to_string().contains("mine"), "{pod}");
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("--log-level=debug"))
    );
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": "HTTPS_PROXY", "value": "http://proxy:3128"}))
    );
    assert_eq!(
        pod["spec"]["topologySpreadConstraints"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let pdb = docs
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .expect("two replicas: a PDB");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
}
