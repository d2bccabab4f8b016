//! `status`: what the reconcile observed → the FlagEvaluator's status. Pure: the caller passes the
//! time, and a condition's `lastTransitionTime` only moves when its status changes, so an unchanged
//! world computes an identical status (and the reconcile writes nothing).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{
    DescriptorsStatus, FlagEvaluator, FlagEvaluatorStatus, ServingStatus, TierStatus,
};
use crate::rollout::{Decision, short};
use crate::serving::{Serving, TierServing};

/// Condition reasons, for `kubectl describe` and alerts.
pub mod reason {
    /// Every tier has its replicas ready.
    pub const READY: &str = "AllReplicasReady";
    /// Replicas are starting or updating.
    pub const ROLLING_OUT: &str = "ReplicasNotReady";
    /// The descriptors ConfigMap does not exist.
    pub const CONFIG_MAP_MISSING: &str = "ConfigMapMissing";
    /// The ConfigMap lacks the descriptors key.
    pub const CONFIG_MAP_KEY_MISSING: &str = "ConfigMapKeyMissing";
    /// A pod of the FlagEvaluator cannot start (its message says which and why).
    pub const POD_NOT_STARTING: &str = "PodNotStarting";
    /// The database Secret does not exist.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// The Secret lacks the URL key.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The TLS Secret does not exist.
    pub const TLS_SECRET_MISSING: &str = "TLSSecretMissing";
    /// The migrations Job has not finished.
    pub const MIGRATING: &str = "Migrating";
    /// The migrations Job failed.
    pub const MIGRATION_FAILED: &str = "MigrationFailed";
    /// An object the FlagEvaluator needs has a name taken by an object it does not control.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// Writing objects to the API failed.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Nothing is wrong.
    pub const OK: &str = "AsExpected";
    /// A descriptor set is being checked before it is published.
    pub const DESCRIPTOR_ROLLOUT: &str = "DescriptorRollout";
    /// The ConfigMap's descriptor set is published.
    pub const DESCRIPTORS_ACCEPTED: &str = "Accepted";
    /// The ConfigMap's descriptor set was refused; the published one keeps serving.
    pub const DESCRIPTORS_REFUSED: &str = "DescriptorsRefused";
    /// The check of the ConfigMap's descriptor set failed without judging it.
    pub const DESCRIPTORS_CHECK_FAILED: &str = "DescriptorsCheckFailed";
}

/// What the published copy says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// SHA-256 of its content.
    pub sha256: String,
    /// Flags it declares, if known.
    pub flags: Option<u64>,
    /// When it was accepted.
    pub accepted_at: Option<String>,
}

/// Where the descriptor rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// The set the pods are given, if any yet.
    pub published: Option<Published>,
    /// SHA-256 of the set in the user's ConfigMap.
    pub candidate: String,
    /// What the rollout decided about it.
    pub decision: Decision,
    /// The check Job's name, if the candidate needed one.
    pub check_job: Option<String>,
    /// Which ready pods serve the published set, once asked.
    pub serving: Option<Serving>,
}

/// What blocks the FlagEvaluator, if anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// One of [`reason`].
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// What the reconcile saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// A missing reference or a failure; Degraded when set.
    pub problem: Option<Problem>,
    /// (desired, ready) replicas of the root tier, if it exists.
    pub root: Option<(i32, i32)>,
    /// (desired, ready) replicas of the proxy tier, if it exists.
    pub proxy: Option<(i32, i32)>,
    /// The migrations Job is still running.
    pub migrating: bool,
    /// The descriptor rollout, once references could be read.
    pub descriptors: Option<Rollout>,
}

fn tier(t: Option<(i32, i32)>) -> Option<TierStatus> {
    t.map(|(desired, ready)| TierStatus {
        desired,
        ready,
        summary: format!("{ready}/{desired}"),
    })
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    tri_condition(type_, Some(ok), reason, message, generation, now)
}

/// A condition whose status may be `Unknown` (`None`).
fn tri_condition(
    type_: &str,
    ok: Option<bool>,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

impl Observed {
    /// The migrations Job or some tier is not done: pods are starting (or cannot).
    pub fn waiting(&self) -> bool {
        self.migrating
            || [self.root, self.proxy]
                .into_iter()
                .flatten()
                .any(|(desired, ready)| ready < desired)
    }
}

/// The status for `observed`, keeping transition times of conditions whose status did not change.
pub fn compute(fe: &FlagEvaluator, observed: &Observed, now: Time) -> FlagEvaluatorStatus {
    let generation = fe.metadata.generation;
    let tiers: Vec<(i32, i32)> = [observed.root, observed.proxy]
        .into_iter()
        .flatten()
        .collect();
    let all_ready = tiers.iter().all(|(d, r)| r >= d);
    let rollout = observed.descriptors.as_ref();
    let checking = rollout.is_some_and(|r| r.decision == Decision::Checking);
    let unpublished = rollout.is_some_and(|r| r.published.is_none());
    // A refused or unchecked set while pods serve the published one degrades, but is no outage.
    let descriptor_problem = rollout.and_then(descriptor_problem);
    let (ready, ready_reason, ready_msg) = match (&observed.problem, observed.migrating, all_ready)
    {
        (Some(p), _, _) => (false, p.reason, p.message.clone()),
        (None, true, _) => (
            false,
            reason::MIGRATING,
            "waiting for the migrations Job to finish".to_owned(),
        ),
        (None, false, _) if unpublished => match &descriptor_problem {
            Some(p) => (false, p.reason, p.message.clone()),
            None => (
                false,
                reason::DESCRIPTOR_ROLLOUT,
                "waiting for the first descriptor set to pass its check".to_owned(),
            ),
        },
        (None, false, true) => (
            true,
            reason::READY,
            "all evaluator replicas are ready".to_owned(),
        ),
        (None, false, false) => (
            false,
            reason::ROLLING_OUT,
            "waiting for evaluator replicas to become ready".to_owned(),
        ),
    };
    let rolling = checking && !unpublished;
    let taking_up = rollout.and_then(taking_up);
    let progressing = observed.problem.is_none() && (!ready || rolling || taking_up.is_some());
    let (progress_reason, progress_msg) = if !ready {
        (ready_reason, ready_msg.clone())
    } else if let (false, Some(message)) = (rolling, &taking_up) {
        (reason::DESCRIPTOR_ROLLOUT, message.clone())
    } else {
        (
            reason::DESCRIPTOR_ROLLOUT,
            rollout.map_or_else(String::new, |r| {
                format!(
                    "checking descriptor set {} before publishing it",
                    short(&r.candidate)
                )
            }),
        )
    };
    let problem = observed.problem.as_ref().or(descriptor_problem.as_ref());
    let degraded = problem.is_some();
    let mut conditions = vec![
        condition(
            "Ready",
            ready,
            ready_reason,
            ready_msg.clone(),
            generation,
            &now,
        ),
        condition(
            "Progressing",
            progressing,
            if progressing {
                progress_reason
            } else {
                reason::OK
            },
            if progressing {
                progress_msg
            } else {
                "nothing to roll out".to_owned()
            },
            generation,
            &now,
        ),
        condition(
            "Degraded",
            degraded,
            problem.map_or(reason::OK, |p| p.reason),
            problem.map_or_else(|| "no problems".to_owned(), |p| p.message.clone()),
            generation,
            &now,
        ),
    ];
    if let Some(r) = rollout {
        conditions.push(accepted_condition(fe, r, generation, &now));
    }
    if let Some(previous) = fe.status.as_ref() {
        for c in &mut conditions {
            if let Some(old) = previous.conditions.iter().find(|o| o.type_ == c.type_)
                && old.status == c.status
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    FlagEvaluatorStatus {
        observed_generation: generation,
        conditions,
        mode: Some(fe.spec.mode().to_owned()),
        root: tier(observed.root),
        proxy: tier(observed.proxy),
        endpoint: Some(crate::build::endpoint(fe)),
        descriptors: rollout.and_then(|r| descriptors_status(fe, r)),
    }
}

/// The problem a refused or failed check is.
fn descriptor_problem(r: &Rollout) -> Option<Problem> {
    let keeps = r.published.as_ref().map_or_else(
        || "no set is published yet, so no evaluator starts".to_owned(),
        |p| format!("the pods keep {}", short(&p.sha256)),
    );
    match &r.decision {
        Decision::Refused { reason } => Some(Problem {
            reason: reason::DESCRIPTORS_REFUSED,
            message: format!(
                "descriptor set {} was refused; {keeps}: {reason}",
                short(&r.candidate)
            ),
        }),
        Decision::CheckFailed { reason } => Some(Problem {
            reason: reason::DESCRIPTORS_CHECK_FAILED,
            message: format!(
                "the check of descriptor set {} failed ({}); {keeps}: {reason}",
                short(&r.candidate),
                r.check_job.as_deref().unwrap_or("no Job")
            ),
        }),
        _ => None,
    }
}

fn accepted_condition(
    fe: &FlagEvaluator,
    r: &Rollout,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let source = format!(
        "ConfigMap {}/{} key {:?}",
        fe.metadata.namespace.as_deref().unwrap_or(""),
        fe.spec.descriptors.config_map_name,
        fe.spec.descriptors.key()
    );
    let (ok, reason, message) = match &r.decision {
        Decision::Current | Decision::Publish { .. } => (
            Some(true),
            reason::DESCRIPTORS_ACCEPTED,
            format!(
                "descriptor set {} from {source} is published{}",
                short(&r.candidate),
                r.published
                    .as_ref()
                    .and_then(|p| p.flags)
                    .map_or_else(String::new, |n| format!(" ({n} flags)"))
            ),
        ),
        Decision::Check | Decision::Checking => (
            None,
            reason::DESCRIPTOR_ROLLOUT,
            format!(
                "checking descriptor set {} from {source} ({})",
                short(&r.candidate),
                r.check_job.as_deref().unwrap_or("waiting for migrations")
            ),
        ),
        Decision::Refused { .. } | Decision::CheckFailed { .. } => {
            let p = descriptor_problem(r).unwrap_or(Problem {
                reason: reason::DESCRIPTORS_REFUSED,
                message: String::new(),
            });
            (Some(false), p.reason, p.message)
        }
    };
    tri_condition("DescriptorsAccepted", ok, reason, message, generation, now)
}

fn serving_status(t: TierServing) -> ServingStatus {
    ServingStatus {
        ready: t.ready,
        serving: t.serving,
        unreachable: t.unreachable,
        summary: format!("{}/{}", t.serving, t.ready),
    }
}

fn descriptors_status(fe: &FlagEvaluator, r: &Rollout) -> Option<DescriptorsStatus> {
    let p = r.published.as_ref()?;
    let serving = r.serving.as_ref();
    Some(DescriptorsStatus {
        sha256: p.sha256.clone(),
        flags: p.flags,
        accepted_at: p.accepted_at.clone(),
        summary: match serving.map(Serving::total) {
            Some(t) => format!("{} {}/{}", short(&p.sha256), t.serving, t.ready),
            None => short(&p.sha256).to_owned(),
        },
        pending: (p.sha256 != r.candidate).then(|| r.candidate.clone()),
        root: serving
            .filter(|_| fe.spec.root.is_some())
            .map(|s| serving_status(s.root)),
        proxy: serving
            .filter(|_| fe.spec.proxy.is_some())
            .map(|s| serving_status(s.proxy)),
    })
}

/// What `Progressing` says while ready pods do not all serve the published set yet.
fn taking_up(r: &Rollout) -> Option<String> {
    let p = r.published.as_ref()?;
    let s = r.serving.as_ref().filter(|s| !s.complete())?;
    let t = s.total();
    let mut message = format!(
        "descriptor set {} is served by {} of {} ready pods (root {}/{}, proxy {}/{})",
        short(&p.sha256),
        t.serving,
        t.ready,
        s.root.serving,
        s.root.ready,
        s.proxy.serving,
        s.proxy.ready
    );
    if let Some(why) = &s.unreachable_reason {
        message.push_str(&format!(
            "; {} did not answer, e.g. {why} (the operator reads each ready pod's GET /descriptors \
             on the evaluator port)",
            t.unreachable
        ));
    }
    Some(message)
}
