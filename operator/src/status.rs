//! `status`: what the reconcile observed → the FlagEvaluator's status. Pure: the caller passes the
//! time, and a condition's `lastTransitionTime` only moves when its status changes, so an unchanged
//! world computes an identical status (and the reconcile writes nothing).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{FlagEvaluator, FlagEvaluatorStatus, TierStatus};

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
    /// The database Secret does not exist.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// The Secret lacks the URL key.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The TLS Secret does not exist.
    pub const TLS_SECRET_MISSING: &str = "TLSSecretMissing";
    /// The TLS Secret lacks `tls.crt` or `tls.key`.
    pub const TLS_SECRET_KEY_MISSING: &str = "TLSSecretKeyMissing";
    /// The migrations Job has not finished.
    pub const MIGRATING: &str = "Migrating";
    /// The migrations Job failed.
    pub const MIGRATION_FAILED: &str = "MigrationFailed";
    /// Writing objects to the API failed.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Nothing is wrong.
    pub const OK: &str = "AsExpected";
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
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
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
    let (ready, ready_reason, ready_msg) = match (&observed.problem, observed.migrating, all_ready)
    {
        (Some(p), _, _) => (false, p.reason, p.message.clone()),
        (None, true, _) => (
            false,
            reason::MIGRATING,
            "waiting for the migrations Job to finish".to_owned(),
        ),
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
    let progressing = observed.problem.is_none() && !ready;
    let degraded = observed.problem.is_some();
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
                ready_reason
            } else {
                reason::OK
            },
            if progressing {
                ready_msg.clone()
            } else {
                "nothing to roll out".to_owned()
            },
            generation,
            &now,
        ),
        condition(
            "Degraded",
            degraded,
            observed.problem.as_ref().map_or(reason::OK, |p| p.reason),
            observed
                .problem
                .as_ref()
                .map_or_else(|| "no problems".to_owned(), |p| p.message.clone()),
            generation,
            &now,
        ),
    ];
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
    }
}
