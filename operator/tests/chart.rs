//! The Helm chart: lint, rendered output for the main value combinations, the schema, a server-side
//! dry run, and an install into the local control plane whose ServiceAccount runs the operator (its
//! RBAC is enough, and no more), then an uninstall that leaves nothing behind.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use pbflags_e2e::{ControlPlane, TestNamespace};
use pbflags_operator::build::Defaults;
use pbflags_operator::controller;
use pbflags_operator::crd::FlagEvaluator;
use pbflags_operator::metrics::Metrics;
use pbflags_operator::reconcile::Context;
use tokio_util::sync::CancellationToken;

fn chart() -> PathBuf {
    pbflags_e2e::repo_root().join("charts/pbflags-operator")
}

fn helm(cp: &ControlPlane) -> Command {
    let mut c = Command::new(cp.bin.join("helm"));
    c.env("KUBECONFIG", &cp.kubeconfig).env(
        "HELM_CACHE_HOME",
        std::env::temp_dir().join("pbflags-helm-cache"),
    );
    c
}

fn run(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn render(cp: &ControlPlane, set: &[&str]) -> Vec<serde_json::Value> {
    let mut c = helm(cp);
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
    let cp = ControlPlane::ensure().unwrap();
    let mut c = helm(&cp);
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
    let cp = ControlPlane::ensure().unwrap();
    let docs = render(&cp, &[]);
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
    let cp = ControlPlane::ensure().unwrap();
    let docs = render(
        &cp,
        &["rbac.watchNamespaces={team-a,team-b}", "crds.keep=false"],
    );
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
    let cp = ControlPlane::ensure().unwrap();
    let docs = render(
        &cp,
        &[
            "crds.enabled=false",
            "metrics.serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
        ],
    );
    let k = kinds(&docs);
    assert!(!k.contains(&"CustomResourceDefinition".to_owned()));
    assert!(k.contains(&"ServiceMonitor".to_owned()) && k.contains(&"NetworkPolicy".to_owned()));
}

#[test]
fn the_schema_rejects_wrong_types_naming_the_value() {
    let cp = ControlPlane::ensure().unwrap();
    for (set, path) in [
        ("replicaCount=many", "/replicaCount"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("nope=1", "nope"),
    ] {
        let out = helm(&cp)
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

#[tokio::test]
async fn installed_chart_rbac_runs_the_operator_and_uninstall_leaves_nothing() {
    let cp = ControlPlane::ensure().unwrap();
    let admin = cp.client().await.unwrap();
    // The chart installs the CRD itself here (crds.keep=false), so start without one; the shared
    // CRD is re-applied at the end for whatever runs next.
    let crd = pbflags_e2e::repo_root().join("crds/flagevaluators.pbflags.dev.yaml");
    run({
        let mut c = cp.kubectl();
        c.args([
            "delete",
            "crd",
            "flagevaluators.pbflags.dev",
            "--ignore-not-found",
            "--wait",
            "--timeout=60s",
        ]);
        c
    });
    let ops = TestNamespace::create(&cp, &admin, "chart-ops")
        .await
        .unwrap();
    let apps = TestNamespace::create(&cp, &admin, "chart-apps")
        .await
        .unwrap();
    let release = format!("pbf-{}", &ops.name[ops.name.len() - 8..]);

    // A server-side dry run of the full chart, CRD included.
    let rendered = run({
        let mut c = helm(&cp);
        c.args(["template", &release])
            .arg(chart())
            .args(["--namespace", &ops.name]);
        c
    });
    let path = std::env::temp_dir().join(format!("{release}.yaml"));
    std::fs::write(&path, rendered).unwrap();
    run({
        let mut c = cp.kubectl();
        c.args(["apply", "--dry-run=server", "-f"]).arg(&path);
        c
    });

    run({
        let mut c = helm(&cp);
        c.args(["install", &release]).arg(chart()).args([
            "--namespace",
            &ops.name,
            "--set",
            "crds.keep=false",
            "--set",
            &format!("rbac.watchNamespaces={{{}}}", apps.name),
            "--wait",
            "--timeout",
            "90s",
        ]);
        c
    });

    // Least privilege, asked of the API server as the operator's ServiceAccount.
    let sa = format!(
        "system:serviceaccount:{}:{release}-pbflags-operator",
        ops.name
    );
    let can = |verb: &str, resource: &str, ns: Option<&str>| {
        let mut c = cp.kubectl();
        let (resource, sub) = resource
            .split_once('/')
            .map_or((resource, None), |(r, s)| (r, Some(s)));
        c.args(["auth", "can-i", verb, resource, "--as", &sa]);
        if let Some(sub) = sub {
            c.arg(format!("--subresource={sub}"));
        }
        match ns {
            Some(ns) => c.args(["-n", ns]),
            None => c.arg("--all-namespaces"),
        };
        String::from_utf8_lossy(&c.output().unwrap().stdout).trim() == "yes"
    };
    assert!(can("list", "flagevaluators.pbflags.dev", Some(&apps.name)));
    assert!(can(
        "patch",
        "flagevaluators.pbflags.dev/status",
        Some(&apps.name)
    ));
    assert!(can("create", "deployments.apps", Some(&apps.name)));
    assert!(can("list", "secrets", Some(&apps.name)));
    assert!(
        !can("list", "secrets", None),
        "no cluster-wide Secrets in namespaced mode"
    );
    assert!(!can("create", "deployments.apps", Some("default")));
    assert!(!can("delete", "secrets", Some(&apps.name)));
    assert!(can("update", "leases.coordination.k8s.io", Some(&ops.name)));

    // The operator, authenticated by a token of the chart's ServiceAccount, makes the sample Ready.
    let token = run({
        let mut c = cp.kubectl();
        c.args([
            "-n",
            &ops.name,
            "create",
            "token",
            &format!("{release}-pbflags-operator"),
        ]);
        c
    });
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.token = Some(token.trim().to_owned().into());
    let client = kube::Client::try_from(config).unwrap();
    let ctx = Arc::new(Context::new(
        client,
        Defaults {
            image: "pbflags-evaluator:test".into(),
        },
        Metrics::new(),
    ));
    let stop = CancellationToken::new();
    let namespaces = vec![apps.name.clone()];
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { controller::run_namespaces(ctx, &namespaces, stop).await }
    });

    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("flag-descriptors".into()),
            ..Default::default()
        },
        binary_data: Some(
            [(
                "descriptors.pb".to_owned(),
                k8s_openapi::ByteString(
                    std::fs::read(pbflags_e2e::repo_root().join("proto/example/descriptors.pb"))
                        .unwrap(),
                ),
            )]
            .into(),
        ),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(admin.clone(), &apps.name)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    run({
        let mut c = cp.kubectl();
        c.args(["-n", &apps.name, "apply", "-f"])
            .arg(chart().join("examples/flagevaluator.yaml"));
        c
    });
    let fes = Api::<FlagEvaluator>::namespaced(admin.clone(), &apps.name);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let fe = fes.get("flags").await.unwrap();
        let ready = fe
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        if ready.as_deref() == Some("True") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sample FlagEvaluator not Ready: {:?}",
            fe.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    let _ = task.await;

    run({
        let mut c = helm(&cp);
        c.args(["uninstall", &release, "--namespace", &ops.name, "--wait"]);
        c
    });
    let left = run({
        let mut c = cp.kubectl();
        c.args([
            "get",
            "deployments,serviceaccounts,roles,rolebindings,services",
            "-A",
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ]);
        c
    });
    assert!(left.trim().is_empty(), "left behind: {left}");
    let crd_gone = || {
        let out = cp
            .kubectl()
            .args(["get", "crd", "flagevaluators.pbflags.dev"])
            .output()
            .unwrap();
        !out.status.success()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crd_gone() {
        assert!(
            Instant::now() < deadline,
            "crds.keep=false: the CRD must go with the release"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // crds.keep=true (the default): the CRD, and so every FlagEvaluator, survives an uninstall.
    let kept = format!("{release}-k");
    run({
        let mut c = helm(&cp);
        c.args(["install", &kept]).arg(chart()).args([
            "--namespace",
            &ops.name,
            "--set",
            &format!("rbac.watchNamespaces={{{}}}", apps.name),
        ]);
        c
    });
    run({
        let mut c = helm(&cp);
        c.args(["uninstall", &kept, "--namespace", &ops.name, "--wait"]);
        c
    });
    assert!(!crd_gone(), "crds.keep=true: the CRD stays");
    run({
        let mut c = cp.kubectl();
        c.args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(&crd);
        c
    });
    ops.delete(&admin).await.unwrap();
    apps.delete(&admin).await.unwrap();
}
