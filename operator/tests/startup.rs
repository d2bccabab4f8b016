//! Start-up: settings that cannot work exit 64 naming the setting; a cluster without the CRD or
//! without the right to list FlagEvaluators is refused with an install hint.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::convert::Infallible;
use std::process::Command;

use bytes::Bytes;
use http_body_util::Full;
use pbflags_operator::startup::{Unavailable, check_api};

/// A client whose every request the API server answers with `code`.
fn answering(code: u16) -> kube::Client {
    let service = tower::service_fn(move |_req: http::Request<kube::client::Body>| async move {
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("answer {code}"), "reason": "Test", "code": code,
        });
        Ok::<_, Infallible>(
            http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
    });
    kube::Client::new(service, "default")
}

#[tokio::test]
async fn a_cluster_without_the_crd_or_the_right_to_list_is_refused_with_a_hint() {
    let e = check_api(&answering(404), &[]).await.unwrap_err();
    assert!(matches!(e, Unavailable::NoCrd));
    assert!(e.to_string().contains("crds.enabled=true"), "{e}");
    let e = check_api(&answering(403), &["team-a".to_owned()])
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("in team-a") && text.contains("answer 403") && text.contains("rbac.create"),
        "{text}"
    );
    // Anything else (the API server not answering yet) is left to the watches' retries.
    assert!(check_api(&answering(503), &[]).await.is_ok());
}

fn operator(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_pbflags-operator"))
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .output()
        .unwrap()
}

#[test]
fn invalid_settings_exit_64_naming_the_setting() {
    for (args, named) in [
        (&["--log-level", "info,[[["][..], "--log-level"),
        (&["--metrics-addr", "not-an-address"][..], "--metrics-addr"),
        (&["--leader-election", "maybe"][..], "--leader-election"),
        // No in-cluster service account and no kubeconfig.
        (&[][..], "KUBECONFIG"),
    ] {
        let out = operator(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}
