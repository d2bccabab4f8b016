//! The operator against a real API server, controller manager, scheduler and kwok (tier C of
//! e2e/controlplane): objects, status, CEL validation, missing references, drift, pruning, garbage
//! collection and quiet restarts.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use pbflags_e2e::{ControlPlane, TestNamespace};
use pbflags_operator::build::Defaults;
use pbflags_operator::controller;
use pbflags_operator::crd::FlagEvaluator;
use pbflags_operator::health::{self, Readiness};
use pbflags_operator::metrics::Metrics;
use pbflags_operator::reconcile::Context;
use tokio_util::sync::CancellationToken;

/// One operator for the whole test binary, on a thread of its own (tests come and go with their
/// runtimes). Installs the CRD first.
fn operator() -> (ControlPlane, Metrics) {
    static STARTED: OnceLock<(ControlPlane, Metrics)> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            let cp = ControlPlane::ensure().unwrap();
            let crd = pbflags_e2e::repo_root().join("crds/flagevaluators.pbflags.dev.yaml");
            let out = cp
                .kubectl()
                .args(["apply", "--server-side", "--force-conflicts", "-f"])
                .arg(&crd)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = cp
                .kubectl()
                .args([
                    "wait",
                    "--for=condition=Established",
                    "crd/flagevaluators.pbflags.dev",
                    "--timeout=30s",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let metrics = Metrics::new();
            if pbflags_e2e::external_operator() {
                return (cp, metrics);
            }
            let (cp2, m2) = (cp.clone(), metrics.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = cp2.client().await.unwrap();
                    let ctx = Arc::new(Context::new(
                        client,
                        Defaults {
                            image: "pbflags-evaluator:test".into(),
                        },
                        m2,
                    ));
                    controller::run(ctx, CancellationToken::new()).await;
                });
            });
            (cp, metrics)
        })
        .clone()
}

async fn setup(prefix: &str) -> (ControlPlane, Client, TestNamespace, Metrics) {
    let (cp, metrics) = operator();
    let client = cp.client().await.unwrap();
    let ns = TestNamespace::create(&cp, &client, prefix).await.unwrap();
    (cp, client, ns, metrics)
}

async fn descriptors(client: &Client, ns: &str) {
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("flags".into()),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(
            "descriptors.pb".into(),
            ByteString(pbflags_proto_bytes()),
        )])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
}

fn pbflags_proto_bytes() -> Vec<u8> {
    std::fs::read(pbflags_e2e::repo_root().join("proto/example/descriptors.pb")).unwrap()
}

/// The descriptors ConfigMap and the database Secret a root tier needs.
async fn references(client: &Client, ns: &str) {
    descriptors(client, ns).await;
    database_secret(client, ns, "postgres://u:p@db/flags").await;
}

async fn database_secret(client: &Client, ns: &str, url: &str) {
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("db".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("url".into(), url.into())])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn create_fe(
    client: &Client,
    ns: &str,
    spec: serde_json::Value,
) -> Result<FlagEvaluator, kube::Error> {
    let fe: FlagEvaluator = serde_json::from_value(serde_json::json!({
        "apiVersion": "pbflags.dev/v1alpha1", "kind": "FlagEvaluator",
        "metadata": { "name": "flags" }, "spec": spec
    }))
    .unwrap();
    Api::<FlagEvaluator>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &fe)
        .await
}

/// Creates the FlagEvaluator `flags` with `spec` and waits until it is Ready.
async fn create_ready(client: &Client, ns: &str, spec: serde_json::Value) -> FlagEvaluator {
    create_fe(client, ns, spec).await.unwrap();
    wait_condition(client, ns, "Ready", "True", None).await
}

/// A second operator process watching `ns` only, with metrics of its own: its reconcile count is a
/// signal that a change there has been handled (a reconcile is counted when it has finished,
/// writes included). Abort the task to stop it.
async fn scoped_operator(cp: &ControlPlane, ns: &str) -> (tokio::task::JoinHandle<()>, Metrics) {
    let metrics = Metrics::new();
    let ctx = Arc::new(Context::new(
        cp.client().await.unwrap(),
        Defaults {
            image: "pbflags-evaluator:test".into(),
        },
        metrics.clone(),
    ));
    let namespaces = vec![ns.to_owned()];
    let task = tokio::spawn(async move {
        controller::run_namespaces(ctx, &namespaces, CancellationToken::new()).await;
    });
    (task, metrics)
}

/// Waits until `metrics` count more than `after` reconciles.
async fn reconciled_past(metrics: &Metrics, after: u64) {
    wait_for("a reconcile", 60, async || {
        (metrics.reconciles() > after).then_some(())
    })
    .await;
}

/// Waits up to `secs` for `f` to return a value; panics naming `what` after that.
async fn wait_for<T>(what: &str, secs: u64, f: impl AsyncFnMut() -> Option<T>) -> T {
    pbflags_e2e::wait_for(what, Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn condition(fe: &FlagEvaluator, type_: &str) -> Option<(String, String)> {
    let c = fe
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

/// The message of the Degraded condition.
fn degraded_message(fe: &FlagEvaluator) -> String {
    fe.status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

async fn wait_condition(
    client: &Client,
    ns: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> FlagEvaluator {
    let api = Api::<FlagEvaluator>::namespaced(client.clone(), ns);
    wait_for(&format!("{type_}={status} {reason:?}"), 120, async || {
        let fe = api.get("flags").await.ok()?;
        let (s, r) = condition(&fe, type_)?;
        (s == status && reason.is_none_or(|want| want == r)).then_some(fe)
    })
    .await
}

async fn readyz(readiness: &Arc<Readiness>) -> (u16, String) {
    use tower::ServiceExt as _;
    let resp = health::router(readiness.clone(), Metrics::new())
        .oneshot(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn readyz_follows_the_api_server_and_shutdown() {
    let (_cp, client, ns, _) = setup("fe-readyz").await;
    let every = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let readiness = Arc::new(Readiness::default());
    readiness.spawn_api_check(client.clone(), every, Duration::from_secs(2), stop.clone());
    wait_for("ready", 30, async || readiness.ready().ok()).await;
    assert_eq!(readyz(&readiness).await, (200, "ready\n".to_owned()));

    // A client of an address nobody listens on: not ready, saying why.
    let dead =
        kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap();
    let unreachable = Arc::new(Readiness::default());
    let (status, body) = readyz(&unreachable).await;
    assert_eq!(status, 503);
    assert!(body.contains("not been reached yet"), "{body}");
    let dead_stop = CancellationToken::new();
    unreachable.spawn_api_check(dead, every, Duration::from_secs(2), dead_stop.clone());
    wait_for("the failed check", 30, async || {
        unreachable
            .ready()
            .err()
            .filter(|e| e.contains("unreachable"))
    })
    .await;
    let (status, body) = readyz(&unreachable).await;
    assert_eq!(status, 503);
    assert!(body.contains("API server is unreachable"), "{body}");
    dead_stop.cancel();

    stop.cancel();
    wait_for("not ready once stopping", 30, async || {
        readiness.ready().err().filter(|e| e == "shutting down")
    })
    .await;
    assert_eq!(readyz(&readiness).await.0, 503);
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn root_and_proxy_become_ready_with_hardened_pods() {
    let (cp, client, ns, _) = setup("fe-ready").await;
    descriptors(&client, &ns.name).await;
    database_secret(&client, &ns.name, "postgres://u:p@db:5432/flags").await;
    let started = Instant::now();
    create_fe(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "replicas": 2, "database": { "secretName": "db" } },
            "proxy": { "replicas": 1 },
            "cache": { "killTtl": "5s" }
        }),
    )
    .await
    .unwrap();
    let fe = wait_condition(&client, &ns.name, "Ready", "True", Some("AllReplicasReady")).await;
    eprintln!("apply -> Ready: {:?}", started.elapsed());
    let status = fe.status.unwrap();
    assert_eq!(status.mode.as_deref(), Some("root+proxy"));
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://flags-proxy.{}.svc:9201", ns.name).as_str())
    );
    assert_eq!(status.root.unwrap().summary, "2/2");
    assert_eq!(status.observed_generation, fe.metadata.generation);

    let out = cp
        .kubectl()
        .args([
            "-n",
            &ns.name,
            "wait",
            "--for=condition=Ready",
            "fe/flags",
            "--timeout=10s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let root = deployments.get("flags-root").await.unwrap();
    let pod = root.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(
        (sc.read_only_root_filesystem, sc.allow_privilege_escalation),
        (Some(true), Some(false))
    );
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    assert_eq!(
        pod.security_context.unwrap().seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );
    assert!(
        c.args
            .as_ref()
            .unwrap()
            .contains(&"--kill-ttl=5s".to_owned())
    );
    assert_eq!(
        c.env.as_ref().unwrap()[0].value.as_deref(),
        Some("/etc/pbflags/database/url")
    );
    let database = pod.volumes.iter().flatten().find(|v| v.name == "database");
    assert_eq!(
        database
            .unwrap()
            .secret
            .as_ref()
            .unwrap()
            .secret_name
            .as_deref(),
        Some("db")
    );
    let proxy = deployments.get("flags-proxy").await.unwrap();
    let args = proxy.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&format!("--server=http://flags-root.{}.svc:9201", ns.name)),
        "{args:?}"
    );
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    assert!(services.get("flags-root").await.is_ok() && services.get("flags-proxy").await.is_ok());
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name);
    assert!(pdbs.get("flags-root").await.is_ok());
    assert!(
        pdbs.get_opt("flags-proxy").await.unwrap().is_none(),
        "no PDB for a single replica"
    );
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn invalid_resources_are_rejected_with_the_cel_message() {
    let (_cp, client, ns, _) = setup("fe-invalid").await;
    let e = create_fe(
        &client,
        &ns.name,
        serde_json::json!({ "descriptors": { "configMapName": "flags" } }),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("needs a root tier"), "{e}");
    let e = create_fe(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "proxy": { "upstream": "ftp://nope" }
        }),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("proxy.upstream must be an http:// or https:// URL"),
        "{e}"
    );
    // A duration typo is refused at admission, not in a crash-looping pod; good ones pass.
    for (cache, field) in [
        (serde_json::json!({ "killTtl": "30 s" }), "cache.killTtl"),
        (serde_json::json!({ "flagTtl": "5mins" }), "cache.flagTtl"),
        (
            serde_json::json!({ "overrideTtl": "0s" }),
            "cache.overrideTtl",
        ),
        (
            serde_json::json!({ "fetchTimeout": "500" }),
            "cache.fetchTimeout",
        ),
    ] {
        let e = create_fe(
            &client,
            &ns.name,
            serde_json::json!({
                "descriptors": { "configMapName": "flags" },
                "proxy": { "upstream": "http://elsewhere:9201" },
                "cache": cache
            }),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{field} must be a duration greater than zero")),
            "{e}"
        );
    }
    let fine = create_fe(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "proxy": { "upstream": "http://elsewhere:9201" },
            "cache": { "killTtl": "1h30m", "flagTtl": "90s", "overrideTtl": "5m", "fetchTimeout": "500ms" }
        }),
    )
    .await
    .unwrap();
    // The schema's defaults are applied by the API server (and shown by kubectl explain).
    let cache = fine.spec.cache.as_ref().unwrap();
    assert_eq!(
        (cache.jitter_percent, cache.override_max_entries),
        (Some(20), Some(10000))
    );
    assert_eq!(fine.spec.descriptors.key.as_deref(), Some("descriptors.pb"));
    assert_eq!(fine.spec.proxy.as_ref().unwrap().replicas, Some(1));
    Api::<FlagEvaluator>::namespaced(client.clone(), &ns.name)
        .delete(&fine.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    let e = create_fe(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "database": { "secretName": "db" } },
            "proxy": { "upstream": "http://elsewhere:9201" }
        }),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("must be empty when spec.root is set"),
        "{e}"
    );
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn tls_serves_https_on_every_tier_from_a_secret_the_operator_never_reads() {
    let (_cp, client, ns, _) = setup("fe-tls").await;
    references(&client, &ns.name).await;
    create_fe(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "database": { "secretName": "db" } },
            "proxy": {},
            "tls": { "secretName": "flags-tls" }
        }),
    )
    .await
    .unwrap();
    // kwok's pods mount nothing: the Secret's absence shows on a real node (tier D), not here.
    let fe = wait_condition(&client, &ns.name, "Ready", "True", None).await;
    assert_eq!(
        fe.status.unwrap().endpoint.as_deref(),
        Some(format!("https://flags-proxy.{}.svc:9201", ns.name).as_str())
    );
    let proxy = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("flags-proxy")
        .await
        .unwrap();
    let args = proxy.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    for want in [
        format!("--server=https://flags-root.{}.svc:9201", ns.name),
        "--upstream-ca=/etc/pbflags/tls/ca.crt".to_owned(),
        "--upstream-ca-optional".to_owned(),
        "--tls-cert=/etc/pbflags/tls/tls.crt".to_owned(),
    ] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn drift_is_repaired_proxy_is_switched_off_and_deletion_collects_everything() {
    let (_cp, client, ns, _) = setup("fe-drift").await;
    descriptors(&client, &ns.name).await;
    let fe = create_ready(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "proxy": { "upstream": "http://root.elsewhere.svc:9201", "replicas": 2 }
        }),
    )
    .await;
    // Without a root (no database) the set is checked and published all the same.
    let d = fe.status.as_ref().unwrap().descriptors.clone().unwrap();
    assert_eq!(
        d.sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(pbflags_proto_bytes()))
    );
    assert!(d.root.is_none() && d.proxy.is_some(), "{d:?}");
    assert_eq!(
        condition(&fe, "DescriptorsAccepted"),
        Some(("True".into(), "Accepted".into()))
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);

    // Someone scales the owned Deployment by hand: the operator puts it back.
    let patch = serde_json::json!({ "spec": { "replicas": 5 } });
    deployments
        .patch(
            "flags-proxy",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    wait_for("drift repaired", 60, async || {
        let d = deployments.get("flags-proxy").await.ok()?;
        (d.spec?.replicas == Some(2)).then_some(())
    })
    .await;

    // Someone deletes the Service: it comes back.
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    services
        .delete("flags-proxy", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("Service recreated", 60, async || {
        services
            .get_opt("flags-proxy")
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;

    // Scale down to one replica: the PDB goes away.
    let fes = Api::<FlagEvaluator>::namespaced(client.clone(), &ns.name);
    let patch = serde_json::json!({ "spec": { "proxy": { "upstream": "http://root.elsewhere.svc:9201", "replicas": 1 } } });
    fes.patch("flags", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name);
    wait_for("PDB pruned", 60, async || {
        pdbs.get_opt("flags-proxy")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;

    // Delete the FlagEvaluator: the garbage collector removes what it owned.
    fes.delete("flags", &DeleteParams::background())
        .await
        .unwrap();
    wait_for("owned objects collected", 90, async || {
        let d = deployments.get_opt("flags-proxy").await.ok()?;
        let s = services.get_opt("flags-proxy").await.ok()?;
        (d.is_none() && s.is_none()).then_some(())
    })
    .await;
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn switching_the_proxy_off_removes_it_and_points_the_endpoint_at_the_root() {
    let (_cp, client, ns, _) = setup("fe-proxy").await;
    references(&client, &ns.name).await;
    create_ready(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "database": { "secretName": "db" } },
            "proxy": {}
        }),
    )
    .await;
    let fes = Api::<FlagEvaluator>::namespaced(client.clone(), &ns.name);
    fes.patch(
        "flags",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(serde_json::json!([{ "op": "remove", "path": "/spec/proxy" }]))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    wait_for("proxy removed", 60, async || {
        deployments
            .get_opt("flags-proxy")
            .await
            .ok()
            .and_then(|d| d.is_none().then_some(()))
    })
    .await;
    let fe = wait_for("endpoint on root", 60, async || {
        let fe = fes.get("flags").await.ok()?;
        (fe.status
            .as_ref()?
            .endpoint
            .as_deref()?
            .contains("flags-root"))
        .then_some(fe)
    })
    .await;
    assert_eq!(fe.status.unwrap().mode.as_deref(), Some("root"));
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn a_restarted_operator_makes_no_writes_to_a_settled_resource() {
    let (cp, client, ns, _) = setup("fe-quiet").await;
    references(&client, &ns.name).await;
    create_ready(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "database": { "secretName": "db" } }
        }),
    )
    .await;
    // What the operator last wrote to each object: its managed-fields entries. Other writers (the
    // Deployment controller's status updates) do not change them, so no settling time is needed.
    let own_writes = async || {
        let d = Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .get("flags-root")
            .await
            .unwrap();
        let s = Api::<Service>::namespaced(client.clone(), &ns.name)
            .get("flags-root")
            .await
            .unwrap();
        let f = Api::<FlagEvaluator>::namespaced(client.clone(), &ns.name)
            .get("flags")
            .await
            .unwrap();
        let ours = |m: &kube::api::ObjectMeta| -> String {
            let entries: Vec<_> = m
                .managed_fields
                .iter()
                .flatten()
                .filter(|e| e.manager.as_deref() == Some("pbflags-operator"))
                .map(|e| {
                    (
                        e.operation.clone(),
                        e.subresource.clone(),
                        e.time.clone(),
                        e.fields_v1.clone(),
                    )
                })
                .collect();
            assert!(!entries.is_empty(), "the operator wrote {:?}", m.name);
            format!("{entries:?}")
        };
        (ours(&d.metadata), ours(&s.metadata), ours(&f.metadata))
    };
    let before = own_writes().await;

    // A second operator process for this namespace lists everything there and reconciles the
    // FlagEvaluator once.
    let (task, metrics) = scoped_operator(&cp, &ns.name).await;
    reconciled_past(&metrics, 0).await;
    task.abort();
    let _ = task.await;
    assert_eq!(
        own_writes().await,
        before,
        "a settled FlagEvaluator is not written again"
    );
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn a_descriptors_update_touches_no_deployment() {
    let (cp, client, ns, _) = setup("fe-roll").await;
    references(&client, &ns.name).await;
    create_ready(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "database": { "secretName": "db" } },
            "proxy": {}
        }),
    )
    .await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let root_before = deployments.get("flags-root").await.unwrap();
    let proxy_before = deployments.get("flags-proxy").await.unwrap();

    // New descriptors: the evaluators hot-reload the mounted file; no Deployment changes. A
    // namespace-scoped operator's reconcile count says when the change has been handled.
    let (task, metrics) = scoped_operator(&cp, &ns.name).await;
    reconciled_past(&metrics, 0).await;
    let handled = metrics.reconciles();
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
    let patch = serde_json::json!({ "binaryData": { "descriptors.pb": k8s_openapi::ByteString(pbflags_proto_bytes()), "extra": k8s_openapi::ByteString(vec![1]) } });
    cms.patch("flags", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    reconciled_past(&metrics, handled).await;
    task.abort();
    let _ = task.await;
    assert_eq!(
        deployments
            .get("flags-root")
            .await
            .unwrap()
            .resource_version(),
        root_before.resource_version()
    );
    assert_eq!(
        deployments
            .get("flags-proxy")
            .await
            .unwrap()
            .resource_version(),
        proxy_before.resource_version()
    );

    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn migrations_run_as_a_job_before_the_root_rolls_out() {
    let (_cp, client, ns, _) = setup("fe-migrate").await;
    references(&client, &ns.name).await;
    create_fe(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "database": { "secretName": "db" }, "migrate": true }
        }),
    )
    .await
    .unwrap();
    let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &ns.name);
    let job = wait_for("migration Job", 60, async || {
        jobs.list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|j| j.name_any().starts_with("flags-migrate-"))
    })
    .await;
    let args = job.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args, ["migrate"]);
    // kwok completes the Job's pod; then the root rolls out and becomes ready.
    wait_condition(&client, &ns.name, "Ready", "True", None).await;
    let j = jobs.get(&job.metadata.name.unwrap()).await.unwrap();
    assert_eq!(j.status.unwrap().succeeded, Some(1));
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn transitions_are_recorded_as_events() {
    let (_cp, client, ns, _) = setup("fe-events").await;
    create_fe(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "database": { "secretName": "db" } }
        }),
    )
    .await
    .unwrap();
    wait_condition(
        &client,
        &ns.name,
        "Degraded",
        "True",
        Some("ConfigMapMissing"),
    )
    .await;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns.name);
    wait_for("a ConfigMapMissing warning event", 30, async || {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("ConfigMapMissing")
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|_| ())
    })
    .await;
    ns.delete(&client).await.unwrap();
}

fn lease_config(ns: &str, identity: &str) -> pbflags_operator::lease::LeaseConfig {
    pbflags_operator::lease::LeaseConfig {
        name: "pbflags-operator".into(),
        namespace: ns.to_owned(),
        identity: identity.into(),
        duration: Duration::from_secs(3),
        renew: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn only_one_replica_holds_the_lease() {
    use pbflags_operator::lease::Elector;
    let (_cp, client, ns, _) = setup("fe-lease").await;
    let elector = |identity: &str| Elector::new(client.clone(), lease_config(&ns.name, identity));
    let (mut a, mut b, mut c) = (elector("a"), elector("b"), elector("c"));
    assert!(a.try_acquire().await.unwrap());
    assert!(
        !b.try_acquire().await.unwrap(),
        "b must wait while a holds the lease"
    );
    assert!(a.try_acquire().await.unwrap(), "a renews");
    a.release().await.unwrap();
    assert!(
        b.try_acquire().await.unwrap(),
        "b takes over a released lease"
    );
    // A lease nobody renews is taken over once a contender has seen it unchanged for its whole
    // duration (by the contender's clock): c succeeds, and only after b stopped renewing.
    assert!(
        !c.try_acquire().await.unwrap(),
        "c must wait while b's lease is live"
    );
    let seen = Instant::now();
    wait_for("c takes over the expired lease", 30, async || {
        c.try_acquire().await.unwrap().then_some(())
    })
    .await;
    assert!(
        seen.elapsed() >= Duration::from_secs(3),
        "taken before its duration ran out"
    );
    assert!(!b.try_acquire().await.unwrap());
    ns.delete(&client).await.unwrap();
}

/// A client through which every call can be made to hang, as if the API server were black-holed.
fn blackholable(client: Client) -> (Client, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let holed = Arc::new(AtomicBool::new(false));
    let flag = holed.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let (client, holed) = (client.clone(), flag.load(Ordering::SeqCst));
        async move {
            if holed {
                std::future::pending::<()>().await;
            }
            client.send(req).await
        }
    });
    (Client::new(service, "default"), holed)
}

#[tokio::test]
async fn a_black_holed_leader_stops_before_the_follower_takes_over() {
    use pbflags_operator::lease::{Elector, acquire};
    let (_cp, client, ns, _) = setup("fe-lease-hole").await;
    let (leader_client, holed) = blackholable(client.clone());
    let stop = CancellationToken::new();
    let leader = acquire(
        Elector::new(leader_client, lease_config(&ns.name, "leader")),
        stop.clone(),
    )
    .await
    .unwrap();
    let follower = tokio::spawn(acquire(
        Elector::new(client.clone(), lease_config(&ns.name, "follower")),
        stop.clone(),
    ));
    // The leader holds it for a while (several renewals) and the follower does not get it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!leader.lost.is_cancelled() && !follower.is_finished());

    // The leader's API calls now hang: it gives up at its renew deadline, the follower takes
    // over once it has seen the lease unchanged for its duration, and in that order.
    let holed_at = Instant::now();
    holed.store(true, std::sync::atomic::Ordering::SeqCst);
    let lost = leader.lost.clone();
    let lost_at = async move {
        lost.cancelled().await;
        Instant::now()
    };
    let taken_at = async move {
        let held = follower.await.unwrap().unwrap();
        (Instant::now(), held)
    };
    let (lost_at, (taken_at, held)) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(lost_at, taken_at)
    })
    .await
    .expect("the follower takes over");
    eprintln!(
        "leader stopped {:.1?} and follower took over {:.1?} after the black hole",
        lost_at - holed_at,
        taken_at - holed_at
    );
    assert!(
        lost_at < taken_at,
        "the old leader was still active when the follower took over"
    );
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns.name)
            .get("pbflags-operator")
            .await
            .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("follower")
    );
    held.resign(Duration::from_secs(5)).await;
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn descriptor_updates_are_checked_then_published_and_the_last_of_rapid_updates_wins() {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    use sha2::Digest as _;
    let (_cp, client, ns, _) = setup("fe-rollout").await;
    references(&client, &ns.name).await;
    let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    let fes = Api::<FlagEvaluator>::namespaced(client.clone(), &ns.name);
    let published = async |fes: &Api<FlagEvaluator>| {
        fes.get("flags")
            .await
            .ok()?
            .status?
            .descriptors
            .map(|d| d.sha256)
    };
    // The first set is checked (kwok completes the check Job's pod) and published before any pod.
    let fe = create_ready(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "root": { "database": { "secretName": "db" } },
            "proxy": {}
        }),
    )
    .await;
    assert_eq!(
        fe.status
            .as_ref()
            .unwrap()
            .descriptors
            .as_ref()
            .unwrap()
            .sha256,
        sha(&pbflags_proto_bytes())
    );
    assert_eq!(
        condition(&fe, "DescriptorsAccepted"),
        Some(("True".into(), "Accepted".into()))
    );
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
    let copy = cms.get("flags-published-descriptors").await.unwrap();
    assert_eq!(
        copy.binary_data.unwrap()["descriptors.pb"].0,
        pbflags_proto_bytes()
    );

    // Three updates in a row: the last one is published, no check is left behind.
    let last = b"third set".to_vec();
    for content in [b"first set".to_vec(), b"second set".to_vec(), last.clone()] {
        let patch = serde_json::json!({ "binaryData": { "descriptors.pb": ByteString(content) } });
        cms.patch("flags", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    let want = sha(&last);
    wait_for("the last set published", 120, async || {
        (published(&fes).await? == want).then_some(())
    })
    .await;
    let jobs = Api::<Job>::namespaced(client.clone(), &ns.name);
    wait_for("no check Job or copy left", 60, async || {
        let selector =
            kube::api::ListParams::default().labels("pbflags.dev/descriptors-check=true");
        let j = jobs.list(&selector).await.ok()?.items.len();
        let c = cms.list(&selector).await.ok()?.items.len();
        (j == 0 && c == 0).then_some(())
    })
    .await;
    // The evaluator pods were told (their kubelet refreshes the volume at once).
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    wait_for("every evaluator pod nudged", 60, async || {
        let list = pods
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/instance=flags"))
            .await
            .ok()?;
        let evaluators: Vec<_> = list
            .items
            .iter()
            .filter(|p| {
                matches!(
                    p.labels()
                        .get("app.kubernetes.io/component")
                        .map(String::as_str),
                    Some("root" | "proxy")
                )
            })
            .collect();
        (!evaluators.is_empty()
            && evaluators
                .iter()
                .all(|p| p.annotations().get("pbflags.dev/descriptors-sha256") == Some(&want)))
        .then_some(())
    })
    .await;
    // The operator asks each ready pod which set it serves. kwok's pods run nothing, so none
    // answers: the status says so instead of claiming the rollout complete.
    let fe = wait_for("the pods' answers counted", 60, async || {
        let fe = fes.get("flags").await.ok()?;
        let d = fe.status.as_ref()?.descriptors.as_ref()?;
        let proxy = d.proxy.as_ref()?;
        (d.sha256 == want && proxy.ready >= 1).then_some(fe)
    })
    .await;
    let d = fe.status.as_ref().unwrap().descriptors.clone().unwrap();
    let (root, proxy) = (d.root.clone().unwrap(), d.proxy.clone().unwrap());
    assert_eq!((root.serving, proxy.serving), (0, 0), "{d:?}");
    assert_eq!(
        (root.unreachable, proxy.unreachable),
        (root.ready, proxy.ready)
    );
    assert_eq!(
        d.summary,
        format!("{} 0/{}", &want[..10], root.ready + proxy.ready)
    );
    let progressing = fe
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("True", "DescriptorRollout")
    );
    assert!(
        progressing.message.contains("did not answer"),
        "{}",
        progressing.message
    );

    // The key removed: degraded, naming it; the published set stays.
    let patch = serde_json::json!({ "binaryData": { "descriptors.pb": null, "other": ByteString(vec![1]) } });
    cms.patch("flags", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let fe = wait_condition(
        &client,
        &ns.name,
        "Degraded",
        "True",
        Some("ConfigMapKeyMissing"),
    )
    .await;
    assert!(degraded_message(&fe).contains("descriptors.pb"));
    let copy = cms.get("flags-published-descriptors").await.unwrap();
    assert_eq!(copy.annotations()["pbflags.dev/descriptors-sha256"], want);
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn a_service_account_made_by_hand_is_neither_taken_over_nor_collected() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let (_cp, client, ns, _) = setup("fe-names").await;
    descriptors(&client, &ns.name).await;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns.name);
    let mine = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some("flags-evaluator".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &mine)
        .await
        .unwrap();
    create_fe(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "proxy": { "upstream": "http://root.elsewhere.svc:9201" }
        }),
    )
    .await
    .unwrap();
    let fe = wait_condition(&client, &ns.name, "Degraded", "True", Some("NameConflict")).await;
    assert!(
        degraded_message(&fe).contains(&format!("ServiceAccount {}/flags-evaluator", ns.name)),
        "{}",
        degraded_message(&fe)
    );
    let untouched = accounts.get("flags-evaluator").await.unwrap();
    assert!(untouched.metadata.owner_references.is_none());
    assert!(untouched.labels().is_empty());
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .get_opt("flags-proxy")
            .await
            .unwrap()
            .is_none(),
        "nothing is deployed while a name is taken"
    );

    // The hand-made account gone, the FlagEvaluator gets its own (the operator looks again
    // within 30 s).
    accounts
        .delete("flags-evaluator", &DeleteParams::default())
        .await
        .unwrap();
    wait_condition(&client, &ns.name, "Ready", "True", None).await;
    let owned = accounts.get("flags-evaluator").await.unwrap();
    assert_eq!(
        owned.owner_references()[0].uid,
        fe.metadata.uid.clone().unwrap()
    );
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn an_autoscaled_proxy_tier_gets_an_autoscaler_that_goes_when_autoscaling_does() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    let (_cp, client, ns, _) = setup("fe-hpa").await;
    descriptors(&client, &ns.name).await;
    create_ready(
        &client,
        &ns.name,
        serde_json::json!({
            "descriptors": { "configMapName": "flags" },
            "proxy": {
                "upstream": "http://root.elsewhere.svc:9201",
                "autoscaling": { "minReplicas": 2, "maxReplicas": 4 }
            }
        }),
    )
    .await;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns.name);
    let hpa = hpas.get("flags-proxy").await.unwrap();
    assert_eq!(hpa.spec.scale_target_ref.name, "flags-proxy");
    assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(2), 4));

    // An invalid range is refused at admission.
    let e = Api::<FlagEvaluator>::namespaced(client.clone(), &ns.name)
        .patch(
            "flags",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": { "proxy": { "autoscaling": { "minReplicas": 5, "maxReplicas": 4 } } }
            })),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("minReplicas must not exceed maxReplicas"),
        "{e}"
    );

    // Autoscaling switched off: the autoscaler goes, fixed replicas come back.
    Api::<FlagEvaluator>::namespaced(client.clone(), &ns.name)
        .patch(
            "flags",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": { "proxy": { "autoscaling": null, "replicas": 3 } }
            })),
        )
        .await
        .unwrap();
    wait_for("the autoscaler pruned and 3 replicas", 60, async || {
        let gone = hpas.get_opt("flags-proxy").await.ok()?.is_none();
        let d = Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .get("flags-proxy")
            .await
            .ok()?;
        (gone && d.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    ns.delete(&client).await.unwrap();
}
