//! Reconcile decisions against a fake API server: which objects are written, which are held
//! back or pruned, and the status that results. Fast (no cluster); the control-plane tests cover
//! the same paths against a real API server.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "support/fake_api.rs"]
mod fake_api;

use std::sync::Arc;

use fake_api::{FakeApi, path};
use http::Method;
use pbflags_operator::build::Defaults;
use pbflags_operator::crd::FlagEvaluator;
use pbflags_operator::metrics::Metrics;
use pbflags_operator::reconcile::{Context, reconcile};
use serde_json::{Value, json};

const NS: &str = "team-a";

fn fixture() -> FlagEvaluator {
    let path = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("tests/fixtures/root-and-proxy.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// SHA-256 of `content`, hex.
fn sha(content: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content))
}

/// The user's descriptors ConfigMap holding `content`.
fn descriptors(api: &FakeApi, content: &[u8]) {
    use base64::Engine as _;
    api.insert(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "flag-descriptors", "namespace": NS},
               "binaryData": {"descriptors.pb": base64::engine::general_purpose::STANDARD.encode(content)}}),
    );
}

/// The published copy of `content`, as an earlier reconcile left it.
fn published(api: &FakeApi, content: &[u8]) {
    api.insert(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "flags-published-descriptors", "namespace": NS,
                            "labels": {"app.kubernetes.io/managed-by": "pbflags-operator",
                                       "app.kubernetes.io/instance": "flags"},
                            "annotations": {"pbflags.dev/descriptors-sha256": sha(content),
                                            "pbflags.dev/descriptors-flags": "4"}}}),
    );
}

/// The fixture's ConfigMap, already published. (The database Secret is the pods' business.)
fn references(api: &FakeApi) {
    descriptors(api, &[0]);
    published(api, &[0]);
}

fn context(api: &FakeApi) -> Arc<Context> {
    Arc::new(Context::new(
        api.client(),
        Defaults {
            image: "pbflags-evaluator:test".into(),
        },
        Metrics::new(),
    ))
}

/// Runs one reconcile; returns the FlagEvaluator with the status the fake now holds.
async fn run(api: &FakeApi, fe: &FlagEvaluator) -> FlagEvaluator {
    run_with(api, fe, context(api)).await
}

/// [`run`] with the context `ctx`.
async fn run_with(api: &FakeApi, fe: &FlagEvaluator, ctx: Arc<Context>) -> FlagEvaluator {
    api.insert("flagevaluators", serde_json::to_value(fe).unwrap());
    reconcile(Arc::new(fe.clone()), ctx)
        .await
        .expect("reconcile succeeds");
    let mut after = fe.clone();
    if let Some(stored) = api.get(&path("pbflags.dev/v1alpha1", NS, "flagevaluators", "flags")) {
        after.status = Some(serde_json::from_value(stored["status"].clone()).unwrap());
    }
    after
}

fn condition<'a>(fe: &'a FlagEvaluator, type_: &str) -> (&'a str, &'a str) {
    let c = fe
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap();
    (c.status.as_str(), c.reason.as_str())
}

fn deployment(name: &str) -> String {
    path("apps/v1", NS, "deployments", name)
}

fn replicas_status(n: i32) -> Value {
    json!({"replicas": n, "readyReplicas": n, "updatedReplicas": n})
}

#[tokio::test]
async fn a_missing_config_map_writes_no_objects_and_says_so() {
    let api = FakeApi::default();
    let fe = run(&api, &fixture()).await;
    assert_eq!(condition(&fe, "Degraded"), ("True", "ConfigMapMissing"));
    assert_eq!(condition(&fe, "Ready"), ("False", "ConfigMapMissing"));
    let writes: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH") && !r.ends_with("/status"))
        .collect();
    assert!(writes.is_empty(), "nothing is applied: {writes:?}");
}

/// A pod of the fixture's root tier, scheduled a minute ago, with `status` merged in.
fn root_pod(api: &FakeApi, name: &str, status: Value) {
    let scheduled =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60);
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"app.kubernetes.io/managed-by": "pbflags-operator",
                                "app.kubernetes.io/instance": "flags",
                                "app.kubernetes.io/name": "pbflags-evaluator",
                                "app.kubernetes.io/component": "root"}},
        "status": {"phase": "Pending",
                   "conditions": [{"type": "PodScheduled", "status": "True",
                                   "lastTransitionTime": scheduled.to_string()}]}});
    for (k, v) in status.as_object().unwrap() {
        pod["status"][k] = v.clone();
    }
    api.insert("pods", pod);
}

fn says(fe: &FlagEvaluator, type_: &str, text: &str) -> bool {
    fe.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.message.contains(text))
}

#[tokio::test]
async fn a_secret_the_kubelet_cannot_mount_is_reported_from_the_pods_events_by_field() {
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("jobs", json!({"succeeded": 1}));
    api.status_on_apply(
        "deployments",
        json!({"replicas": 2, "readyReplicas": 0, "updatedReplicas": 2}),
    );
    root_pod(
        &api,
        "flags-root-b",
        json!({"containerStatuses": [{"name": "evaluator", "image": "i", "imageID": "",
               "ready": false, "restartCount": 0,
               "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
    );
    let event = |name: &str, pod: &str, message: &str| {
        json!({"apiVersion": "v1", "kind": "Event",
               "metadata": {"name": name, "namespace": NS},
               "involvedObject": {"kind": "Pod", "name": pod, "namespace": NS},
               "type": "Warning", "reason": "FailedMount", "message": message,
               "lastTimestamp": "2026-01-01T00:00:00Z"})
    };
    api.insert(
        "events",
        event(
            "e1",
            "flags-root-b",
            "MountVolume.SetUp failed for volume \"database\" : secret \"flags-db\" not found",
        ),
    );
    api.insert(
        "events",
        event(
            "e2",
            "someone-else",
            "MountVolume.SetUp failed for volume \"tls\" : secret \"x\" not found",
        ),
    );
    let fe = run(&api, &fixture()).await;
    assert_eq!(condition(&fe, "Degraded"), ("True", "SecretMissing"));
    assert_eq!(condition(&fe, "Ready"), ("False", "SecretMissing"));
    assert!(
        says(
            &fe,
            "Ready",
            "pod flags-root-b does not start: FailedMount: MountVolume.SetUp failed for volume \"database\" : secret \"flags-db\" not found (spec.root.database.secretName)"
        ),
        "{:?}",
        fe.status
    );
    assert!(
        !api.requests().iter().any(|r| r.contains("/secrets")),
        "the operator never asks for a Secret: {:?}",
        api.requests()
    );

    // A container that keeps exiting comes before a pod in creation (pods by name), with its
    // last words.
    root_pod(
        &api,
        "flags-root-a",
        json!({"phase": "Running", "containerStatuses": [{"name": "evaluator", "image": "i",
               "imageID": "", "ready": false, "restartCount": 4,
               "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}},
               "lastState": {"terminated": {"exitCode": 1,
                   "message": "error: database: invalid database URL (not a URL)"}}}]}),
    );
    let fe = run(&api, &fixture()).await;
    assert_eq!(condition(&fe, "Ready"), ("False", "PodNotStarting"));
    assert!(says(
        &fe,
        "Ready",
        "pod flags-root-a does not start: container evaluator CrashLoopBackOff: exited with code 1: error: database: invalid database URL (not a URL)"
    ));

    // Once every pod is ready, nothing is asked about pods' starts.
    for name in ["flags-root", "flags-proxy"] {
        let mut d = api.get(&deployment(name)).unwrap();
        d["status"] = replicas_status(3);
        api.insert("deployments", d);
    }
    api.clear_requests();
    let fe = run(&api, &fixture()).await;
    assert_eq!(condition(&fe, "Ready"), ("True", "AllReplicasReady"));
    assert!(!api.saw("GET", "/events"), "{:?}", api.requests());
}

#[tokio::test]
async fn while_migrations_run_the_root_is_held_back_and_the_proxy_rolls_out() {
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("jobs", json!({"active": 1}));
    api.status_on_apply("deployments", replicas_status(3));
    let fe = run(&api, &fixture()).await;
    assert!(
        api.saw("PATCH", "/jobs/flags-migrate-"),
        "{:?}",
        api.requests()
    );
    assert!(
        !api.saw("PATCH", &deployment("flags-root")),
        "root not applied"
    );
    assert!(
        api.saw("GET", &deployment("flags-root")),
        "existing root read for status"
    );
    assert!(api.saw("PATCH", &deployment("flags-proxy")));
    assert_eq!(condition(&fe, "Ready"), ("False", "Migrating"));
    assert_eq!(condition(&fe, "Degraded"), ("False", "AsExpected"));
    let status = fe.status.as_ref().unwrap();
    assert!(status.root.is_none(), "no root Deployment exists yet");
    assert_eq!(
        status.proxy.as_ref().map(|t| t.summary.as_str()),
        Some("3/3")
    );
}

#[tokio::test]
async fn a_failed_migration_degrades_and_keeps_the_existing_root() {
    let api = FakeApi::default();
    references(&api);
    api.insert(
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "flags-root", "namespace": NS,
                            "ownerReferences": [{"apiVersion": "pbflags.dev/v1alpha1",
                                "kind": "FlagEvaluator", "name": "flags", "controller": true,
                                "uid": "11111111-2222-3333-4444-555555555555"}]},
               "spec": {"replicas": 2}, "status": replicas_status(2)}),
    );
    api.status_on_apply("jobs", json!({"failed": 5}));
    let fe = run(&api, &fixture()).await;
    assert_eq!(condition(&fe, "Degraded"), ("True", "MigrationFailed"));
    assert!(!api.saw("PATCH", &deployment("flags-root")));
    assert_eq!(
        fe.status
            .as_ref()
            .unwrap()
            .root
            .as_ref()
            .map(|t| t.summary.as_str()),
        Some("2/2"),
        "the running root is still reported"
    );
}

#[tokio::test]
async fn after_migrations_every_tier_is_applied_and_ready() {
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("jobs", json!({"succeeded": 1}));
    api.status_on_apply("deployments", replicas_status(3));
    let fe = run(&api, &fixture()).await;
    for name in ["flags-root", "flags-proxy"] {
        assert!(api.saw("PATCH", &deployment(name)));
        assert!(api.saw("PATCH", &path("v1", NS, "services", name)));
        assert!(api.saw(
            "PATCH",
            &path("policy/v1", NS, "poddisruptionbudgets", name)
        ));
    }
    assert!(api.saw(
        "PATCH",
        &path("v1", NS, "serviceaccounts", "flags-evaluator")
    ));
    assert_eq!(condition(&fe, "Ready"), ("True", "AllReplicasReady"));
    let order: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH") && !r.ends_with("/status"))
        .collect();
    let at = |frag: &str| order.iter().position(|r| r.contains(frag)).unwrap();
    assert!(
        at("/services/") < at("/jobs/") && at("/jobs/") < at("/deployments/"),
        "{order:?}"
    );
}

#[tokio::test]
async fn owned_objects_no_longer_wanted_are_pruned_and_others_are_not() {
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("jobs", json!({"succeeded": 1}));
    let owned = json!({"app.kubernetes.io/managed-by": "pbflags-operator",
                       "app.kubernetes.io/instance": "flags"});
    for (name, labels) in [
        ("flags-old", owned.clone()),
        ("someone-elses", json!({"app": "x"})),
        (
            "other-instance",
            json!({"app.kubernetes.io/managed-by": "pbflags-operator",
                   "app.kubernetes.io/instance": "other"}),
        ),
    ] {
        api.insert(
            "deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": name, "namespace": NS, "labels": labels}}),
        );
    }
    let mut fe = fixture();
    fe.spec.proxy = None;
    run(&api, &fe).await;
    assert!(api.saw("DELETE", &deployment("flags-old")));
    assert!(!api.saw("DELETE", "someone-elses") && !api.saw("DELETE", "other-instance"));
    assert!(
        !api.saw("DELETE", &deployment("flags-root")),
        "a wanted tier is kept"
    );
}

#[tokio::test]
async fn an_unchanged_world_writes_no_status() {
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("jobs", json!({"succeeded": 1}));
    api.status_on_apply("deployments", replicas_status(3));
    let first = run(&api, &fixture()).await;
    assert!(api.saw("PATCH", "/flagevaluators/flags/status"));
    api.clear_requests();
    run(&api, &first).await;
    assert!(
        !api.saw("PATCH", "/flagevaluators/flags/status"),
        "{:?}",
        api.requests()
    );
}

#[tokio::test]
async fn a_failed_write_fails_the_reconcile_and_names_the_object() {
    let api = FakeApi::default();
    references(&api);
    api.fail(Method::PATCH, "/services/flags-root");
    let err = reconcile(Arc::new(fixture()), context(&api))
        .await
        .expect_err("the write failed");
    assert_eq!(err.category(), "api");
    assert!(
        err.to_string().contains("apply Service team-a/flags-root"),
        "{err}"
    );
    assert!(
        !api.saw("PATCH", "/deployments/"),
        "nothing after the failure is written"
    );
}

// ---- descriptor rollouts -----------------------------------------------------------------------

/// A check Job's pod with `report` as its termination message.
fn check_pod(api: &FakeApi, job: &str, report: &str) {
    api.insert(
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{job}-x1"), "namespace": NS, "labels": {"job-name": job}},
               "status": {"containerStatuses": [{"name": "evaluator", "image": "i", "imageID": "",
                   "ready": false, "restartCount": 0,
                   "state": {"terminated": {"exitCode": 65, "message": report,
                                            "finishedAt": "2026-12-02T00:00:00Z"}}}]}}),
    );
}

fn check_job_name(content: &[u8]) -> String {
    format!("flags-check-{}", &sha(content)[..10])
}

fn published_sha(api: &FakeApi) -> Option<String> {
    api.get(&path("v1", NS, "configmaps", "flags-published-descriptors"))
        .and_then(|cm| {
            cm["metadata"]["annotations"]["pbflags.dev/descriptors-sha256"]
                .as_str()
                .map(str::to_owned)
        })
}

#[tokio::test]
async fn a_new_set_is_checked_by_a_job_then_published_and_the_check_cleaned_up() {
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("deployments", replicas_status(3));
    let mut fe = fixture();
    fe.spec.root.as_mut().unwrap().migrate = None;
    let new = b"new descriptors";
    descriptors(&api, new);
    // 1. A check Job (sync into the root's database) on a copy of exactly this content; the pods
    // keep the published set.
    api.status_on_apply("jobs", json!({"active": 1}));
    let fe = run(&api, &fe).await;
    let job = api
        .get(&path("batch/v1", NS, "jobs", &check_job_name(new)))
        .expect("check Job");
    let args = &job["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "sync", "{args}");
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--report=/dev/termination-log")
    );
    let copy = format!("flags-candidate-descriptors-{}", &sha(new)[..10]);
    let volume = &job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"];
    assert_eq!(volume, copy.as_str());
    assert_eq!(published_sha(&api), Some(sha(&[0])));
    assert_eq!(
        condition(&fe, "DescriptorsAccepted"),
        ("Unknown", "DescriptorRollout")
    );
    assert_eq!(condition(&fe, "Progressing"), ("True", "DescriptorRollout"));
    assert_eq!(
        condition(&fe, "Ready"),
        ("True", "AllReplicasReady"),
        "the pods still serve"
    );
    let status = fe.status.as_ref().unwrap().descriptors.clone().unwrap();
    assert_eq!(status.pending, Some(sha(new)));

    // 2. It passed: published with the reported flag count; the check and its copy are deleted.
    api.insert(
        "jobs",
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": check_job_name(new), "namespace": NS,
                            "labels": {"app.kubernetes.io/managed-by": "pbflags-operator",
                                       "app.kubernetes.io/instance": "flags",
                                       "pbflags.dev/descriptors-check": "true"}},
               "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}),
    );
    check_pod(
        &api,
        &check_job_name(new),
        &format!(
            "{{\"accepted\":true,\"sha256\":\"{}\",\"flags\":7}}",
            sha(new)
        ),
    );
    let fe = run(&api, &fe).await;
    assert_eq!(published_sha(&api), Some(sha(new)));
    assert_eq!(condition(&fe, "DescriptorsAccepted"), ("True", "Accepted"));
    let status = fe.status.as_ref().unwrap().descriptors.clone().unwrap();
    assert_eq!(status.flags, Some(7));
    assert_eq!(status.summary, format!("{} 0/0", &sha(new)[..10]));
    assert_eq!(status.pending, None);
    assert!(api.saw("DELETE", &format!("/jobs/{}", check_job_name(new))));
    assert!(api.saw("DELETE", &format!("/configmaps/{copy}")));
}

#[tokio::test]
async fn a_refused_set_never_reaches_the_pods_and_allow_breaking_lets_it_through() {
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("deployments", replicas_status(3));
    let new = b"breaking descriptors";
    descriptors(&api, new);
    let fixture = || {
        let mut fe = fixture();
        fe.spec.root.as_mut().unwrap().migrate = None;
        fe
    };
    api.insert(
        "jobs",
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": check_job_name(new), "namespace": NS,
                            "labels": {"app.kubernetes.io/managed-by": "pbflags-operator",
                                       "app.kubernetes.io/instance": "flags",
                                       "pbflags.dev/descriptors-check": "true"}},
               "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}}),
    );
    check_pod(
        &api,
        &check_job_name(new),
        r#"{"accepted":false,"refused":true,"reason":"breaking changes refused (use --allow-breaking to apply them):\n  notifications/3: type INT64 -> STRING"}"#,
    );
    let fe = run(&api, &fixture()).await;
    assert_eq!(
        published_sha(&api),
        Some(sha(&[0])),
        "the published set stays"
    );
    assert_eq!(
        condition(&fe, "DescriptorsAccepted"),
        ("False", "DescriptorsRefused")
    );
    assert_eq!(condition(&fe, "Degraded"), ("True", "DescriptorsRefused"));
    assert_eq!(
        condition(&fe, "Ready"),
        ("True", "AllReplicasReady"),
        "the pods still serve"
    );
    let message = fe
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "DescriptorsAccepted")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("notifications/3") && message.contains(&sha(&[0])[..10]),
        "{message}"
    );
    assert!(
        !api.saw("DELETE", "/jobs/"),
        "the refused check is kept for inspection"
    );

    // allowBreaking: a new check (a new Job name), with --allow-breaking.
    let mut fe2 = fixture();
    fe2.spec.descriptors.allow_breaking = Some(true);
    api.status_on_apply("jobs", json!({"active": 1}));
    run(&api, &fe2).await;
    let name = format!("{}-breaking", check_job_name(new));
    let job = api
        .get(&path("batch/v1", NS, "jobs", &name))
        .expect("a new check");
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .clone();
    assert!(args.iter().any(|a| a == "--allow-breaking"), "{args:?}");
    assert!(
        api.saw("DELETE", &format!("/jobs/{}", check_job_name(new))),
        "the old check is pruned"
    );
}

#[tokio::test]
async fn a_proxy_only_evaluator_checks_without_a_database_and_waits_for_its_first_set() {
    use base64::Engine as _;
    let api = FakeApi::default();
    let fe: FlagEvaluator = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/proxy-only.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let ns = "team-b";
    api.insert(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "flag-descriptors", "namespace": ns},
               "binaryData": {"flags.pb": base64::engine::general_purpose::STANDARD.encode(b"first set")}}),
    );
    api.status_on_apply("jobs", json!({"active": 1}));
    api.insert("flagevaluators", serde_json::to_value(&fe).unwrap());
    reconcile(Arc::new(fe.clone()), context(&api))
        .await
        .unwrap();
    let name = format!("edge-check-{}", &sha(b"first set")[..10]);
    let job = api
        .get(&path("batch/v1", ns, "jobs", &name))
        .expect("a check Job");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "descriptors");
    assert!(c["env"].is_null(), "no database: {c}");
    assert!(
        !api.saw("PATCH", "/deployments/"),
        "no pod before a set is published"
    );
    let stored = api
        .get(&path("pbflags.dev/v1alpha1", ns, "flagevaluators", "edge"))
        .unwrap();
    let ready = stored["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("DescriptorRollout"))
    );
}

#[tokio::test]
async fn a_configmap_someone_else_made_under_the_published_name_is_not_taken_over() {
    let api = FakeApi::default();
    references(&api);
    api.insert(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "flags-published-descriptors", "namespace": NS}}),
    );
    let fe = run(&api, &fixture()).await;
    assert_eq!(
        condition(&fe, "DescriptorsAccepted"),
        ("False", "DescriptorsCheckFailed")
    );
    assert!(!api.saw("PATCH", "/configmaps/flags-published-descriptors"));
    assert!(!api.saw("PATCH", "/deployments/"));
}

#[tokio::test]
async fn evaluator_pods_are_told_of_a_newly_published_set_once() {
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("deployments", replicas_status(1));
    api.status_on_apply("jobs", json!({"succeeded": 1}));
    let pod = |name: &str, component: &str, sha: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NS,
                            "labels": {"app.kubernetes.io/instance": "flags",
                                       "app.kubernetes.io/name": "pbflags-evaluator",
                                       "app.kubernetes.io/component": component},
                            "annotations": {"pbflags.dev/descriptors-sha256": sha}}})
    };
    api.insert("pods", pod("flags-root-a", "root", "old"));
    api.insert("pods", pod("flags-proxy-b", "proxy", &sha(&[0])));
    api.insert("pods", pod("flags-migrate-c", "job", "old"));
    run(&api, &fixture()).await;
    assert!(
        api.saw("PATCH", "/pods/flags-root-a"),
        "{:?}",
        api.requests()
    );
    assert!(!api.saw("PATCH", "/pods/flags-proxy-b"), "already told");
    assert!(
        !api.saw("PATCH", "/pods/flags-migrate-c"),
        "not an evaluator"
    );
}

/// An evaluator pod of `component` at `ip`, ready or not, already told of `sha`.
fn evaluator_pod(name: &str, component: &str, ip: &str, ready: bool, sha: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS,
                        "labels": {"app.kubernetes.io/instance": "flags",
                                   "app.kubernetes.io/name": "pbflags-evaluator",
                                   "app.kubernetes.io/component": component},
                        "annotations": {"pbflags.dev/descriptors-sha256": sha}},
           "status": {"podIP": ip,
                      "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

/// Answers `GET /descriptors` on a free loopback port with the SHA-256 in `served`.
async fn descriptors_endpoint(served: Arc<std::sync::Mutex<String>>) -> u16 {
    let app = axum::Router::new().route(
        "/descriptors",
        axum::routing::get(move || {
            let sha = served.lock().unwrap().clone();
            async move { json!({"sha256": sha, "flags": 4}).to_string() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test]
async fn status_counts_the_ready_pods_that_serve_the_published_set_per_tier() {
    let api = FakeApi::default();
    references(&api);
    // The Deployments report every replica ready; the pods below are what the probe asks.
    api.status_on_apply("deployments", replicas_status(3));
    api.status_on_apply("jobs", json!({"succeeded": 1}));
    let new = sha(&[0]);
    let served = Arc::new(std::sync::Mutex::new("old".to_owned()));
    let port = descriptors_endpoint(served.clone()).await;
    // Pods at 127.0.0.1 reach the endpoint; nothing listens on 127.0.0.2 at that port.
    api.insert(
        "pods",
        evaluator_pod("flags-root-a", "root", "127.0.0.1", true, &new),
    );
    api.insert(
        "pods",
        evaluator_pod("flags-root-b", "root", "127.0.0.1", false, &new),
    );
    api.insert(
        "pods",
        evaluator_pod("flags-proxy-a", "proxy", "127.0.0.1", true, &new),
    );
    api.insert(
        "pods",
        evaluator_pod("flags-proxy-b", "proxy", "127.0.0.2", true, &new),
    );
    let ctx = || {
        Arc::new(
            Context::new(
                api.client(),
                Defaults {
                    image: "pbflags-evaluator:test".into(),
                },
                Metrics::new(),
            )
            .probing_port(port),
        )
    };

    // The pods still serve the old set: Ready, but Progressing until they take up the new one.
    let fe = run_with(&api, &fixture(), ctx()).await;
    let d = fe.status.as_ref().unwrap().descriptors.clone().unwrap();
    assert_eq!(d.summary, format!("{} 0/3", &new[..10]));
    let (root, proxy) = (d.root.unwrap(), d.proxy.unwrap());
    assert_eq!((root.ready, root.serving, root.unreachable), (1, 0, 0));
    assert_eq!((proxy.ready, proxy.serving, proxy.unreachable), (2, 0, 1));
    assert_eq!(proxy.summary, "0/2");
    assert_eq!(condition(&fe, "Ready"), ("True", "AllReplicasReady"));
    assert_eq!(condition(&fe, "Progressing"), ("True", "DescriptorRollout"));
    let message = &fe.status.as_ref().unwrap().conditions[1].message;
    assert!(
        message.contains("served by 0 of 3 ready pods (root 0/1, proxy 0/2)")
            && message.contains("1 did not answer")
            && message.contains("127.0.0.2"),
        "{message}"
    );

    // Once they serve it, the count follows; the pod that cannot be reached still keeps the
    // rollout from being complete.
    *served.lock().unwrap() = new.clone();
    let fe = run_with(&api, &fe, ctx()).await;
    let d = fe.status.as_ref().unwrap().descriptors.clone().unwrap();
    assert_eq!(d.summary, format!("{} 2/3", &new[..10]));
    assert_eq!(d.root.unwrap().summary, "1/1");
    assert_eq!(condition(&fe, "Progressing"), ("True", "DescriptorRollout"));

    // Once that pod is no longer ready, every ready pod serves it: the rollout is complete.
    api.insert(
        "pods",
        evaluator_pod("flags-proxy-b", "proxy", "127.0.0.2", false, &new),
    );
    let fe = run_with(&api, &fe, ctx()).await;
    let d = fe.status.as_ref().unwrap().descriptors.clone().unwrap();
    assert_eq!(d.summary, format!("{} 2/2", &new[..10]));
    assert_eq!(d.proxy.unwrap().summary, "1/1");
    assert_eq!(condition(&fe, "Progressing"), ("False", "AsExpected"));
}

#[tokio::test]
async fn an_object_someone_else_made_under_a_needed_name_is_not_taken_over() {
    let api = FakeApi::default();
    references(&api);
    // A ServiceAccount made by hand, and a Service controlled by another FlagEvaluator.
    api.insert(
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "flags-evaluator", "namespace": NS}}),
    );
    api.insert(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "flags-proxy", "namespace": NS,
                            "ownerReferences": [{"apiVersion": "pbflags.dev/v1alpha1",
                                "kind": "FlagEvaluator", "name": "other", "uid": "other-uid",
                                "controller": true}]}}),
    );
    let fe = run(&api, &fixture()).await;
    assert_eq!(condition(&fe, "Degraded"), ("True", "NameConflict"));
    assert_eq!(condition(&fe, "Ready"), ("False", "NameConflict"));
    let message = &fe.status.as_ref().unwrap().conditions[0].message;
    assert!(
        message.contains("ServiceAccount team-a/flags-evaluator")
            && message.contains("Service team-a/flags-proxy"),
        "{message}"
    );
    for kind in [
        "serviceaccounts",
        "services",
        "deployments",
        "jobs",
        "configmaps",
    ] {
        assert!(!api.saw("PATCH", &format!("/{kind}/")), "{kind} written");
    }

    // Once the hand-made objects are gone, the FlagEvaluator gets its own.
    let api = FakeApi::default();
    references(&api);
    api.status_on_apply("deployments", replicas_status(3));
    api.status_on_apply("jobs", json!({"succeeded": 1}));
    let fe = run(&api, &fixture()).await;
    assert_eq!(condition(&fe, "Degraded"), ("False", "AsExpected"));
    assert!(api.saw("PATCH", "/serviceaccounts/flags-evaluator"));
}
