//! The Rust helpers reach a real control plane: a client, a fresh namespace, server-side apply and
//! watch through kube-rs.

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use pbflags_e2e::{ControlPlane, TestNamespace};

#[tokio::test]
async fn kube_client_reaches_the_pinned_apiserver() {
    let cp = ControlPlane::ensure().unwrap();
    let client = cp.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "36")
    );
}

#[tokio::test]
async fn each_test_gets_a_namespace_for_apply_and_watch() {
    let cp = ControlPlane::ensure().unwrap();
    let client = cp.client().await.unwrap();
    let ns = TestNamespace::create(&cp, &client, "e2e-helpers")
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);

    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "applied" }, "data": { "k": "v" }
    }))
    .unwrap();
    let applied = api
        .patch(
            "applied",
            &PatchParams::apply("pbflags-e2e"),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["k"], "v");

    let seen = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(ev) = stream.next().await {
            if let Ok(WatchEvent::Added(cm)) = ev
                && cm.metadata.name.as_deref() == Some("applied")
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(seen, "the watch delivered the applied ConfigMap");
    ns.delete(&client).await.unwrap();
}
