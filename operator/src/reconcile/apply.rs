//! Step three: write the [`Desired`] objects — identity and network first, then the migrations Job,
//! then the descriptor rollout (check the ConfigMap's set, publish it once it passed; see
//! [`crate::rollout`]), then the workloads (the root only once migrations have succeeded, every
//! tier only once a descriptor set is published) — prune what is no longer wanted, and report what
//! was observed for the status.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource as _, ResourceExt as _};

use super::Error;
use super::cluster::Cluster;
use super::dereference::Candidate;
use crate::build::descriptors::{published, published_name};
use crate::build::{Desired, MANAGED_BY, Tier, names, tier_name};
use crate::crd::FlagEvaluator;
use crate::rollout::{
    self, ACCEPTED_AT_ANNOTATION, CHECK_LABEL, Decision, FLAGS_ANNOTATION, Report,
    SHA256_ANNOTATION,
};
use crate::serving::{self, Prober, Serving, tier_of};
use crate::starting::{self, Verdict};
use crate::status::{Observed, Problem, Published, Rollout, reason};

/// Failed pods after which the migrations Job counts as failed (its `backoffLimit`).
const MIGRATION_FAILURES: i32 = 4;

/// Whether the root tier may roll out, judged from the migrations Job's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// No migrations asked, or they succeeded.
    Open,
    /// The Job is still running.
    Migrating,
    /// The Job failed.
    Failed(Problem),
}

/// The gate for a migrations Job named `job` with `status` (pure).
pub fn migration_gate(ns: &str, job: &str, status: Option<&JobStatus>) -> Gate {
    let failed = status.and_then(|s| s.failed).unwrap_or(0);
    let succeeded = status.and_then(|s| s.succeeded).unwrap_or(0);
    if succeeded >= 1 {
        Gate::Open
    } else if failed > MIGRATION_FAILURES {
        Gate::Failed(Problem {
            reason: reason::MIGRATION_FAILED,
            message: format!("migrations Job {ns}/{job} failed; see its pod logs"),
        })
    } else {
        Gate::Migrating
    }
}

/// (desired, ready) replicas of a Deployment; a rollout in progress counts only updated pods.
pub fn replicas(d: &Deployment) -> (i32, i32) {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.as_ref();
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    (desired, ready.min(updated))
}

/// What the published copy says of itself.
pub fn published_info(cm: &ConfigMap) -> Option<Published> {
    let a = cm.metadata.annotations.as_ref()?;
    Some(Published {
        sha256: a.get(SHA256_ANNOTATION)?.clone(),
        flags: a.get(FLAGS_ANNOTATION).and_then(|f| f.parse().ok()),
        accepted_at: a.get(ACCEPTED_AT_ANNOTATION).cloned(),
    })
}

/// The report in the termination message of the check Job's latest finished pod.
async fn check_report(api: &Cluster<'_>, job: &str) -> Result<Option<Report>, Error> {
    let pods = api.list::<Pod>(&format!("job-name={job}")).await?;
    let mut reports: Vec<(String, Report)> = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter_map(|t| {
            let report = Report::parse(t.message.as_deref()?)?;
            let at = t
                .finished_at
                .as_ref()
                .map(|f| f.0.to_string())
                .unwrap_or_default();
            Some((at, report))
        })
        .collect();
    reports.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reports.pop().map(|(_, r)| r))
}

/// The descriptor rollout: checks the candidate set unless it is already published, publishes it
/// once its check passed, and prunes the checks of older candidates. Checks run only once
/// migrations have succeeded (`sync` needs the schema).
async fn roll_out_descriptors(
    fe: &FlagEvaluator,
    desired: &Desired,
    candidate: &Candidate,
    may_check: bool,
    api: &Cluster<'_>,
) -> Result<Rollout, Error> {
    let name = published_name(fe);
    let existing_copy = api.get::<ConfigMap>(&name).await?;
    let current = existing_copy.as_ref().and_then(published_info);
    let mut rollout = Rollout {
        published: current.clone(),
        candidate: candidate.sha256.clone(),
        decision: Decision::Current,
        check_job: None,
        serving: None,
    };
    // Never take over a ConfigMap someone else made under the published copy's name.
    let foreign = existing_copy
        .as_ref()
        .is_some_and(|cm| cm.labels().get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1));
    if foreign || fe.spec.descriptors.config_map_name == name {
        rollout.published = None;
        rollout.decision = Decision::CheckFailed {
            reason: format!(
                "ConfigMap {}/{name} is not managed by pbflags-operator, but the published \
                 descriptors need that name; rename that ConfigMap",
                api.namespace()
            ),
        };
        return Ok(rollout);
    }
    let Some((copy, job)) = &desired.check else {
        return Ok(rollout);
    };
    let job_name = job.name_any();
    let existing = api.get::<Job>(&job_name).await?;
    // The pod's report is read as soon as the Job has a pod: it is final before the Job is.
    let report = match existing.as_ref().and_then(|j| j.status.as_ref()) {
        Some(_) => check_report(api, &job_name).await?,
        None => None,
    };
    let mut decision = rollout::decide(
        current.as_ref().map(|p| p.sha256.as_str()),
        &candidate.sha256,
        existing.as_ref().and_then(|j| j.status.as_ref()),
        report.as_ref(),
    );
    match &decision {
        Decision::Check => {
            decision = Decision::Checking;
            if may_check {
                api.apply(copy).await?;
                api.apply(job).await?;
            }
        }
        Decision::Publish { flags } => {
            let owner = fe
                .controller_owner_ref(&())
                .ok_or_else(|| Error::Build(crate::build::BuildError::Incomplete("uid")))?;
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let cm = published(
                fe,
                &owner,
                &candidate.content,
                &candidate.sha256,
                *flags,
                &now,
            );
            rollout.published = published_info(&api.apply(&cm).await?);
        }
        _ => {}
    }
    // Checks of other candidates are stale; this one's stays while it matters.
    let keep = if matches!(decision, Decision::Current | Decision::Publish { .. }) {
        vec![]
    } else {
        vec![job_name.clone(), copy.name_any()]
    };
    let check = format!("{CHECK_LABEL}=true");
    api.prune_selected::<Job>(&fe.name_any(), &check, &keep)
        .await?;
    api.prune_selected::<ConfigMap>(&fe.name_any(), &check, &keep)
        .await?;
    rollout.check_job = Some(job_name);
    rollout.decision = decision;
    Ok(rollout)
}

/// Tells the kubelet of every evaluator pod that the published copy changed, then asks the ready
/// ones which set they serve (see [`crate::serving`]).
///
/// The nudge: a pod update makes the kubelet remount the pod's ConfigMap volumes at once, instead
/// of at its next periodic sync (about a minute later). Each pod is annotated with the published
/// SHA-256 once; pods already annotated are left alone. Failures are logged, not fatal: the
/// kubelet's own sync still brings the set.
async fn pods_serving(
    fe: &FlagEvaluator,
    sha256: &str,
    api: &Cluster<'_>,
    prober: &Prober,
) -> Result<Serving, Error> {
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/name=pbflags-evaluator",
        fe.name_any()
    );
    let annotations =
        std::collections::BTreeMap::from([(SHA256_ANNOTATION.to_owned(), sha256.to_owned())]);
    let pods = api.list::<Pod>(&selector).await?;
    for pod in &pods {
        let told = pod.annotations().get(SHA256_ANNOTATION).map(String::as_str) == Some(sha256);
        if tier_of(pod).is_none() || told || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = api.annotate::<Pod>(&pod.name_any(), &annotations).await {
            tracing::debug!(pod = %pod.name_any(), error = %e, "could not nudge pod");
        }
    }
    let answers = prober.ask(&pods, fe.spec.tls.is_some()).await;
    Ok(serving::count(&answers, sha256))
}

/// The first of `fe`'s pods (evaluators and Jobs, by name) that cannot start, as a problem; see
/// [`crate::starting`]. Asked only while some tier or the migrations Job is not done.
async fn not_starting(fe: &FlagEvaluator, api: &Cluster<'_>) -> Result<Option<Problem>, Error> {
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/name=pbflags-evaluator,{}={}",
        fe.name_any(),
        MANAGED_BY.0,
        MANAGED_BY.1
    );
    let mut pods = api.list::<Pod>(&selector).await?;
    pods.sort_by_key(kube::ResourceExt::name_any);
    let now = k8s_openapi::jiff::Timestamp::now();
    for pod in &pods {
        let name = pod.name_any();
        match starting::judge(pod, now) {
            Verdict::Fine => {}
            Verdict::Failing(why) => {
                return Ok(Some(starting::problem(
                    &name,
                    reason::POD_NOT_STARTING,
                    &why,
                )));
            }
            Verdict::Creating => {
                if let Some((reason, why)) = starting::from_events(&api.pod_events(&name).await?) {
                    return Ok(Some(starting::problem(&name, reason, &why)));
                }
            }
        }
    }
    Ok(None)
}

/// Applies `desired` for `fe` and prunes what it no longer has.
pub async fn apply(
    fe: &FlagEvaluator,
    desired: &Desired,
    candidate: &Candidate,
    api: &Cluster<'_>,
    prober: &Prober,
) -> Result<Observed, Error> {
    let mut observed = Observed::default();
    if let Some(problem) = name_conflicts(fe, desired, api).await? {
        observed.problem = Some(problem);
        return Ok(observed);
    }
    api.apply(&desired.service_account).await?;
    for service in desired.services() {
        api.apply(service).await?;
    }
    for pdb in desired.pdbs() {
        api.apply(pdb).await?;
    }
    for hpa in desired.hpas() {
        api.apply(hpa).await?;
    }
    for policy in desired.network_policies() {
        api.apply(policy).await?;
    }
    let gate = match &desired.migration {
        None => Gate::Open,
        Some(job) => {
            let applied = api.apply::<Job>(job).await?;
            migration_gate(api.namespace(), &job.name_any(), applied.status.as_ref())
        }
    };
    match gate {
        Gate::Open => {}
        Gate::Migrating => observed.migrating = true,
        Gate::Failed(problem) => observed.problem = Some(problem),
    }
    let rollout = roll_out_descriptors(fe, desired, candidate, gate_open(&observed), api).await?;
    // Pods mount the published copy: none may start before there is one.
    let publishable = rollout.published.is_some();
    observed.descriptors = Some(rollout);
    if let Some(root) = &desired.root {
        observed.root = if gate_open(&observed) && publishable {
            Some(replicas(&api.apply(&root.deployment).await?))
        } else {
            // An existing root keeps serving its current version until migrations succeed.
            api.get::<Deployment>(&tier_name(fe, Tier::Root))
                .await?
                .as_ref()
                .map(replicas)
        };
    }
    if let Some(proxy) = &desired.proxy {
        observed.proxy = if publishable {
            Some(replicas(&api.apply(&proxy.deployment).await?))
        } else {
            api.get::<Deployment>(&tier_name(fe, Tier::Proxy))
                .await?
                .as_ref()
                .map(replicas)
        };
    }
    if let Some(rollout) = observed.descriptors.as_mut()
        && let Some(p) = &rollout.published
    {
        rollout.serving = Some(pods_serving(fe, &p.sha256, api, prober).await?);
    }
    if observed.waiting() && observed.problem.is_none() {
        observed.problem = not_starting(fe, api).await?;
    }
    let instance = fe.name_any();
    api.prune::<Deployment>(&instance, &names(desired.deployments()))
        .await?;
    api.prune::<Service>(&instance, &names(desired.services()))
        .await?;
    api.prune::<PodDisruptionBudget>(&instance, &names(desired.pdbs()))
        .await?;
    api.prune::<HorizontalPodAutoscaler>(&instance, &names(desired.hpas()))
        .await?;
    api.prune::<NetworkPolicy>(&instance, &names(desired.network_policies()))
        .await?;
    // Earlier versions named the ServiceAccount after the FlagEvaluator itself.
    api.prune::<ServiceAccount>(&instance, &names(std::iter::once(&desired.service_account)))
        .await?;
    Ok(observed)
}

/// Objects the FlagEvaluator needs whose names are taken by objects it does not control (made by
/// hand, by another tool, or for another FlagEvaluator): nothing is written while any is, so the
/// operator never takes one over, nor lets its garbage collection delete it later.
async fn name_conflicts(
    fe: &FlagEvaluator,
    desired: &Desired,
    api: &Cluster<'_>,
) -> Result<Option<Problem>, Error> {
    let uid = fe.uid().unwrap_or_default();
    let mut taken = Vec::new();
    taken.extend(api.foreign(&desired.service_account, &uid).await?);
    for s in desired.services() {
        taken.extend(api.foreign(s, &uid).await?);
    }
    for d in desired.deployments() {
        taken.extend(api.foreign(d, &uid).await?);
    }
    for p in desired.pdbs() {
        taken.extend(api.foreign(p, &uid).await?);
    }
    for h in desired.hpas() {
        taken.extend(api.foreign(h, &uid).await?);
    }
    for p in desired.network_policies() {
        taken.extend(api.foreign(p, &uid).await?);
    }
    if let Some(job) = &desired.migration {
        taken.extend(api.foreign(job, &uid).await?);
    }
    Ok((!taken.is_empty()).then(|| Problem {
        reason: reason::NAME_CONFLICT,
        message: format!(
            "{} already exist{} and {} not made for this FlagEvaluator; pbflags-operator does not \
             take over objects it did not create: rename or delete {}, or rename the FlagEvaluator",
            taken.join(", "),
            if taken.len() == 1 { "s" } else { "" },
            if taken.len() == 1 { "was" } else { "were" },
            if taken.len() == 1 { "it" } else { "them" },
        ),
    }))
}

fn gate_open(observed: &Observed) -> bool {
    !observed.migrating && observed.problem.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_on_success_and_closes_on_the_fifth_failure() {
        let status = |succeeded, failed| JobStatus {
            succeeded: Some(succeeded),
            failed: Some(failed),
            ..JobStatus::default()
        };
        assert_eq!(migration_gate("ns", "j", None), Gate::Migrating);
        assert_eq!(
            migration_gate("ns", "j", Some(&status(0, 4))),
            Gate::Migrating
        );
        assert_eq!(migration_gate("ns", "j", Some(&status(1, 4))), Gate::Open);
        assert_eq!(migration_gate("ns", "j", Some(&status(1, 9))), Gate::Open);
        let Gate::Failed(p) = migration_gate("ns", "j", Some(&status(0, 5))) else {
            panic!("five failures fail the gate");
        };
        assert_eq!(p.reason, reason::MIGRATION_FAILED);
        assert!(p.message.contains("ns/j"), "{}", p.message);
    }

    #[test]
    fn a_rollout_counts_only_updated_ready_pods() {
        let d = |replicas, ready, updated| Deployment {
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: Some(k8s_openapi::api::apps::v1::DeploymentStatus {
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                ..Default::default()
            }),
            ..Deployment::default()
        };
        assert_eq!(replicas(&d(3, 3, 1)), (3, 1));
        assert_eq!(replicas(&d(3, 2, 3)), (3, 2));
        assert_eq!(replicas(&Deployment::default()), (1, 0));
    }
}
