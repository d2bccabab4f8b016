//! Workloads: a tier's Deployment, PodDisruptionBudget and HorizontalPodAutoscaler, and the
//! migrations Job.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{container, pod_annotations, pod_spec};
use super::{Inputs, Tier, evaluator_args, labels, meta, migration_name, selector, tier_name};
use crate::crd::{AutoscalingSpec, FlagEvaluator};

pub(super) fn deployment(
    inputs: &Inputs<'_>,
    owner: &OwnerReference,
    tier: Tier,
    replicas: Option<i32>,
    resources: Option<ResourceRequirements>,
) -> Deployment {
    let fe = inputs.fe;
    // The user's pod labels first, so the operator's own (the Service selects on them) win.
    let mut pod_labels = fe
        .spec
        .placement
        .as_ref()
        .and_then(|p| p.pod_labels.clone())
        .unwrap_or_default();
    pod_labels.extend(labels(fe, Some(tier)));
    Deployment {
        metadata: meta(fe, owner, tier_name(fe, tier), Some(tier)),
        spec: Some(DeploymentSpec {
            replicas,
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
                    annotations: pod_annotations(inputs),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(
                    inputs,
                    Some(tier),
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

pub(super) fn pdb(fe: &FlagEvaluator, owner: &OwnerReference, tier: Tier) -> PodDisruptionBudget {
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

/// Scales `tier`'s Deployment on average CPU use.
pub(super) fn hpa(
    fe: &FlagEvaluator,
    owner: &OwnerReference,
    tier: Tier,
    a: &AutoscalingSpec,
) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata: meta(fe, owner, tier_name(fe, tier), Some(tier)),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: tier_name(fe, tier),
            },
            min_replicas: Some(a.min_replicas.unwrap_or(2)),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(
                            a.target_cpu_utilization_percentage.unwrap_or(70),
                        ),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        ..HorizontalPodAutoscaler::default()
    }
}

/// A one-shot evaluator pod running `args`: no probes, no port, and without the volumes named in
/// `drop` (what the command does not read).
pub(super) fn job_pod(
    inputs: &Inputs<'_>,
    tier: Tier,
    args: Vec<String>,
    drop: &[&str],
    restart_policy: &str,
) -> PodSpec {
    let mut c = container(inputs, tier, args, None);
    c.liveness_probe = None;
    c.readiness_probe = None;
    c.ports = None;
    if let Some(mounts) = c.volume_mounts.as_mut() {
        mounts.retain(|m| !drop.contains(&m.name.as_str()));
    }
    let mut pod = pod_spec(inputs, None, vec![c], Some(restart_policy.to_owned()));
    if let Some(volumes) = pod.volumes.as_mut() {
        volumes.retain(|v| !drop.contains(&v.name.as_str()));
    }
    pod
}

/// A Job with `metadata` running `pod` (labelled as the FlagEvaluator's) under `spec`.
pub(super) fn job(fe: &FlagEvaluator, metadata: ObjectMeta, pod: PodSpec, spec: JobSpec) -> Job {
    Job {
        metadata,
        spec: Some(JobSpec {
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(fe, None)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..spec
        }),
        ..Job::default()
    }
}

pub(super) fn migration(inputs: &Inputs<'_>, owner: &OwnerReference) -> Job {
    let fe = inputs.fe;
    // The Job only talks to the database: it needs no TLS files, and no descriptors (none may be
    // published before migrations ran).
    let pod = job_pod(
        inputs,
        Tier::Root,
        vec!["migrate".to_owned()],
        &["tls", "descriptors", "admin-tokens"],
        "OnFailure",
    );
    job(
        fe,
        meta(fe, owner, migration_name(inputs), Some(Tier::Root)),
        pod,
        JobSpec {
            backoff_limit: Some(4),
            ttl_seconds_after_finished: Some(86_400),
            ..JobSpec::default()
        },
    )
}
