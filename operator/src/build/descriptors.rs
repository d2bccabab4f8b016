//! Descriptor rollout objects: the published copy the pods mount, and per candidate set a copy
//! and the Job that checks it (see [`crate::rollout`]).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt as _;

use super::workload::{job, job_pod};
use super::{DESCRIPTORS_DIR, Inputs, Tier, meta};
use crate::crd::FlagEvaluator;
use crate::rollout::{
    ACCEPTED_AT_ANNOTATION, CHECK_LABEL, CHECK_RETRIES, FLAGS_ANNOTATION, SHA256_ANNOTATION, short,
};

/// Exit code of a refused set (`pbflags-evaluator sync|descriptors`): the Job fails at once.
const REFUSED_EXIT_CODE: i32 = 65;

/// `<name>-published-descriptors`: the published copy every evaluator pod mounts. (Not
/// `<name>-descriptors`, a name users give their own ConfigMap.)
pub fn published_name(fe: &FlagEvaluator) -> String {
    format!("{}-published-descriptors", fe.name_any())
}

/// `<name>-candidate-descriptors-<short hash>`: the copy of a candidate set its check reads.
pub fn candidate_name(fe: &FlagEvaluator, sha256: &str) -> String {
    format!("{}-candidate-descriptors-{}", fe.name_any(), short(sha256))
}

/// The check Job of a candidate set: one per content and `allowBreaking` (Job templates are
/// immutable, so allowing breaking changes for a refused set starts a new check).
pub fn check_name(fe: &FlagEvaluator, sha256: &str) -> String {
    let suffix = if fe.spec.descriptors.allow_breaking() {
        "-breaking"
    } else {
        ""
    };
    format!("{}-check-{}{suffix}", fe.name_any(), short(sha256))
}

fn descriptors_map(fe: &FlagEvaluator, content: &[u8]) -> BTreeMap<String, ByteString> {
    BTreeMap::from([(
        fe.spec.descriptors.key().to_owned(),
        ByteString(content.to_vec()),
    )])
}

/// The published copy of a set that passed its check.
pub fn published(
    fe: &FlagEvaluator,
    owner: &OwnerReference,
    content: &[u8],
    sha256: &str,
    flags: Option<u64>,
    accepted_at: &str,
) -> ConfigMap {
    let mut metadata = meta(fe, owner, published_name(fe), None);
    let mut annotations = BTreeMap::from([
        (SHA256_ANNOTATION.to_owned(), sha256.to_owned()),
        (ACCEPTED_AT_ANNOTATION.to_owned(), accepted_at.to_owned()),
    ]);
    if let Some(n) = flags {
        annotations.insert(FLAGS_ANNOTATION.to_owned(), n.to_string());
    }
    metadata.annotations = Some(annotations);
    ConfigMap {
        metadata,
        binary_data: Some(descriptors_map(fe, content)),
        ..ConfigMap::default()
    }
}

fn check_meta(
    fe: &FlagEvaluator,
    owner: &OwnerReference,
    name: String,
    sha256: &str,
) -> ObjectMeta {
    let mut metadata = meta(fe, owner, name, None);
    if let Some(l) = metadata.labels.as_mut() {
        l.insert(CHECK_LABEL.to_owned(), "true".to_owned());
    }
    metadata.annotations = Some(BTreeMap::from([(
        SHA256_ANNOTATION.to_owned(),
        sha256.to_owned(),
    )]));
    metadata
}

/// The copy of a candidate set, read by its check Job (immutable: one per content).
pub fn candidate(
    fe: &FlagEvaluator,
    owner: &OwnerReference,
    content: &[u8],
    sha256: &str,
) -> ConfigMap {
    ConfigMap {
        metadata: check_meta(fe, owner, candidate_name(fe, sha256), sha256),
        binary_data: Some(descriptors_map(fe, content)),
        immutable: Some(true),
        ..ConfigMap::default()
    }
}

/// The Job that checks a candidate set: for a FlagEvaluator with a root, `sync` into its database
/// (which parses the set and refuses breaking changes); without one, `descriptors`. It writes its
/// outcome to its termination message; a refusal (exit 65) fails it at once, anything else is
/// retried [`CHECK_RETRIES`] times.
pub fn check_job(inputs: &Inputs<'_>, owner: &OwnerReference, sha256: &str) -> Job {
    let fe = inputs.fe;
    let key = fe.spec.descriptors.key();
    let descriptors = format!("--descriptors={DESCRIPTORS_DIR}/{key}");
    let report = "--report=/dev/termination-log".to_owned();
    let (tier, args) = if fe.spec.root.is_some() {
        let mut args = vec!["sync".to_owned(), descriptors, report];
        if fe.spec.descriptors.allow_breaking() {
            args.push("--allow-breaking".to_owned());
        }
        (Tier::Root, args)
    } else {
        (
            Tier::Proxy,
            vec!["descriptors".to_owned(), descriptors, report],
        )
    };
    let mut pod = job_pod(inputs, tier, args, &["tls", "admin-tokens"], "Never");
    for v in pod.volumes.iter_mut().flatten() {
        if let Some(cm) = v.config_map.as_mut().filter(|_| v.name == "descriptors") {
            cm.name = candidate_name(fe, sha256);
        }
    }
    job(
        fe,
        check_meta(fe, owner, check_name(fe, sha256), sha256),
        pod,
        JobSpec {
            backoff_limit: Some(CHECK_RETRIES),
            ttl_seconds_after_finished: Some(86_400),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".to_owned(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: None,
                        operator: "In".to_owned(),
                        values: vec![REFUSED_EXIT_CODE],
                    }),
                    on_pod_conditions: None,
                }],
            }),
            ..JobSpec::default()
        },
    )
}
