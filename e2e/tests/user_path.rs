//! The README's path from zero to a running FlagEvaluator, step by step, on tier D: the chart's
//! operator runs in a pod, evaluators run in pods from the images `e2e/images/build.sh` makes,
//! ConfigMap updates reach them through the kubelet's own volume writes, and requests travel from a
//! client pod through Service names, CoreDNS and kube-proxy. PostgreSQL is this test's own server,
//! reached from pods through a Service without a selector (as a database outside the cluster is).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "../../evaluator/tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use pbflags_e2e::eventually;
use pbflags_e2e::node::{
    self, ClientPod, Images, NODE_IP, OPERATOR_NAMESPACE, evaluator_command, is_ready, pod_ip,
    served_descriptor_sha, tier_pods,
};
use pbflags_e2e::{ControlPlane, TestNamespace, Tier, repo_root};
use pbflags_operator::crd::FlagEvaluator;
use sha2::Digest as _;

fn descriptors_with_extra_flag(round: usize) -> Vec<u8> {
    let src =
        std::fs::read_to_string(repo_root().join("proto/example/notifications.proto")).unwrap();
    let extra = format!(
        "  bool quiet_hours = 5 [(pbflags.flag) = {{ default: {{ bool_value: {{ value: true }} }} }}];\n  \
         string rollout_round = 6 [(pbflags.flag) = {{ default: {{ string_value: {{ value: \"round-{round}\" }} }} }}];\n}}\n"
    );
    compile(src.trim_end().trim_end_matches('}').to_owned() + &extra)
}

/// The example with notifications/3 turned from int64 into a string: a breaking change.
fn descriptors_with_a_type_change() -> Vec<u8> {
    let src =
        std::fs::read_to_string(repo_root().join("proto/example/notifications.proto")).unwrap();
    let src = src
        .replace("int64 max_retries", "string max_retries")
        .replace(
            "int64_value: { value: 3 }",
            "string_value: { value: \"3\" }",
        );
    assert!(src.contains("string max_retries"));
    compile(src)
}

/// `kubectl apply` of the `flag-descriptors` ConfigMap holding `descriptors`, as a user rolls out
/// a set.
fn apply_descriptors(cp: &ControlPlane, ns: &str, descriptors: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("descriptors.pb");
    std::fs::write(&file, descriptors).unwrap();
    let manifest = cp
        .run(
            ns,
            &[
                "create",
                "configmap",
                "flag-descriptors",
                &format!("--from-file=descriptors.pb={}", file.display()),
                "--dry-run=client",
                "-o",
                "yaml",
            ],
        )
        .unwrap();
    cp.run_with_input(ns, &["apply", "-f", "-"], manifest.as_bytes())
        .unwrap();
}

fn compile(src: String) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("example")).unwrap();
    std::fs::write(dir.path().join("example/notifications.proto"), src).unwrap();
    let mut compiler =
        protox::Compiler::new([dir.path().to_path_buf(), repo_root().join("proto")]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("example/notifications.proto").unwrap();
    compiler.encode_file_descriptor_set()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_to_evaluating_flags_on_a_real_node() {
    let cp = ControlPlane::ensure_tier(Tier::D).unwrap();
    let admin = cp.client().await.unwrap();
    let images = Images::load().unwrap();
    let ns = TestNamespace::create(&cp, &admin, "user-path")
        .await
        .unwrap();
    let n = ns.name.as_str();
    let db = pg::PgServer::start_listening(Some(NODE_IP));

    // 1. Install the operator with the chart: its pod really runs, is Ready, and holds the Lease.
    let operator_pod = cp.install_operator(&images).unwrap();
    let leases = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    eventually(
        "the operator pod to hold its Lease",
        Duration::from_secs(60),
        async || {
            leases
                .get_opt("pbflags-operator")
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.holder_identity)
                == Some(operator_pod.clone())
        },
    )
    .await
    .unwrap();

    // The database, beside the cluster: postgres.<ns>.svc:5432 → this test's server on the node.
    let db_url_in_cluster = node::database_service(&cp, n, &db.url).unwrap();

    // 2. The descriptors ConfigMap, from a descriptors.pb.
    let pb = repo_root().join("proto/example/descriptors.pb");
    let from_file = format!("--from-file=descriptors.pb={}", pb.display());
    cp.run(n, &["create", "configmap", "flag-descriptors", &from_file])
        .unwrap();
    // The admin API's tokens (the example FlagEvaluator serves it).
    let admin_token = format!("user-path-{:016x}", fastrand::u64(..));
    cp.run(
        n,
        &[
            "create",
            "secret",
            "generic",
            "flags-admin",
            &format!("--from-literal=tokens=sre editor {admin_token}\n"),
        ],
    )
    .unwrap();
    // 3. The FlagEvaluator, as shipped in the chart's examples (root 2 + proxy 2, migrate: true),
    // applied before its database Secret exists, as a user may. The operator cannot read Secrets:
    // the kubelet's mount failure, read from the migrations pod's events, is the status.
    let example = std::fs::read_to_string(
        repo_root().join("charts/pbflags-operator/examples/flagevaluator.yaml"),
    )
    .unwrap();
    let fe_only: String = example
        .split("---")
        .filter(|d| d.contains("kind: FlagEvaluator"))
        .collect();
    cp.run_with_input(n, &["apply", "-f", "-"], fe_only.as_bytes())
        .unwrap();
    let fes = Api::<FlagEvaluator>::namespaced(admin.clone(), n);
    let degraded = pbflags_e2e::wait_for(
        "Degraded=True SecretMissing while the Secret does not exist",
        Duration::from_secs(120),
        async || {
            let fe = fes.get("flags").await.ok()?;
            let c = fe
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Degraded")?;
            (c.status == "True" && c.reason == "SecretMissing").then_some(c.message)
        },
    )
    .await
    .unwrap();
    assert!(
        degraded.contains("secret \"flags-db\" not found")
            && degraded.contains("spec.root.database.secretName"),
        "{degraded}"
    );
    // 4. The database Secret.
    cp.run(
        n,
        &[
            "create",
            "secret",
            "generic",
            "flags-db",
            &format!("--from-literal=url={db_url_in_cluster}"),
        ],
    )
    .unwrap();
    // 5. Ready: the kubelet mounted the Secret, the migration Job ran, then every pod passed its
    // real probes.
    cp.run(
        n,
        &[
            "wait",
            "--for=condition=Ready",
            "fe/flags",
            "--timeout=240s",
        ],
    )
    .unwrap();
    let endpoint = cp
        .run(
            n,
            &["get", "fe", "flags", "-o", "jsonpath={.status.endpoint}"],
        )
        .unwrap();
    assert_eq!(endpoint, format!("http://flags-proxy.{n}.svc:9201"));
    for tier in ["root", "proxy"] {
        let pods = tier_pods(&admin, n, "flags", tier).await.unwrap();
        assert_eq!(
            pods.iter().filter(|p| is_ready(p)).count(),
            2,
            "{tier} pods ready"
        );
    }
    // The Job migrated the real database, and the root was created only after it completed.
    let job = Api::<Job>::namespaced(admin.clone(), n)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|j| {
            j.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains("-migrate-"))
        })
        .expect("the migration Job");
    let job_status = job.status.unwrap();
    assert_eq!(job_status.succeeded, Some(1));
    let root = Api::<Deployment>::namespaced(admin.clone(), n)
        .get("flags-root")
        .await
        .unwrap();
    assert!(
        root.metadata.creation_timestamp.unwrap().0 >= job_status.completion_time.unwrap().0,
        "the root Deployment was created before the migration completed"
    );
    let pool = pg::pool(&db.url).await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'feature_flags'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(tables > 0, "the migration Job created no tables");

    // 5b. The operator's check Job already synced these descriptors into the database: a sync by
    // hand, with the evaluator image, finds nothing to change.
    let synced = evaluator_command(
        &cp,
        n,
        &images,
        &db_url_in_cluster,
        &["sync", "--descriptors=/dev/stdin"],
        &std::fs::read(&pb).unwrap(),
    )
    .unwrap();
    assert!(synced.contains("sync complete: 0 changes"), "{synced}");

    // 6. Evaluate from a pod: client → proxy Service → proxy pod → root Service → root pod → PostgreSQL.
    let client = ClientPod::start(&cp, n).unwrap();
    let v = client.evaluate(&endpoint, "notifications/2").unwrap();
    assert_eq!(v["value"]["stringValue"], "daily", "{v}");

    // 7. New descriptors with `kubectl apply`: every evaluator pod serves the new set, through the
    // check Job, the publish and the pod nudge, and the operator's status counts the pods serving
    // it. The time from the apply to each pod serving it is reported; PBFLAGS_ROLLOUT_ROUNDS
    // rollouts (default 1) give more samples.
    let rounds: usize = std::env::var("PBFLAGS_ROLLOUT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut pods = tier_pods(&admin, n, "flags", "root").await.unwrap();
    pods.extend(tier_pods(&admin, n, "flags", "proxy").await.unwrap());
    let ips: Vec<String> = pods.iter().filter_map(pod_ip).map(str::to_owned).collect();
    assert_eq!(ips.len(), 4);
    let (mut reached, mut complete, mut checked) = (Vec::new(), Vec::new(), Vec::new());
    let mut new_sha = String::new();
    for round in 0..rounds {
        let new = descriptors_with_extra_flag(round);
        new_sha = hex::encode(sha2::Sha256::digest(&new));
        let applied = Instant::now();
        let applied_wall = k8s_openapi::jiff::Timestamp::now();
        apply_descriptors(&cp, n, &new);
        for ip in &ips {
            eventually(
                &format!("{ip} to serve {new_sha}"),
                Duration::from_secs(240),
                async || served_descriptor_sha(ip, 9201).is_ok_and(|s| s == new_sha),
            )
            .await
            .unwrap();
            reached.push(applied.elapsed());
        }
        // The operator follows the rollout to the pods: its status counts the ready pods serving
        // the set (it asks each one), and Progressing ends once all of them do.
        let want = format!("{} 4/4", &new_sha[..10]);
        let fe = pbflags_e2e::wait_for(
            "the status to count every pod serving the new set",
            Duration::from_secs(60),
            async || {
                let fe = fes.get("flags").await.ok()?;
                let s = fe.status.as_ref()?;
                let progressing = s.conditions.iter().find(|c| c.type_ == "Progressing")?;
                (s.descriptors.as_ref()?.summary == want && progressing.status == "False")
                    .then_some(fe)
            },
        )
        .await
        .unwrap();
        complete.push(applied.elapsed());
        let d = fe.status.unwrap().descriptors.unwrap();
        // The operator stamps the publish (the host's clock, as this test's): the check's share.
        let accepted: k8s_openapi::jiff::Timestamp =
            d.accepted_at.as_deref().unwrap().parse().unwrap();
        checked.push(Duration::try_from(accepted.duration_since(applied_wall)).unwrap_or_default());
        let (root, proxy) = (d.root.unwrap(), d.proxy.unwrap());
        assert_eq!((root.ready, root.serving, root.unreachable), (2, 2, 0));
        assert_eq!((proxy.ready, proxy.serving, proxy.unreachable), (2, 2, 0));
    }
    let quantile = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    eprintln!(
        "descriptor rollout, kubectl apply → pod serving the set: {} samples ({rounds} rollouts × {} pods); p50 {:.2?}, p99 {:.2?}, max {:.2?}; → published (check done): p50 {:.2?}, max {:.2?}; → status complete: p50 {:.2?}, max {:.2?}",
        reached.len(),
        ips.len(),
        quantile(&mut reached, 0.5),
        quantile(&mut reached, 0.99),
        quantile(&mut reached, 1.0),
        quantile(&mut checked, 0.5),
        quantile(&mut checked, 1.0),
        quantile(&mut complete, 0.5),
        quantile(&mut complete, 1.0),
    );
    let v = client.evaluate(&endpoint, "notifications/5").unwrap();
    assert_eq!(v["value"]["boolValue"], true, "{v}");

    // 7b. A breaking change is refused by the real sync in the check Job: the condition names the
    // flag, and the pods keep serving the set they have.
    let breaking = descriptors_with_a_type_change();
    apply_descriptors(&cp, n, &breaking);
    let refusal = pbflags_e2e::wait_for(
        "the breaking set refused",
        Duration::from_secs(120),
        async || {
            let fe = fes.get("flags").await.ok()?;
            let c = fe
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "DescriptorsAccepted")?;
            (c.status == "False").then_some(c)
        },
    )
    .await
    .unwrap();
    assert_eq!(refusal.reason, "DescriptorsRefused");
    assert!(
        refusal.message.contains("notifications/3"),
        "{}",
        refusal.message
    );
    // A Warning event says the same (`kubectl describe fe flags`).
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), n);
    pbflags_e2e::wait_for(
        "a DescriptorsRefused warning event naming the flag",
        Duration::from_secs(30),
        async || {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("DescriptorsRefused")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note
                            .as_deref()
                            .is_some_and(|n| n.contains("notifications/3"))
                })
                .map(|_| ())
        },
    )
    .await
    .unwrap();
    for ip in &ips {
        assert_eq!(
            served_descriptor_sha(ip, 9201).unwrap(),
            new_sha,
            "{ip} keeps its set"
        );
    }

    // 7c. A set that does not parse is refused as well; the pods keep their set.
    let garbage = b"not a descriptor set".to_vec();
    let garbage_sha = hex::encode(sha2::Sha256::digest(&garbage));
    apply_descriptors(&cp, n, &garbage);
    let refusal = pbflags_e2e::wait_for(
        "the unparseable set refused",
        Duration::from_secs(120),
        async || {
            let s = fes.get("flags").await.ok()?.status?;
            let c = s
                .conditions
                .into_iter()
                .find(|c| c.type_ == "DescriptorsAccepted")?;
            (s.descriptors?.pending.as_deref() == Some(garbage_sha.as_str()) && c.status == "False")
                .then_some(c)
        },
    )
    .await
    .unwrap();
    assert_eq!(refusal.reason, "DescriptorsRefused");
    assert!(
        refusal.message.contains(&garbage_sha[..10]),
        "{}",
        refusal.message
    );
    for ip in &ips {
        assert_eq!(served_descriptor_sha(ip, 9201).unwrap(), new_sha);
    }

    // 7d. `allowBreaking: true` pushes the breaking change on purpose: synced, published, served
    // by every pod, and notifications/3 answers as a string.
    let allow = serde_json::json!({ "spec": { "descriptors": { "allowBreaking": true } } });
    fes.patch("flags", &PatchParams::default(), &Patch::Merge(&allow))
        .await
        .unwrap();
    apply_descriptors(&cp, n, &breaking);
    let breaking_sha = hex::encode(sha2::Sha256::digest(&breaking));
    let want = format!("{} 4/4", &breaking_sha[..10]);
    pbflags_e2e::wait_for(
        "the breaking set served by every pod",
        Duration::from_secs(120),
        async || {
            let s = fes.get("flags").await.ok()?.status?;
            let accepted = s
                .conditions
                .iter()
                .any(|c| c.type_ == "DescriptorsAccepted" && c.status == "True");
            (accepted && s.descriptors?.summary == want).then_some(())
        },
    )
    .await
    .unwrap();
    let v = client.evaluate(&endpoint, "notifications/3").unwrap();
    assert_eq!(v["value"]["stringValue"], "3", "{v}");

    // 8. Kill a flag through the admin API with the token (no database URL leaves the cluster); the proxy serves the compiled default, pushed
    // through the root's notifications and the proxy's change stream (the kill TTL, 10s, is the
    // safety net).
    // README's step 8: `kubectl port-forward svc/flags-admin`, then Connect over HTTP/1.1 as the
    // CLI's `--server` calls it (JSON here, to read the answers).
    let forward = node::PortForward::start(&cp, n, "svc/flags-admin", 9200).unwrap();
    let admin_url = format!("127.0.0.1:{}", forward.port);
    let kill = |token: Option<&str>| {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-s",
            "-m",
            "10",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
        ]);
        if let Some(t) = token {
            c.args(["-H", &format!("authorization: Bearer {t}")]);
        }
        c.args([
            "-d",
            r#"{"flagId":"notifications/2","state":"STATE_KILLED"}"#,
        ]);
        c.arg(format!(
            "http://{admin_url}/pbflags.v1.FlagAdminService/UpdateFlagState"
        ));
        let out = String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = kill(None);
    assert_eq!(code, "401", "no token, no change: {body}");
    assert!(body.contains("unauthenticated"), "{body}");
    let (code, body) = kill(Some(&admin_token));
    assert_eq!(code, "200", "{body}");
    // The web UI on the same port: the audit page shows the kill by the token's name (the page
    // takes the token as a bearer header, as a browser's session after logging in with it);
    // without one it sends to the login page.
    let page = |token: Option<&str>, path: &str| {
        let mut c = std::process::Command::new("curl");
        c.args(["-s", "-m", "10", "-w", "\n%{http_code} %{redirect_url}"]);
        if let Some(t) = token {
            c.args(["-H", &format!("authorization: Bearer {t}")]);
        }
        c.arg(format!("http://{admin_url}{path}"));
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };
    let audit = page(Some(&admin_token), "/audit?flag_id=notifications%2F2");
    assert!(
        audit.ends_with("\n200 ")
            && audit.contains("<td>UPDATE_STATE</td>")
            && audit.contains("<td>sre</td>"),
        "{audit}"
    );
    let anonymous = page(None, "/");
    assert!(
        anonymous.contains("303 http://") && anonymous.contains("/login?next=/"),
        "{anonymous}"
    );
    drop(forward);
    let took = eventually("the kill", Duration::from_secs(60), async || {
        client
            .evaluate(&endpoint, "notifications/2")
            .is_ok_and(|v| {
                v["source"] == "EVALUATION_SOURCE_KILLED" && v["value"]["stringValue"] == "daily"
            })
    })
    .await
    .unwrap();
    eprintln!(
        "kill answered through the proxy Service {took:.1?} after the admin call returned (each check is a kubectl exec)"
    );

    ns.delete(&admin).await.unwrap();
}
