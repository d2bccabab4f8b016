//! The evaluator container and its pod: arguments, environment, probes, mounts, security context.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction,
    KeyToPath, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    ADMIN_DIR, ADMIN_PORT, DATABASE_CA_DIR, DATABASE_DIR, DESCRIPTORS_DIR, Inputs, PORT, TLS_DIR,
    Tier, tier_url,
};
use crate::crd::FlagEvaluator;

/// The database URL's file name in [`DATABASE_DIR`].
const DATABASE_FILE: &str = "url";

/// How long a terminating evaluator keeps serving, not ready, while its Service's endpoints catch
/// up (`--shutdown-delay`): connections routed to it in that time are still answered.
pub const SHUTDOWN_DELAY_SECONDS: i64 = 5;
/// The evaluator's drain deadline (`--shutdown-timeout`, its default).
const DRAIN_SECONDS: i64 = 10;

/// The arguments an evaluator of `tier` runs with. The README's local commands use the same ones.
pub fn evaluator_args(inputs: &Inputs<'_>, tier: Tier) -> Vec<String> {
    let fe = inputs.fe;
    let key = fe.spec.descriptors.key();
    let mut args = vec![
        "serve".to_owned(),
        format!("--descriptors={DESCRIPTORS_DIR}/{key}"),
        format!("--listen=0.0.0.0:{PORT}"),
        format!("--shutdown-delay={SHUTDOWN_DELAY_SECONDS}s"),
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
        // The operator does not read the TLS Secret: the root is checked against its ca.crt if
        // the Secret has one, else against the system trust store.
        if fe.spec.tls.is_some() {
            args.push(format!("--upstream-ca={TLS_DIR}/ca.crt"));
            args.push("--upstream-ca-optional".to_owned());
        }
    }
    if fe.spec.tls.is_some() {
        args.push(format!("--tls-cert={TLS_DIR}/tls.crt"));
        args.push(format!("--tls-key={TLS_DIR}/tls.key"));
    }
    if tier == Tier::Root && admin(fe).is_some() {
        args.push(format!("--admin-listen=0.0.0.0:{ADMIN_PORT}"));
        args.push(format!("--admin-token-file={ADMIN_DIR}/{ADMIN_FILE}"));
    }
    args
}

/// The admin API settings, if the root tier serves it.
fn admin(fe: &FlagEvaluator) -> Option<&crate::crd::AdminSpec> {
    fe.spec
        .root
        .as_ref()?
        .admin
        .as_ref()
        .filter(|a| a.enabled())
}

/// The token file's name in [`ADMIN_DIR`].
const ADMIN_FILE: &str = "tokens";

fn database_env(fe: &FlagEvaluator) -> Vec<EnvVar> {
    let Some(root) = &fe.spec.root else {
        return vec![];
    };
    let ca = root.database_ca.as_ref().map(|_| EnvVar {
        name: "PBFLAGS_DATABASE_CA".to_owned(),
        value: Some(format!("{DATABASE_CA_DIR}/ca.crt")),
        ..EnvVar::default()
    });
    // A file, not an environment variable: the evaluator follows it, so a rotated password
    // needs no restart, and the operator never handles the value.
    let url = EnvVar {
        name: "PBFLAGS_DATABASE_FILE".to_owned(),
        value: Some(format!("{DATABASE_DIR}/{DATABASE_FILE}")),
        ..EnvVar::default()
    };
    std::iter::once(url).chain(ca).collect()
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

pub(super) fn container(
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
    let root = fe.spec.root.as_ref().filter(|_| tier == Tier::Root);
    let database = root.map(|_| ("database", DATABASE_DIR));
    let admin_tokens = admin(fe)
        .filter(|_| tier == Tier::Root)
        .map(|_| ("admin-tokens", ADMIN_DIR));
    let database_ca = root
        .filter(|r| r.database_ca.is_some())
        .map(|_| ("database-ca", DATABASE_CA_DIR));
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
        ports: Some(
            std::iter::once(ContainerPort {
                name: Some("http".to_owned()),
                container_port: PORT,
                ..ContainerPort::default()
            })
            .chain(
                (tier == Tier::Root && admin(fe).is_some()).then(|| ContainerPort {
                    name: Some("admin".to_owned()),
                    container_port: ADMIN_PORT,
                    ..ContainerPort::default()
                }),
            )
            .collect(),
        ),
        liveness_probe: Some(probe(fe, "/healthz")),
        readiness_probe: Some(probe(fe, "/readyz")),
        resources: Some(resources.unwrap_or_else(default_resources)),
        // A container that fails at start-up (a missing file, a bad setting) reports its last log
        // lines, which the operator puts in the FlagEvaluator's status.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
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
                .chain(database)
                .chain(database_ca)
                .chain(admin_tokens)
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

pub(super) fn pod_spec(
    inputs: &Inputs<'_>,
    tier: Option<Tier>,
    containers: Vec<Container>,
    restart_policy: Option<String>,
) -> PodSpec {
    let fe = inputs.fe;
    let placement = fe.spec.placement.clone().unwrap_or_default();
    let key = fe.spec.descriptors.key().to_owned();
    let database = database_volumes(fe, &containers);
    // Evaluator pods (no restart policy given) spread over nodes and zones unless told otherwise;
    // Job pods are one-offs.
    let spread = match (&restart_policy, tier) {
        (None, Some(tier)) => Some(
            placement
                .topology_spread_constraints
                .clone()
                .unwrap_or_else(|| default_spread(fe, tier)),
        ),
        _ => None,
    };
    // Evaluator pods (no restart policy given): the delay, the drain, and a margin to exit.
    let grace = restart_policy
        .is_none()
        .then_some(SHUTDOWN_DELAY_SECONDS + DRAIN_SECONDS + 5);
    PodSpec {
        termination_grace_period_seconds: grace,
        service_account_name: Some(super::service_account_name(fe)),
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
                    // The published copy: only sets that passed their check reach a pod.
                    name: super::descriptors::published_name(fe),
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
            .chain(database)
            .collect(),
        ),
        node_selector: placement.node_selector,
        tolerations: placement.tolerations,
        affinity: placement.affinity,
        priority_class_name: placement.priority_class_name,
        image_pull_secrets: placement.image_pull_secrets,
        topology_spread_constraints: spread,
        ..PodSpec::default()
    }
}

/// A tier's pods as evenly as possible over nodes, then zones; never blocking scheduling.
fn default_spread(fe: &FlagEvaluator, tier: Tier) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(super::selector(fe, tier)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Requests of an evaluator container when the spec sets no resources: an idle evaluator needs
/// about 15 MiB and little CPU; requests let the scheduler place it honestly. No limits: the cache
/// is bounded by --cache-max-bytes, and CPU throttling would only add latency.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("96Mi".to_owned())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// The database URL and CA Secrets as volumes, for pods whose containers mount them (root, the
/// migrations Job and the descriptor check): only the named keys, under fixed file names.
fn database_volumes(fe: &FlagEvaluator, containers: &[Container]) -> Vec<Volume> {
    let Some(root) = fe.spec.root.as_ref() else {
        return vec![];
    };
    let mounted = |name: &str| {
        containers
            .iter()
            .any(|c| c.volume_mounts.iter().flatten().any(|m| m.name == name))
    };
    let volume = |name: &str, secret: &str, key: &str, path: &str| Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(vec![KeyToPath {
                key: key.to_owned(),
                path: path.to_owned(),
                mode: None,
            }]),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let url = mounted("database").then(|| {
        volume(
            "database",
            &root.database.secret_name,
            root.database.key(),
            DATABASE_FILE,
        )
    });
    let ca = root
        .database_ca
        .as_ref()
        .filter(|_| mounted("database-ca"))
        .map(|ca| volume("database-ca", &ca.secret_name, ca.key(), "ca.crt"));
    let tokens = admin(fe).filter(|_| mounted("admin-tokens")).map(|a| {
        volume(
            "admin-tokens",
            &a.token_secret_name,
            a.token_key(),
            ADMIN_FILE,
        )
    });
    url.into_iter().chain(ca).chain(tokens).collect()
}

pub(super) fn pod_annotations(inputs: &Inputs<'_>) -> Option<BTreeMap<String, String>> {
    let a = inputs
        .fe
        .spec
        .placement
        .as_ref()
        .and_then(|p| p.pod_annotations.clone())
        .unwrap_or_default();
    (!a.is_empty()).then_some(a)
}
