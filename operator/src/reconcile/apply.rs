//! Step three: write the [`Desired`] objects — identity and network first, then the migrations Job,
//! then the workloads, the root only once migrations have succeeded — prune what is no longer
//! wanted, and report what was observed for the status.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt as _;

use super::Error;
use super::cluster::Cluster;
use crate::build::{Desired, Tier, names, tier_name};
use crate::crd::FlagEvaluator;
use crate::status::{Observed, Problem, reason};

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

/// Applies `desired` for `fe` and prunes what it no longer has.
pub async fn apply(
    fe: &FlagEvaluator,
    desired: &Desired,
    api: &Cluster<'_>,
) -> Result<Observed, Error> {
    let mut observed = Observed::default();
    api.apply(&desired.service_account).await?;
    for service in desired.services() {
        api.apply(service).await?;
    }
    for pdb in desired.pdbs() {
        api.apply(pdb).await?;
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
    if let Some(root) = &desired.root {
        observed.root = if gate_open(&observed) {
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
        observed.proxy = Some(replicas(&api.apply(&proxy.deployment).await?));
    }
    let instance = fe.name_any();
    api.prune::<Deployment>(&instance, &names(desired.deployments()))
        .await?;
    api.prune::<Service>(&instance, &names(desired.services()))
        .await?;
    api.prune::<PodDisruptionBudget>(&instance, &names(desired.pdbs()))
        .await?;
    Ok(observed)
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
