//! The Helm chart on the local control plane: a server-side dry run, and an install whose
//! ServiceAccount runs the operator (its RBAC is enough, and no more), then an uninstall that leaves
//! nothing behind. `chart_templates.rs` covers lint, rendering and the schema without a cluster.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "support/helm.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use pbflags_e2e::{ControlPlane, TestNamespace};
use pbflags_operator::build::Defaults;
use pbflags_operator::controller;
use pbflags_operator::crd::FlagEvaluator;
use pbflags_operator::metrics::Metrics;
use pbflags_operator::reconcile::Context;
use support::{chart, helm, run};
use tokio_util::sync::CancellationToken;

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
        let mut c = helm(&cp.bin, Some(&cp.kubeconfig));
        c.args(["template", &release]).arg(chart()).args([
            "--namespace",
            &ops.name,
            "--kube-version",
            "1.36.0",
        ]);
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
        let mut c = helm(&cp.bin, Some(&cp.kubeconfig));
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
    // Least privilege: no Secret can be read, listed or watched, in its namespaces or elsewhere.
    for verb in ["get", "list", "watch"] {
        for ns in [Some(apps.name.as_str()), Some(ops.name.as_str()), None] {
            assert!(!can(verb, "secrets", ns), "{verb} secrets in {ns:?}");
        }
    }
    assert!(can("list", "events", Some(&apps.name)));
    assert!(!can("create", "deployments.apps", Some("default")));
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
    pbflags_e2e::wait_for(
        "the sample FlagEvaluator Ready",
        Duration::from_secs(120),
        async || {
            let fe = fes.get("flags").await.unwrap();
            fe.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True")
                .then_some(())
        },
    )
    .await
    .unwrap();
    stop.cancel();
    let _ = task.await;

    run({
        let mut c = helm(&cp.bin, Some(&cp.kubeconfig));
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
    pbflags_e2e::eventually(
        "crds.keep=false: the CRD goes with the release",
        Duration::from_secs(60),
        async || crd_gone(),
    )
    .await
    .unwrap();

    // crds.keep=true (the default): the CRD, and so every FlagEvaluator, survives an uninstall.
    let kept = format!("{release}-k");
    run({
        let mut c = helm(&cp.bin, Some(&cp.kubeconfig));
        c.args(["install", &kept]).arg(chart()).args([
            "--namespace",
            &ops.name,
            "--set",
            &format!("rbac.watchNamespaces={{{}}}", apps.name),
        ]);
        c
    });
    run({
        let mut c = helm(&cp.bin, Some(&cp.kubeconfig));
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
