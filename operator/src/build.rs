//! `build`: a FlagEvaluator spec → the objects that run it. Pure: no client, no clock, no I/O, so
//! every object can be checked by plain unit tests.
//!
//! Per tier: a Deployment and a Service named `<name>-root` / `<name>-proxy`, a PodDisruptionBudget
//! when replicas > 1; one ServiceAccount; a migrations Job when asked. Every object carries the
//! `app.kubernetes.io/*` labels and a controller owner reference to the FlagEvaluator, so deleting
//! it garbage-collects everything.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource as _, ResourceExt as _};

use crate::crd::FlagEvaluator;

/// The evaluator's port: gRPC, gRPC-Web, Connect, metrics and probes.
pub const PORT: i32 = 9201;
/// Label every owned object carries; watches are scoped to it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "pbflags-operator");
/// Pod annotation carrying a hash of the database Secret: a change rolls the root tier.
pub const SECRET_HASH_ANNOTATION: &str = "pbflags.dev/database-secret-hash";
/// Where the descriptors ConfigMap is mounted (a directory, so kubelet updates reach the pods).
pub const DESCRIPTORS_DIR: &str = "/etc/pbflags/descriptors";
/// Default key of the descriptors ConfigMap.
pub const DEFAULT_DESCRIPTORS_KEY: &str = "descriptors.pb";
/// Default key of the database Secret.
pub const DEFAULT_DATABASE_KEY: &str = "url";
/// Where the TLS Secret is mounted (a directory, so renewed certificates reach the evaluator).
pub const TLS_DIR: &str = "/etc/pbflags/tls";

/// Operator-wide settings that specs may override.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Evaluator image.
    pub image: String,
}

/// What `build` reads besides the spec.
pub struct Inputs<'a> {
    /// The resource.
    pub fe: &'a FlagEvaluator,
    /// Operator defaults.
    pub defaults: &'a Defaults,
    /// Hash of the database Secret's data (root tier), so Secret changes roll the pods.
    pub secret_hash: Option<String>,
    /// Whether the TLS Secret (`spec.tls`) has a `ca.crt` for the proxy to check its root with.
    pub tls_ca: bool,
}

/// The objects a FlagEvaluator should have.
#[derive(Debug, Default)]
pub struct Desired {
    /// The pods' ServiceAccount.
    pub service_account: Option<ServiceAccount>,
    /// Root then proxy.
    pub deployments: Vec<Deployment>,
    /// Root then proxy.
    pub services: Vec<Service>,
    /// For tiers with more than one replica.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// The migrations Job, when asked.
    pub migration: Option<Job>,
}

/// Why objects could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The resource has no uid or namespace yet (it was not read from the API).
    #[error("FlagEvaluator has no {0}; it must come from the API server")]
    Incomplete(&'static str),
}

/// Which tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// PostgreSQL-backed.
    Root,
    /// Fronting an upstream.
    Proxy,
}

impl Tier {
    /// `root` / `proxy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Root => "root",
            Tier::Proxy => "proxy",
        }
    }
}

/// `<name>-root` / `<name>-proxy`.
pub fn tier_name(fe: &FlagEvaluator, tier: Tier) -> String {
    format!("{}-{}", fe.name_any(), tier.as_str())
}

/// The in-cluster URL of a tier's Service (`https://` with `spec.tls`).
pub fn tier_url(fe: &FlagEvaluator, tier: Tier) -> String {
    format!(
        "{}://{}.{}.svc:{PORT}",
        if fe.spec.tls.is_some() {
            "https"
        } else {
            "http"
        },
        tier_name(fe, tier),
        fe.namespace().unwrap_or_default()
    )
}

/// The URL applications should call: the proxy if there is one, else the root.
pub fn endpoint(fe: &FlagEvaluator) -> String {
    let tier = if fe.spec.proxy.is_some() {
        Tier::Proxy
    } else {
        Tier::Root
    };
    tier_url(fe, tier)
}

/// Labels of every owned object; `tier` adds the component.
pub fn labels(fe: &FlagEvaluator, tier: Option<Tier>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "pbflags-evaluator".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), fe.name_any()),
        ("app.kubernetes.io/part-of".to_owned(), "pbflags".to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ]);
    if let Some(t) = tier {
        l.insert(
            "app.kubernetes.io/component".to_owned(),
            t.as_str().to_owned(),
        );
    }
    l
}

fn selector(fe: &FlagEvaluator, tier: Tier) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), fe.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            tier.as_str().to_owned(),
        ),
        (
            "app.kubernetes.io/name".to_owned(),
            "pbflags-evaluator".to_owned(),
        ),
    ])
}

fn meta(
    fe: &FlagEvaluator,
    owner: &OwnerReference,
    name: String,
    tier: Option<Tier>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: fe.namespace(),
        labels: Some(labels(fe, tier)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The arguments an evaluator of `tier` runs with. The README's local commands use the same ones.
pub fn evaluator_args(inputs: &Inputs<'_>, tier: Tier) -> Vec<String> {
    let fe = inputs.fe;
    let key = fe.spec.descriptors.key();
    let mut args = vec![
        "serve".to_owned(),
        format!("--descriptors={DESCRIPTORS_DIR}/{key}"),
        format!("--listen=0.0.0.0:{PORT}"),
    ];
    let telemetry = fe.spec.telemetry.clone().unwrap_or_default();
    args.push(format!(
        "--log-format={}",
        telemetry.log_format.as_deref().unwrap_or("json")
    ));
    if let Some(level) = telemetry.log_level {
        args.push(format!("--log-level={level}"));
    }
    if let Some(c) = &fe.spec.cache {
        let durations = [
            ("kill-ttl", &c.kill_ttl),
            ("flag-ttl", &c.flag_ttl),
            ("override-ttl", &c.override_ttl),
            ("fetch-timeout", &c.fetch_timeout),
        ];
        for (flag, v) in durations {
            if let Some(v) = v {
                args.push(format!("--{flag}={v}"));
            }
        }
        if let Some(n) = c.override_max_entries {
            args.push(format!("--override-max-entries={n}"));
        }
        if let Some(n) = c.jitter_percent {
            args.push(format!("--jitter-percent={n}"));
        }
    }
    if tier == Tier::Proxy {
        let upstream = match (
            &fe.spec.root,
            fe.spec.proxy.as_ref().and_then(|p| p.upstream.clone()),
        ) {
            (None, Some(u)) => u,
            _ => tier_url(fe, Tier::Root),
        };
        args.push(format!("--server={upstream}"));
        if fe.spec.tls.is_some() && inputs.tls_ca {
            args.push(format!("--upstream-ca={TLS_DIR}/ca.crt"));
        }
    }
    if fe.spec.tls.is_some() {
        args.push(format!("--tls-cert={TLS_DIR}/tls.crt"));
        args.push(format!("--tls-key={TLS_DIR}/tls.key"));
    }
    args
}

fn database_env(fe: &FlagEvaluator) -> Vec<EnvVar> {
    let Some(root) = &fe.spec.root else {
        return vec![];
    };
    vec![EnvVar {
        name: "PBFLAGS_DATABASE".to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: root.database.secret_name.clone(),
                key: root.database.key().to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }]
}

fn probe(fe: &FlagEvaluator, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(PORT),
            // The kubelet does not verify the certificate of an HTTPS probe.
            scheme: fe.spec.tls.as_ref().map(|_| "HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn container(
    inputs: &Inputs<'_>,
    tier: Tier,
    args: Vec<String>,
    resources: Option<ResourceRequirements>,
) -> Container {
    let fe = inputs.fe;
    let mut env = if tier == Tier::Root {
        database_env(fe)
    } else {
        vec![]
    };
    if let Some(ep) = fe
        .spec
        .telemetry
        .as_ref()
        .and_then(|t| t.otlp_endpoint.clone())
    {
        env.push(EnvVar {
            name: "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            value: Some(ep),
            ..EnvVar::default()
        });
    }
    Container {
        name: "evaluator".to_owned(),
        image: Some(
            fe.spec
                .image
                .clone()
                .unwrap_or_else(|| inputs.defaults.image.clone()),
        ),
        image_pull_policy: fe.spec.image_pull_policy.clone(),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: PORT,
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe(fe, "/healthz")),
        readiness_probe: Some(probe(fe, "/readyz")),
        resources,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            std::iter::once(("descriptors", DESCRIPTORS_DIR))
                .chain(fe.spec.tls.as_ref().map(|_| ("tls", TLS_DIR)))
                .map(|(name, path)| VolumeMount {
                    name: name.to_owned(),
                    mount_path: path.to_owned(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                })
                .collect(),
        ),
        ..Container::default()
    }
}

fn pod_spec(
    inputs: &Inputs<'_>,
    containers: Vec<Container>,
    restart_policy: Option<String>,
) -> PodSpec {
    let fe = inputs.fe;
    let placement = fe.spec.placement.clone().unwrap_or_default();
    let key = fe.spec.descriptors.key().to_owned();
    PodSpec {
        service_account_name: Some(fe.name_any()),
        automount_service_account_token: Some(false),
        containers,
        restart_policy,
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // Mounted as a directory (no subPath), so the kubelet's ..data swap reaches the evaluator's
        // watcher and descriptor updates need no restart.
        // The TLS Secret likewise (renewals are reloaded, not restarted).
        volumes: Some(
            std::iter::once(Volume {
                name: "descriptors".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: fe.spec.descriptors.config_map_name.clone(),
                    items: Some(vec![KeyToPath {
                        key: key.clone(),
                        path: key,
                        mode: None,
                    }]),
                    optional: Some(false),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            })
            .chain(fe.spec.tls.as_ref().map(|tls| Volume {
                name: "tls".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(tls.secret_name.clone()),
                    optional: Some(false),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            }))
            .collect(),
        ),
        node_selector: placement.node_selector,
        tolerations: placement.tolerations,
        affinity: placement.affinity,
        priority_class_name: placement.priority_class_name,
        ..PodSpec::default()
    }
}

fn pod_annotations(inputs: &Inputs<'_>, tier: Tier) -> Option<BTreeMap<String, String>> {
    let mut a = inputs
        .fe
        .spec
        .placement
        .as_ref()
        .and_then(|p| p.pod_annotations.clone())
        .unwrap_or_default();
    if tier == Tier::Root
        && let Some(h) = &inputs.secret_hash
    {
        a.insert(SECRET_HASH_ANNOTATION.to_owned(), h.clone());
    }
    (!a.is_empty()).then_some(a)
}

fn deployment(
    inputs: &Inputs<'_>,
    owner: &OwnerReference,
    tier: Tier,
    replicas: i32,
    resources: Option<ResourceRequirements>,
) -> Deployment {
    let fe = inputs.fe;
    let pod_labels = labels(fe, Some(tier));
    Deployment {
        metadata: meta(fe, owner, tier_name(fe, tier), Some(tier)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(fe, tier)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: pod_annotations(inputs, tier),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(
                    inputs,
                    vec![container(
                        inputs,
                        tier,
                        evaluator_args(inputs, tier),
                        resources,
                    )],
                    None,
                )),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn service(fe: &FlagEvaluator, owner: &OwnerReference, tier: Tier) -> Service {
    Service {
        metadata: meta(fe, owner, tier_name(fe, tier), Some(tier)),
        spec: Some(ServiceSpec {
            selector: Some(selector(fe, tier)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                // Cleartext HTTP/2 (prior knowledge) and HTTP/1.1, or both over TLS.
                app_protocol: Some(
                    if fe.spec.tls.is_some() {
                        "https"
                    } else {
                        "kubernetes.io/h2c"
                    }
                    .to_owned(),
                ),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pdb(fe: &FlagEvaluator, owner: &OwnerReference, tier: Tier) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(fe, owner, tier_name(fe, tier), Some(tier)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(fe, tier)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The name of the migrations Job for the current image and database Secret: a new image or a
/// changed Secret gets a new Job (Job templates are immutable).
pub fn migration_name(inputs: &Inputs<'_>) -> String {
    use sha2::Digest as _;
    let image = inputs
        .fe
        .spec
        .image
        .clone()
        .unwrap_or_else(|| inputs.defaults.image.clone());
    let digest = sha2::Sha256::digest(format!(
        "{image}\n{}",
        inputs.secret_hash.as_deref().unwrap_or("")
    ));
    format!(
        "{}-migrate-{}",
        inputs.fe.name_any(),
        &hex::encode(digest)[..10]
    )
}

fn migration(inputs: &Inputs<'_>, owner: &OwnerReference) -> Job {
    let fe = inputs.fe;
    let mut c = container(inputs, Tier::Root, vec!["migrate".to_owned()], None);
    c.liveness_probe = None;
    c.readiness_probe = None;
    c.ports = None;
    // The Job only talks to the database: it needs no TLS files.
    if let Some(mounts) = c.volume_mounts.as_mut() {
        mounts.retain(|m| m.name != "tls");
    }
    let mut pod = pod_spec(inputs, vec![c], Some("OnFailure".to_owned()));
    if let Some(volumes) = pod.volumes.as_mut() {
        volumes.retain(|v| v.name != "tls");
    }
    Job {
        metadata: meta(fe, owner, migration_name(inputs), Some(Tier::Root)),
        spec: Some(JobSpec {
            backoff_limit: Some(4),
            ttl_seconds_after_finished: Some(86_400),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(fe, None)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// Every object the FlagEvaluator should have.
pub fn build(inputs: &Inputs<'_>) -> Result<Desired, BuildError> {
    let fe = inputs.fe;
    if fe.namespace().is_none() {
        return Err(BuildError::Incomplete("namespace"));
    }
    let owner = fe
        .controller_owner_ref(&())
        .ok_or(BuildError::Incomplete("uid"))?;
    let mut d = Desired {
        service_account: Some(ServiceAccount {
            metadata: meta(fe, &owner, fe.name_any(), None),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }),
        ..Desired::default()
    };
    let tiers = [
        fe.spec
            .root
            .as_ref()
            .map(|r| (Tier::Root, r.replicas.unwrap_or(1), r.resources.clone())),
        fe.spec
            .proxy
            .as_ref()
            .map(|p| (Tier::Proxy, p.replicas.unwrap_or(1), p.resources.clone())),
    ];
    for (tier, replicas, resources) in tiers.into_iter().flatten() {
        d.deployments
            .push(deployment(inputs, &owner, tier, replicas, resources));
        d.services.push(service(fe, &owner, tier));
        if replicas > 1 {
            d.pdbs.push(pdb(fe, &owner, tier));
        }
    }
    if fe
        .spec
        .root
        .as_ref()
        .is_some_and(|r| r.migrate == Some(true))
    {
        d.migration = Some(migration(inputs, &owner));
    }
    Ok(d)
}
