//! Tier D, past the README: the images match what their Dockerfiles declare; the hardened pod is
//! what the runtime really runs; a rotated database Secret reaches the root pods while a client
//! keeps calling, without one failed Evaluate and without restarting any pod; a root pod deleted
//! under load is replaced while the proxy keeps answering; the proxy tier rolls without a loss.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "../../evaluator/tests/support/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use pbflags_e2e::eventually;
use pbflags_e2e::node::{
    self, ClientPod, Images, LoopSummary, NODE_IP, container_pid, evaluator_command, is_ready,
    tier_pods,
};
use pbflags_e2e::{ControlPlane, TestNamespace, Tier, repo_root};

const FLAG_EVALUATOR: &str = r#"
apiVersion: pbflags.dev/v1alpha1
kind: FlagEvaluator
metadata: {name: flags}
spec:
  descriptors: {configMapName: flag-descriptors}
  root: {replicas: 2, database: {secretName: flags-db}, migrate: true}
  proxy: {replicas: 2}
  cache: {killTtl: 10s}
"#;

/// Every answer in a loop was the value the database holds, fresh or from the proxy's cache.
fn assert_served(summary: &LoopSummary, what: &str) {
    assert_eq!(summary.failed, 0, "{what}: failed calls: {summary:?}");
    assert!(
        summary.answered() > 100,
        "{what}: too few answers: {summary:?}"
    );
    for key in summary.answers.keys() {
        assert!(
            key == r#"EVALUATION_SOURCE_GLOBAL {"stringValue":"weekly"}"#
                || key == r#"EVALUATION_SOURCE_CACHED {"stringValue":"weekly"}"#,
            "{what}: unexpected answer {key}: {summary:?}"
        );
    }
}

fn pod_uids(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect()
}

/// Waits until every pod of `tier` is a ready pod that is not in `before` (and the old ones are
/// gone); returns how long that took.
async fn rolled_onto_new_pods(
    admin: &kube::Client,
    n: &str,
    tier: &str,
    before: &[String],
) -> Duration {
    eventually(
        &format!("the {tier} tier to roll onto new pods"),
        Duration::from_secs(120),
        async || {
            let pods = tier_pods(admin, n, "flags", tier).await.unwrap_or_default();
            pods.len() == before.len()
                && pods
                    .iter()
                    .all(|p| is_ready(p) && !before.contains(p.metadata.uid.as_ref().unwrap()))
        },
    )
    .await
    .unwrap()
}

fn uid_and_restarts(pods: &[Pod]) -> BTreeMap<String, i32> {
    pods.iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum());
            (p.metadata.uid.clone().unwrap(), restarts)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_pods_survive_a_secret_rotation_and_a_deleted_root_under_load() {
    let cp = ControlPlane::ensure_tier(Tier::D).unwrap();
    let admin = cp.client().await.unwrap();
    let images = Images::load().unwrap();
    cp.install_operator(&images).unwrap();
    let ns = TestNamespace::create(&cp, &admin, "node").await.unwrap();
    let n = ns.name.as_str();
    let db = pg::PgServer::start_listening(Some(NODE_IP));
    let db_url = node::database_service(&cp, n, &db.url).unwrap();

    let pb = repo_root().join("proto/example/descriptors.pb");
    cp.run(
        n,
        &[
            "create",
            "configmap",
            "flag-descriptors",
            &format!("--from-file=descriptors.pb={}", pb.display()),
        ],
    )
    .unwrap();
    cp.run(
        n,
        &[
            "create",
            "secret",
            "generic",
            "flags-db",
            &format!("--from-literal=url={db_url}"),
        ],
    )
    .unwrap();
    cp.apply_flag_evaluator(n, "flags", FLAG_EVALUATOR).unwrap();
    let pb_bytes = std::fs::read(&pb).unwrap();
    evaluator_command(
        &cp,
        n,
        &images,
        &db_url,
        &["sync", "--descriptors=/dev/stdin"],
        &pb_bytes,
    )
    .unwrap();
    evaluator_command(
        &cp,
        n,
        &images,
        &db_url,
        &[
            "flags",
            "--actor",
            "e2e",
            "set",
            "notifications/2",
            "--value",
            "weekly",
        ],
        b"",
    )
    .unwrap();
    let endpoint = format!("http://flags-proxy.{n}.svc:9201");
    let client = ClientPod::start(&cp, n).unwrap();
    eventually(
        "the new value through the proxy",
        Duration::from_secs(30),
        async || {
            client
                .evaluate(&endpoint, "notifications/2")
                .is_ok_and(|v| v["value"]["stringValue"] == "weekly")
        },
    )
    .await
    .unwrap();

    // The kubelet serves the containers' logs: the root's start-up line names its mode.
    let logs = cp.run(n, &["logs", "deploy/flags-root"]).unwrap();
    assert!(
        logs.contains("serving gRPC, gRPC-Web and Connect") && logs.contains("root"),
        "root logs: {logs}"
    );

    // The hardened pod, as the kernel sees the evaluator process: uid 65532, no capabilities, no
    // privilege escalation, the RuntimeDefault seccomp filter, a read-only root filesystem.
    for pod in tier_pods(&admin, n, "flags", "root").await.unwrap() {
        let id = pod
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .container_id
            .clone()
            .unwrap();
        let pid = container_pid(&cp, &id).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Uid"), ["65532"; 4], "{status}");
        assert_eq!(field("Gid"), ["65532"; 4], "{status}");
        assert_eq!(field("CapEff"), ["0000000000000000"]);
        assert_eq!(field("CapPrm"), ["0000000000000000"]);
        assert_eq!(field("NoNewPrivs"), ["1"]);
        assert_eq!(field("Seccomp"), ["2"], "seccomp filter mode");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[4] == "/")
            .unwrap();
        assert!(root[5].split(',').any(|o| o == "ro"), "root mount {root:?}");
    }

    // A rotated database Secret (here: another user) reaches the root pods without a restart:
    // no pod of either tier is replaced or restarted, the client never sees a failure, and once
    // the old sessions end (as a DBA ends them after a rotation) the roots connect as the new user.
    let pool = pg::pool(&db.url).await;
    sqlx::query("CREATE ROLE rotated LOGIN IN ROLE pbflags")
        .execute(&pool)
        .await
        .unwrap();
    let rotated_url = db_url.replacen("://pbflags@", "://rotated@", 1);
    assert_ne!(rotated_url, db_url, "the in-cluster URL names its user");
    let mut pods_before = uid_and_restarts(&tier_pods(&admin, n, "flags", "root").await.unwrap());
    pods_before.extend(uid_and_restarts(
        &tier_pods(&admin, n, "flags", "proxy").await.unwrap(),
    ));
    let load = client.start_loop(&endpoint, "notifications/2", 40).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let changed = cp
        .run(
            n,
            &[
                "create",
                "secret",
                "generic",
                "flags-db",
                &format!("--from-literal=url={rotated_url}"),
                "--dry-run=client",
                "-o",
                "yaml",
            ],
        )
        .unwrap();
    cp.run_with_input(n, &["apply", "-f", "-"], changed.as_bytes())
        .unwrap();
    // The kubelet refreshes Secret volumes at its periodic sync (about a minute); a pod update
    // makes it do so at once, which keeps this test short.
    cp.run(
        n,
        &[
            "annotate",
            "pods",
            "-l",
            "app.kubernetes.io/component=root",
            "--overwrite",
            "pbflags.test/rotated=1",
        ],
    )
    .unwrap();
    let rotated = eventually(
        "the root pods to connect as the rotated user",
        Duration::from_secs(120),
        async || {
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = 'pbflags' AND application_name = 'pbflags-evaluator'",
            )
            .execute(&pool)
            .await;
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = 'rotated' AND application_name = 'pbflags-evaluator'",
            )
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n > 0)
        },
    )
    .await
    .unwrap();
    let summary = load.finish().unwrap();
    eprintln!(
        "secret rotated: roots connect as the new user after {rotated:.1?}; client loop {summary:?}"
    );
    assert_served(&summary, "through a database Secret rotation");
    let mut pods_after = uid_and_restarts(&tier_pods(&admin, n, "flags", "root").await.unwrap());
    pods_after.extend(uid_and_restarts(
        &tier_pods(&admin, n, "flags", "proxy").await.unwrap(),
    ));
    assert_eq!(pods_after, pods_before, "pods were replaced or restarted");

    // A root pod deleted under load: the proxy keeps answering, the Deployment replaces the pod.
    let victim = tier_pods(&admin, n, "flags", "root").await.unwrap()[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let load = client.start_loop(&endpoint, "notifications/2", 20).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cp.run(n, &["delete", "pod", &victim, "--wait=false"])
        .unwrap();
    let replaced = eventually(
        "a replacement root pod",
        Duration::from_secs(120),
        async || {
            let pods = tier_pods(&admin, n, "flags", "root")
                .await
                .unwrap_or_default();
            pods.iter().filter(|p| is_ready(p)).count() == 2
                && pods
                    .iter()
                    .all(|p| p.metadata.name.as_deref() != Some(victim.as_str()))
        },
    )
    .await
    .unwrap();
    let summary = load.finish().unwrap();
    eprintln!("root pod deleted: replaced in {replaced:.1?}; client loop {summary:?}");
    assert_served(&summary, "with a root pod deleted");

    // A rolling update of the proxy tier while the client calls the proxy Service: each old pod
    // keeps serving, not ready, for its shutdown delay while the Service's endpoints catch up,
    // and tells keep-alive clients to reconnect; no call fails.
    let proxies_before = pod_uids(&tier_pods(&admin, n, "flags", "proxy").await.unwrap());
    let load = client.start_loop(&endpoint, "notifications/2", 40).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cp.run(n, &["rollout", "restart", "deployment/flags-proxy"])
        .unwrap();
    let rolled = rolled_onto_new_pods(&admin, n, "proxy", &proxies_before).await;
    let summary = load.finish().unwrap();
    eprintln!("proxy tier rolled in {rolled:.1?}; client loop {summary:?}");
    assert_served(&summary, "through a rolling update of the proxy tier");

    ns.delete(&admin).await.unwrap();
}

/// One Dockerfile's final stage, as the image builder must honour it.
struct Declared {
    user: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    expose: Vec<String>,
    files: Vec<String>,
}

fn declared(dockerfile: &Path) -> Declared {
    let text = std::fs::read_to_string(dockerfile).unwrap();
    let stage = text.rsplit("\nFROM ").next().unwrap();
    let json = |key: &str| -> Vec<String> {
        stage
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .map(|v| serde_json::from_str(v).unwrap())
            .unwrap_or_default()
    };
    let words = |key: &str| -> Vec<String> {
        stage
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key} ")))
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    };
    Declared {
        user: words("USER").concat(),
        entrypoint: json("ENTRYPOINT"),
        cmd: json("CMD"),
        expose: words("EXPOSE"),
        files: stage
            .lines()
            .filter_map(|l| l.strip_prefix("COPY --from=build "))
            .map(|l| l.split_whitespace().last().unwrap().to_owned())
            .collect(),
    }
}

fn sh(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn images_hold_what_their_dockerfiles_declare() {
    for name in ["evaluator", "operator"] {
        let tar = sh(Command::new("bash")
            .arg(repo_root().join("e2e/images/build.sh"))
            .arg(name));
        let want = declared(&repo_root().join(name).join("Dockerfile"));
        let dir = tempfile::tempdir().unwrap();
        sh(Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(dir.path()));
        let blob = |digest: &str| {
            dir.path()
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"))
        };
        let json = |path: &Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        };
        let index = json(&dir.path().join("index.json"));
        assert_eq!(
            index["manifests"].as_array().unwrap().len(),
            1,
            "{name}: one image"
        );
        let manifest = json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
        let config = json(&blob(manifest["config"]["digest"].as_str().unwrap()));
        let c = &config["config"];
        assert_eq!(c["User"], want.user, "{name}: USER");
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!(want.entrypoint),
            "{name}: ENTRYPOINT"
        );
        if want.cmd.is_empty() {
            assert!(
                c["Cmd"].is_null(),
                "{name}: no CMD declared, got {}",
                c["Cmd"]
            );
        } else {
            assert_eq!(c["Cmd"], serde_json::json!(want.cmd), "{name}: CMD");
        }
        for port in &want.expose {
            assert!(
                c["ExposedPorts"].get(format!("{port}/tcp")).is_some(),
                "{name}: EXPOSE {port}"
            );
        }
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");

        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        for layer in manifest["layers"].as_array().unwrap() {
            sh(Command::new("tar")
                .arg("-xf")
                .arg(blob(layer["digest"].as_str().unwrap()))
                .arg("-C")
                .arg(&rootfs));
        }
        // The binary where the Dockerfile copies it, and every library it links.
        for file in &want.files {
            let path = rootfs.join(file.trim_start_matches('/'));
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).unwrap().permissions(),
            );
            assert!(mode & 0o111 != 0, "{name}: {file} is not executable");
            let libs = sh(Command::new("ldd").arg(&path));
            for lib in libs.split_whitespace().filter(|w| w.starts_with('/')) {
                assert!(
                    rootfs.join(lib.trim_start_matches('/')).exists(),
                    "{name}: {lib} missing"
                );
            }
        }
        // The nonroot user the Dockerfile runs as, and no shell.
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with("nonroot:x:65532:65532:")),
            "{name}: {passwd}"
        );
        for shell in [
            "bin/sh",
            "bin/bash",
            "bin/dash",
            "bin/busybox",
            "usr/bin/sh",
            "usr/bin/bash",
        ] {
            assert!(!rootfs.join(shell).exists(), "{name}: {shell} present");
        }
        assert!(
            rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file(),
            "{name}: CA bundle"
        );
    }
}
