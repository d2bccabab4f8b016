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
use pbflags_operator::reconcile::dereference::keyed_hash;
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

/// The fixture's ConfigMap and database Secret.
fn references(api: &FakeApi) {
    api.insert(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "flag-descriptors", "namespace": NS},
               "binaryData": {"descriptors.pb": "AA=="}}),
    );
    api.insert(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "flags-db", "namespace": NS, "uid": "db-uid-1"},
               "data": {"url": "cG9zdGdyZXM6Ly8="}}),
    );
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
    api.insert("flagevaluators", serde_json::to_value(fe).unwrap());
    reconcile(Arc::new(fe.clone()), context(api))
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
    assert!(
        !api.saw("GET", "/secrets/"),
        "the Secret is read only after the ConfigMap"
    );
}

#[tokio::test]
async fn a_missing_secret_key_is_reported_by_name() {
    let api = FakeApi::default();
    references(&api);
    api.insert(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "flags-db", "namespace": NS}, "data": {"other": "eA=="}}),
    );
    let fe = run(&api, &fixture()).await;
    assert_eq!(condition(&fe, "Degraded"), ("True", "SecretKeyMissing"));
    let message = &fe.status.as_ref().unwrap().conditions[0].message;
    assert!(
        fe.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.message.contains("team-a/flags-db") && c.message.contains("\"url\"")),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_database_ca_secret_or_key_is_reported_by_name() {
    let api = FakeApi::default();
    references(&api);
    let mut fe = fixture();
    fe.spec.root.as_mut().unwrap().database_ca = Some(pbflags_operator::crd::CaSecretRef {
        secret_name: "flags-db-ca".into(),
        key: None,
    });
    let after = run(&api, &fe).await;
    assert_eq!(condition(&after, "Degraded"), ("True", "SecretMissing"));
    let says = |after: &FlagEvaluator, text: &str| {
        after
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.message.contains(text))
    };
    assert!(says(
        &after,
        "team-a/flags-db-ca (spec.root.databaseCa.secretName)"
    ));

    api.insert(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "flags-db-ca", "namespace": NS}, "data": {"other": "eA=="}}),
    );
    let after = run(&api, &fe).await;
    assert_eq!(condition(&after, "Degraded"), ("True", "SecretKeyMissing"));
    assert!(says(
        &after,
        "has no key \"ca.crt\" (spec.root.databaseCa.key)"
    ));
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
               "metadata": {"name": "flags-root", "namespace": NS},
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
    assert!(api.saw("PATCH", &path("v1", NS, "serviceaccounts", "flags")));
    assert_eq!(condition(&fe, "Ready"), ("True", "AllReplicasReady"));
    let applied = api.get(&deployment("flags-root")).unwrap();
    let pod = &applied["spec"]["template"];
    let stored = pod["metadata"]["annotations"]["pbflags.dev/database-secret-hash"]
        .as_str()
        .expect("the Secret's hash reaches the root's pods");
    // Keyed with the Secret's uid: the plain hash of the value (which anyone reading the Deployment
    // could compare password guesses with) is not what is stored.
    let value = b"postgres://";
    let plain = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(value)[..8]);
    assert_ne!(stored, plain);
    assert_eq!(stored, keyed_hash("db-uid-1", value));
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
