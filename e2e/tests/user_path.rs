//! The README's path from zero to a running FlagEvaluator, step by step. Kubernetes steps run
//! against the local control plane; pods there are kwok's, so the evaluation steps run evaluators
//! in this process with exactly the arguments the operator put into the Deployments (read back from
//! the API), with the descriptor volume and the database Secret materialised locally.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "../../evaluator/tests/support/pg.rs"]
mod pg;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use http_body_util::{BodyExt as _, Full};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use pbflags_e2e::{ControlPlane, TestNamespace, repo_root};
use pbflags_operator::build::Defaults;
use pbflags_operator::controller::{self, Context};
use pbflags_operator::metrics::Metrics;
use tokio_util::sync::CancellationToken;

fn kubectl(cp: &ControlPlane, ns: &str, args: &[&str]) -> String {
    let out = cp.kubectl().args(["-n", ns]).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `content` into `dir` the way the kubelet updates a ConfigMap volume.
fn kubelet_write(dir: &Path, key: &str, content: &[u8], generation: u32) {
    let ts = format!("..2026_11_27_00_00_{generation:02}.000000001");
    std::fs::create_dir(dir.join(&ts)).unwrap();
    std::fs::write(dir.join(&ts).join(key), content).unwrap();
    let _ = std::fs::remove_file(dir.join("..data_tmp"));
    std::os::unix::fs::symlink(&ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if !dir.join(key).exists() {
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
}

#[derive(clap::Parser)]
struct EvaluatorCli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Serve(Box<pbflags_evaluator::config::ServeArgs>),
}

/// Starts an evaluator with a container's args, changed only where the pod's world differs from
/// this process: the mount path of the descriptors, the listen address (loopback), the upstream.
async fn start_evaluator(
    args: &[String],
    descriptors_dir: &Path,
    upstream: Option<&str>,
) -> (String, CancellationToken) {
    let mut argv = vec!["pbflags-evaluator".to_owned()];
    for a in args {
        let a = if let Some(rest) = a.strip_prefix("--descriptors=/etc/pbflags/descriptors/") {
            format!("--descriptors={}", descriptors_dir.join(rest).display())
        } else if a.starts_with("--listen=") {
            "--listen=127.0.0.1:0".to_owned()
        } else if let (Some(_), Some(up)) = (a.strip_prefix("--server="), upstream) {
            format!("--server={up}")
        } else {
            a.clone()
        };
        argv.push(a);
    }
    let Sub::Serve(serve_args) = EvaluatorCli::try_parse_from(&argv).unwrap().command;
    let config = serve_args.resolve().unwrap();
    let prepared = pbflags_evaluator::serve::prepare(config).await.unwrap();
    let url = format!("http://{}", prepared.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(pbflags_evaluator::serve::run(prepared, stop.clone()));
    (url, stop)
}

async fn evaluate(base: &str, flag: &str) -> serde_json::Value {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let body = serde_json::json!({ "flagId": flag }).to_string();
    let req = http::Request::post(format!("{base}/pbflags.v1.FlagEvaluatorService/Evaluate"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn descriptors_with_extra_flag() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src =
        std::fs::read_to_string(repo_root().join("proto/example/notifications.proto")).unwrap();
    let extra = "  bool quiet_hours = 5 [(pbflags.flag) = { default: { bool_value: { value: true } } }];\n}\n";
    let src = src.trim_end().trim_end_matches('}').to_owned() + extra;
    std::fs::create_dir_all(dir.path().join("example")).unwrap();
    std::fs::write(dir.path().join("example/notifications.proto"), src).unwrap();
    let mut compiler =
        protox::Compiler::new([dir.path().to_path_buf(), repo_root().join("proto")]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("example/notifications.proto").unwrap();
    compiler.encode_file_descriptor_set()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_to_evaluating_flags() {
    let cp = ControlPlane::ensure().unwrap();
    let admin = cp.client().await.unwrap();
    let ns = TestNamespace::create(&cp, &admin, "user-path")
        .await
        .unwrap();
    let db = pg::TestDb::create().await;

    // 1. The operator (its chart is tested in operator/tests/chart.rs; here it runs in-process).
    let crd = repo_root().join("crds/flagevaluators.pbflags.dev.yaml");
    kubectl(
        &cp,
        "default",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crd.to_str().unwrap(),
        ],
    );
    kubectl(
        &cp,
        "default",
        &[
            "wait",
            "--for=condition=Established",
            "crd/flagevaluators.pbflags.dev",
            "--timeout=30s",
        ],
    );
    let stop_operator = CancellationToken::new();
    let ctx = Arc::new(Context::new(
        admin.clone(),
        Defaults {
            image: "pbflags-evaluator:0.1.0".into(),
        },
        Metrics::new(),
    ));
    let namespaces = vec![ns.name.clone()];
    if !pbflags_e2e::external_operator() {
        tokio::spawn({
            let stop = stop_operator.clone();
            async move { controller::run_namespaces(ctx, &namespaces, stop).await }
        });
    }

    // 2. The descriptors ConfigMap, from a descriptors.pb.
    let pb = repo_root().join("proto/example/descriptors.pb");
    kubectl(
        &cp,
        &ns.name,
        &[
            "create",
            "configmap",
            "flag-descriptors",
            &format!("--from-file=descriptors.pb={}", pb.display()),
        ],
    );
    // 3. The database Secret.
    kubectl(
        &cp,
        &ns.name,
        &[
            "create",
            "secret",
            "generic",
            "flags-db",
            &format!("--from-literal=url={}", db.url),
        ],
    );
    // 4. The FlagEvaluator, as shipped in the chart's examples.
    let example = repo_root().join("charts/pbflags-operator/examples/flagevaluator.yaml");
    let example = std::fs::read_to_string(example).unwrap();
    let fe_only: String = example
        .split("---")
        .filter(|d| d.contains("kind: FlagEvaluator"))
        .collect();
    let path = std::env::temp_dir().join(format!("{}-fe.yaml", ns.name));
    std::fs::write(&path, fe_only).unwrap();
    kubectl(&cp, &ns.name, &["apply", "-f", path.to_str().unwrap()]);
    // 5. Wait for Ready.
    kubectl(
        &cp,
        &ns.name,
        &[
            "wait",
            "--for=condition=Ready",
            "fe/flags",
            "--timeout=120s",
        ],
    );
    let endpoint = kubectl(
        &cp,
        &ns.name,
        &["get", "fe", "flags", "-o", "jsonpath={.status.endpoint}"],
    );
    assert_eq!(endpoint, format!("http://flags-proxy.{}.svc:9201", ns.name));

    // The evaluators, with the Deployments' own arguments.
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns.name);
    let args_of = async |name: &str| {
        deployments
            .get(name)
            .await
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap()
    };
    let (root_args, proxy_args) = (args_of("flags-root").await, args_of("flags-proxy").await);
    // The migration Job ran `pbflags-evaluator migrate`; here that is the library call it makes.
    let pool = db.pool().await;
    pbflags_evaluator::pg::db::migrate(&pool).await.unwrap();
    let snapshot =
        pbflags_evaluator::registry::Snapshot::from_bytes(&std::fs::read(&pb).unwrap()).unwrap();
    let defs: Vec<_> = snapshot.flags().iter().map(|f| (**f).clone()).collect();
    pbflags_evaluator::pg::sync::sync(&pool, &defs, false)
        .await
        .unwrap();

    let volume = tempfile::tempdir().unwrap();
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), &ns.name)
        .get("flag-descriptors")
        .await
        .unwrap();
    kubelet_write(
        volume.path(),
        "descriptors.pb",
        &cm.binary_data.unwrap()["descriptors.pb"].0,
        1,
    );
    // The pod gets PBFLAGS_DATABASE from the Secret (secretKeyRef); here the same setting is given
    // as its flag, which the evaluator treats identically.
    let env = Api::<Deployment>::namespaced(admin.clone(), &ns.name)
        .get("flags-root")
        .await
        .unwrap();
    let env = env.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert_eq!(env[0].name, "PBFLAGS_DATABASE");
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "flags-db"
    );
    let mut root_args = root_args;
    root_args.push(format!("--database={}", db.url));
    let (root, stop_root) = start_evaluator(&root_args, volume.path(), None).await;
    let (proxy, stop_proxy) = start_evaluator(&proxy_args, volume.path(), Some(&root)).await;

    // 6. Evaluate a flag with Connect JSON (what curl sends).
    let v = evaluate(&proxy, "notifications/2").await;
    assert_eq!(v["value"]["stringValue"], "daily");

    // 7. Update the ConfigMap: the new flag is served, without restarting anything.
    let new = descriptors_with_extra_flag();
    let patch = serde_json::json!({ "binaryData": { "descriptors.pb": k8s_openapi::ByteString(new.clone()) } });
    Api::<ConfigMap>::namespaced(admin.clone(), &ns.name)
        .patch(
            "flag-descriptors",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), &ns.name)
        .get("flag-descriptors")
        .await
        .unwrap();
    kubelet_write(
        volume.path(),
        "descriptors.pb",
        &cm.binary_data.unwrap()["descriptors.pb"].0,
        2,
    );
    eventually("the new flag", async || {
        evaluate(&proxy, "notifications/5").await["value"]["boolValue"] == true
    })
    .await;

    // 8. Kill a flag with the admin CLI; the proxy serves the compiled default (kill TTL 10s).
    #[derive(clap::Parser)]
    struct Admin {
        #[command(subcommand)]
        command: pbflags_evaluator::cli::Command,
    }
    let cli = Admin::try_parse_from([
        "pbflags-evaluator",
        "flags",
        "--actor",
        "readme",
        "--database",
        &db.url,
        "kill",
        "notifications/2",
    ])
    .unwrap();
    let pbflags_evaluator::cli::Command::Flags(kill) = cli.command else {
        unreachable!()
    };
    pbflags_evaluator::commands::flags(&kill).await.unwrap();
    eventually("the kill", async || {
        evaluate(&proxy, "notifications/2").await["source"] == "EVALUATION_SOURCE_KILLED"
    })
    .await;
    assert_eq!(
        evaluate(&proxy, "notifications/2").await["value"]["stringValue"],
        "daily"
    );

    stop_proxy.cancel();
    stop_root.cancel();
    stop_operator.cancel();
    ns.delete(&admin).await.unwrap();
}
