//! Builders, snapshot-tested: each fixture in tests/fixtures is built and compared with
//! tests/snapshots/<fixture>.yaml. Regenerate with `PBFLAGS_BLESS=1 cargo test -p pbflags-operator --test build`.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;

use pbflags_operator::build::{self, Defaults, Inputs, Tier};
use pbflags_operator::crd::FlagEvaluator;
use pbflags_operator::reconcile::Candidate;

fn fixture(name: &str) -> FlagEvaluator {
    let path =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("{name}.yaml"));
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("fixture"))
        .expect("fixture parses")
}

fn defaults() -> Defaults {
    Defaults {
        image: "pbflags-evaluator:default".into(),
    }
}

/// The objects built for `fe`.
fn built(fe: &FlagEvaluator) -> build::Desired {
    build::build(&Inputs {
        fe,
        defaults: &defaults(),
        descriptors: None,
    })
    .expect("builds")
}

fn render(fe: &FlagEvaluator) -> String {
    let defaults = defaults();
    let candidate = Candidate::new(b"descriptor set bytes".to_vec());
    let inputs = Inputs {
        fe,
        defaults: &defaults,
        descriptors: Some(&candidate),
    };
    let d = build::build(&inputs).expect("builds");
    let mut docs: Vec<String> = Vec::new();
    let mut push = |v: serde_json::Value| docs.push(serde_yaml_ng::to_string(&v).expect("yaml"));
    push(serde_json::to_value(&d.service_account).expect("json"));
    for o in d.deployments() {
        push(serde_json::to_value(o).expect("json"));
    }
    for o in d.services() {
        push(serde_json::to_value(o).expect("json"));
    }
    for o in d.pdbs() {
        push(serde_json::to_value(o).expect("json"));
    }
    if let Some(j) = &d.migration {
        push(serde_json::to_value(j).expect("json"));
    }
    if let Some((copy, job)) = &d.check {
        push(serde_json::to_value(copy).expect("json"));
        push(serde_json::to_value(job).expect("json"));
    }
    docs.join("---\n")
}

fn check_snapshot(name: &str) {
    let got = render(&fixture(name));
    let path =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(format!("{name}.yaml"));
    if std::env::var_os("PBFLAGS_BLESS").is_some() {
        std::fs::write(&path, &got).expect("write snapshot");
    }
    let want = std::fs::read_to_string(&path)
        .expect("snapshot exists (run with PBFLAGS_BLESS=1 to create it)");
    assert!(
        got == want,
        "built objects differ from {}; inspect and re-bless if intended:\n{got}",
        path.display()
    );
}

#[test]
fn root_and_proxy_fixture_matches_its_snapshot() {
    check_snapshot("root-and-proxy");
}

#[test]
fn proxy_only_fixture_matches_its_snapshot() {
    check_snapshot("proxy-only");
}

#[test]
fn tls_fixture_matches_its_snapshot() {
    check_snapshot("tls");
}

#[test]
fn tls_serves_https_mounts_the_secret_and_points_the_proxy_at_https() {
    let fe = fixture("tls");
    let defaults = defaults();
    let inputs = Inputs {
        fe: &fe,
        defaults: &defaults,
        descriptors: None,
    };
    let proxy = build::evaluator_args(&inputs, Tier::Proxy);
    assert!(proxy.contains(&"--server=https://flags-root.team-a.svc:9201".to_owned()));
    // The operator does not read the Secret: the proxy uses its ca.crt if it has one.
    assert!(
        proxy.contains(&"--upstream-ca=/etc/pbflags/tls/ca.crt".to_owned())
            && proxy.contains(&"--upstream-ca-optional".to_owned()),
        "{proxy:?}"
    );
    for tier in [Tier::Root, Tier::Proxy] {
        let args = build::evaluator_args(&inputs, tier);
        assert!(args.contains(&"--tls-cert=/etc/pbflags/tls/tls.crt".to_owned()));
        assert!(args.contains(&"--tls-key=/etc/pbflags/tls/tls.key".to_owned()));
    }
    let d = build::build(&Inputs {
        fe: &fe,
        defaults: &defaults,
        descriptors: None,
    })
    .unwrap();
    for dep in d.deployments() {
        let pod = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        for probe in [&c.liveness_probe, &c.readiness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "tls")
            .unwrap();
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("flags-tls"));
        assert!(
            secret.items.is_none(),
            "the whole Secret is mounted, without subPath, so renewals reach the pods"
        );
    }
    assert_eq!(
        build::endpoint(&fe),
        "https://flags-proxy.team-a.svc:9201",
        "status.endpoint"
    );
    for svc in d.services() {
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(
            port.app_protocol.as_deref(),
            Some("https"),
            "not h2c: the port speaks TLS"
        );
    }
    let job = d.migration.unwrap().spec.unwrap().template.spec.unwrap();
    assert!(
        job.volumes.unwrap().iter().all(|v| v.name != "tls")
            && job.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "tls"),
        "the migration Job mounts no TLS files"
    );
}

#[test]
fn the_database_ca_is_mounted_where_the_database_is_used_only() {
    let fe = fixture("tls");
    let d = built(&fe);
    let job = d.migration.as_ref().unwrap();
    let pods = [
        (Tier::Root, &pod_template(&d, Tier::Root).spec),
        (Tier::Root, &job.spec.as_ref().unwrap().template.spec),
        (Tier::Proxy, &pod_template(&d, Tier::Proxy).spec),
    ];
    for (tier, pod) in pods {
        let pod = pod.as_ref().unwrap();
        let c = &pod.containers[0];
        let env = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "PBFLAGS_DATABASE_CA");
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "database-ca");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "database-ca");
        if tier == Tier::Proxy {
            assert!(env.is_none() && mount.is_none() && volume.is_none());
            continue;
        }
        assert_eq!(
            env.unwrap().value.as_deref(),
            Some("/etc/pbflags/database-ca/ca.crt")
        );
        assert_eq!(mount.unwrap().mount_path, "/etc/pbflags/database-ca");
        let secret = volume.unwrap().secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("flags-db-ca"));
        let item = &secret.items.as_ref().unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("root.pem", "ca.crt")
        );
    }
}

#[test]
fn every_object_is_owned_and_labelled() {
    let fe = fixture("root-and-proxy");
    let d = built(&fe);
    let metas = d
        .deployments()
        .map(|o| &o.metadata)
        .chain(d.services().map(|o| &o.metadata))
        .chain(d.pdbs().map(|o| &o.metadata))
        .chain(d.migration.iter().map(|o| &o.metadata))
        .chain([&d.service_account.metadata]);
    for m in metas {
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("FlagEvaluator", "flags", Some(true))
        );
        assert_eq!(
            m.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "pbflags-operator"
        );
        assert_eq!(m.namespace.as_deref(), Some("team-a"));
    }
    assert_eq!(d.pdbs().count(), 2, "both tiers have more than one replica");
}

/// The pod template of `tier`'s Deployment.
fn pod_template(d: &build::Desired, tier: Tier) -> &k8s_openapi::api::core::v1::PodTemplateSpec {
    let (_, objects) = d.tiers().find(|(t, _)| *t == tier).unwrap();
    &objects.deployment.spec.as_ref().unwrap().template
}

#[test]
fn the_database_url_reaches_root_pods_and_jobs_as_a_mounted_file() {
    let mut fe = fixture("root-and-proxy");
    let candidate = Candidate::new(b"descriptor set bytes".to_vec());
    let d = build::build(&Inputs {
        fe: &fe,
        defaults: &defaults(),
        descriptors: Some(&candidate),
    })
    .unwrap();
    let root = pod_template(&d, Tier::Root);
    assert!(
        root.metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .is_none_or(|a| a.keys().all(|k| !k.contains("secret"))),
        "no trace of the Secret's content in the pod template"
    );
    let jobs = [
        d.migration.as_ref().unwrap().spec.as_ref().unwrap(),
        d.check.as_ref().unwrap().1.spec.as_ref().unwrap(),
    ];
    let pods = std::iter::once(root.spec.as_ref().unwrap())
        .chain(jobs.iter().map(|j| j.template.spec.as_ref().unwrap()));
    for pod in pods {
        let c = &pod.containers[0];
        let env = c.env.iter().flatten();
        assert!(
            env.clone().all(|e| e.value_from.is_none()),
            "no Secret in the environment"
        );
        let file = env
            .clone()
            .find(|e| e.name == "PBFLAGS_DATABASE_FILE")
            .unwrap();
        assert_eq!(file.value.as_deref(), Some("/etc/pbflags/database/url"));
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "database");
        assert_eq!(mount.unwrap().mount_path, "/etc/pbflags/database");
        let volume = pod.volumes.iter().flatten().find(|v| v.name == "database");
        let secret = volume.unwrap().secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("flags-db"));
        let item = &secret.items.as_ref().unwrap()[0];
        assert_eq!((item.key.as_str(), item.path.as_str()), ("url", "url"));
        assert_eq!(secret.optional, Some(false));
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError"),
            "a container failing at start-up leaves its last words for the status"
        );
    }
    let proxy = pod_template(&d, Tier::Proxy).spec.as_ref().unwrap();
    assert!(proxy.volumes.iter().flatten().all(|v| v.name != "database"));
    assert!(
        proxy.containers[0]
            .env
            .iter()
            .flatten()
            .all(|e| !e.name.starts_with("PBFLAGS_DATABASE"))
    );

    // Another Secret (a new database) gets a new migrations Job; the same one does not.
    let job = |d: &build::Desired| d.migration.as_ref().unwrap().metadata.name.clone();
    assert_eq!(job(&d), job(&built(&fe)));
    fe.spec.root.as_mut().unwrap().database.secret_name = "flags-db-2".into();
    let other = built(&fe);
    assert_ne!(job(&d), job(&other));
    assert_ne!(
        pod_template(&d, Tier::Root),
        pod_template(&other, Tier::Root)
    );
    assert_eq!(
        pod_template(&d, Tier::Proxy),
        pod_template(&other, Tier::Proxy)
    );
}

#[test]
fn the_descriptors_volume_is_a_directory_mount_so_updates_need_no_restart() {
    let fe = fixture("proxy-only");
    let d = built(&fe);
    let pod = d
        .proxy
        .as_ref()
        .unwrap()
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.sub_path.as_deref()),
        ("/etc/pbflags/descriptors", None)
    );
    let defaults = defaults();
    let inputs = Inputs {
        fe: &fe,
        defaults: &defaults,
        descriptors: None,
    };
    let args = build::evaluator_args(&inputs, Tier::Proxy);
    assert!(args.contains(&"--descriptors=/etc/pbflags/descriptors/flags.pb".to_owned()));
    assert!(args.contains(&"--server=http://flags-root.team-a.svc:9201".to_owned()));
}

#[test]
fn a_resource_that_did_not_come_from_the_api_is_refused() {
    let mut fe = fixture("proxy-only");
    fe.metadata.uid = None;
    let defaults = defaults();
    let e = build::build(&Inputs {
        fe: &fe,
        defaults: &defaults,
        descriptors: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("uid"));
}

#[test]
fn pods_spread_over_nodes_and_zones_and_carry_the_placement_knobs() {
    let mut fe = fixture("root-and-proxy");
    let d = built(&fe);
    let spec = pod_template(&d, Tier::Proxy).spec.as_ref().unwrap();
    let spread = spec.topology_spread_constraints.as_ref().unwrap();
    let keys: Vec<_> = spread.iter().map(|c| c.topology_key.as_str()).collect();
    assert_eq!(
        keys,
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );
    assert!(spread.iter().all(|c| {
        c.when_unsatisfiable == "ScheduleAnyway"
            && c.label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/component"]
                == "proxy"
    }));
    // Jobs are one-offs: no spread.
    let job = d.migration.as_ref().unwrap().spec.as_ref().unwrap();
    assert!(
        job.template
            .spec
            .as_ref()
            .unwrap()
            .topology_spread_constraints
            .is_none()
    );
    // No resources in the spec: requests, no limits (the root fixture sets its own).
    let proxy = &spec.containers[0];
    let requests = proxy.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "50m");
    assert!(proxy.resources.as_ref().unwrap().limits.is_none());
    let root = &pod_template(&d, Tier::Root)
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        root.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "100m"
    );

    // The user's own spread, labels and pull secrets.
    let placement: serde_json::Value = serde_json::json!({
        "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule"}],
        "podLabels": {"team": "a", "app.kubernetes.io/component": "mine"},
        "imagePullSecrets": [{"name": "registry"}]
    });
    fe.spec.placement = Some(serde_json::from_value(placement).unwrap());
    let d = built(&fe);
    let template = pod_template(&d, Tier::Root);
    let spec = template.spec.as_ref().unwrap();
    assert_eq!(
        spec.topology_spread_constraints.as_ref().unwrap()[0].topology_key,
        "rack"
    );
    assert_eq!(
        spec.image_pull_secrets.as_ref().unwrap()[0].name,
        "registry"
    );
    let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels["team"], "a");
    assert_eq!(
        labels["app.kubernetes.io/component"], "root",
        "the operator's labels win: the Service selects on them"
    );
}

#[test]
fn durations_the_crd_admits_are_durations_the_evaluator_reads() {
    // Shapes the CRD's rule (`^([0-9]+(ms|s|m|h))+$`, not zero) admits; the tier C test checks
    // the API server refuses the others.
    for d in ["500ms", "30s", "5m", "2h", "1h30m", "1m30s", "90s"] {
        assert!(humantime::parse_duration(d).is_ok(), "{d}");
    }
}

#[test]
fn an_autoscaled_proxy_tier_gets_a_cpu_autoscaler_and_leaves_replicas_to_it() {
    let mut fe = fixture("root-and-proxy");
    assert!(built(&fe).hpas().next().is_none());
    fe.spec.proxy.as_mut().unwrap().autoscaling =
        Some(serde_json::from_value(serde_json::json!({ "maxReplicas": 6 })).unwrap());
    let d = built(&fe);
    let hpas: Vec<_> = d.hpas().collect();
    assert_eq!(hpas.len(), 1);
    let spec = &hpas[0].spec;
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    assert_eq!(spec.scale_target_ref.name, "flags-proxy");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6));
    let target = &spec.metrics.as_ref().unwrap()[0].resource.as_ref().unwrap();
    assert_eq!(
        (target.name.as_str(), target.target.average_utilization),
        ("cpu", Some(70))
    );
    let proxy = d.proxy.as_ref().unwrap();
    assert_eq!(proxy.deployment.spec.as_ref().unwrap().replicas, None);
    assert!(proxy.pdb.is_some(), "up to six pods: a PodDisruptionBudget");
    // The root keeps its fixed replicas.
    assert_eq!(
        d.root
            .as_ref()
            .unwrap()
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .replicas,
        Some(2)
    );
}

#[test]
fn the_admin_api_runs_on_the_root_pods_behind_its_own_service_and_a_closed_port() {
    let mut fe = fixture("root-and-proxy");
    assert!(built(&fe).admin.is_none(), "off unless asked for");
    fe.spec.root.as_mut().unwrap().admin = Some(
        serde_json::from_value(serde_json::json!({"tokenSecretName": "flags-admin"})).unwrap(),
    );
    let candidate = Candidate::new(b"descriptor set bytes".to_vec());
    let d = build::build(&Inputs {
        fe: &fe,
        defaults: &defaults(),
        descriptors: Some(&candidate),
    })
    .unwrap();
    let root = pod_template(&d, Tier::Root).spec.as_ref().unwrap();
    let c = &root.containers[0];
    let args = c.args.as_ref().unwrap();
    assert!(
        args.contains(&"--admin-listen=0.0.0.0:9200".to_owned()),
        "{args:?}"
    );
    assert!(args.contains(&"--admin-token-file=/etc/pbflags/admin/tokens".to_owned()));
    assert!(
        c.ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("admin") && p.container_port == 9200)
    );
    let volume = root
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "admin-tokens")
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("flags-admin"));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("tokens", "tokens")
    );

    // Neither the proxy nor the Jobs see the tokens.
    let proxy = pod_template(&d, Tier::Proxy).spec.as_ref().unwrap();
    let jobs = [
        d.migration.as_ref().unwrap().spec.as_ref().unwrap(),
        d.check.as_ref().unwrap().1.spec.as_ref().unwrap(),
    ];
    for pod in std::iter::once(proxy).chain(jobs.iter().map(|j| j.template.spec.as_ref().unwrap()))
    {
        assert!(
            pod.volumes
                .iter()
                .flatten()
                .all(|v| v.name != "admin-tokens")
        );
        assert!(
            pod.containers[0]
                .args
                .iter()
                .flatten()
                .all(|a| !a.starts_with("--admin"))
        );
    }

    let (service, policy) = d.admin.as_ref().unwrap();
    assert_eq!(service.metadata.name.as_deref(), Some("flags-admin"));
    let port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!((port.port, port.name.as_deref()), (9200, Some("admin")));
    assert!(
        d.services()
            .any(|s| s.metadata.name.as_deref() == Some("flags-admin"))
    );
    // By default nobody reaches the admin port over the network; the evaluation port stays open.
    let rules = policy.spec.as_ref().unwrap().ingress.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].from.is_none());
    let ports: Vec<_> = rules[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.port.clone())
        .collect();
    assert_eq!(
        ports,
        [Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9201)
        )]
    );

    fe.spec.root.as_mut().unwrap().admin = Some(
        serde_json::from_value(serde_json::json!({
            "tokenSecretName": "flags-admin",
            "allowedFrom": [{"namespaceSelector": {"matchLabels": {"team": "sre"}}}]
        }))
        .unwrap(),
    );
    let (_, policy) = built(&fe).admin.unwrap();
    let rules = policy.spec.unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[1].from.as_ref().unwrap()[0]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["team"],
        "sre"
    );

    fe.spec
        .root
        .as_mut()
        .unwrap()
        .admin
        .as_mut()
        .unwrap()
        .enabled = Some(false);
    assert!(built(&fe).admin.is_none());
}
