//! Why a FlagEvaluator's pods do not start, for the status.
//!
//! The operator does not read the Secrets a FlagEvaluator names (see [`crate::reconcile`]): a
//! missing database Secret, a missing key or a bad TLS pair shows where the kubelet meets it, in
//! the pods. [`judge`] reads a pod's status (a container that cannot be created or keeps exiting,
//! a pod nobody can schedule); a pod still being created after [`CREATING_GRACE`] is explained by
//! its latest Warning event ([`from_events`]), e.g. the kubelet's `FailedMount` naming the Secret.
//! Both are pure.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use k8s_openapi::jiff::Timestamp;

use crate::status::{Problem, reason};

/// How long a scheduled pod may be in creation (pulling the image, mounting volumes) before its
/// events are read for a reason.
pub const CREATING_GRACE: Duration = Duration::from_secs(15);

/// What a pod's status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Running, starting normally, or finished: nothing to report.
    Fine,
    /// It cannot start; why, for people.
    Failing(String),
    /// Still being created after the grace period: its events may say why.
    Creating,
}

/// Waiting reasons that do not resolve by themselves.
const STUCK: [&str; 7] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "RunContainerError",
];

/// Longest excerpt of a container's last words kept in the status.
const MAX_MESSAGE: usize = 400;

fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn container_failing(c: &ContainerStatus) -> Option<String> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let why = waiting.reason.as_deref()?;
    if !STUCK.contains(&why) {
        return None;
    }
    // A container that keeps exiting: its last words (the termination message, or the end of its
    // log, see `terminationMessagePolicy`) say more than the back-off.
    let last = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| {
            let said = t.message.as_deref().map(excerpt).unwrap_or_default();
            format!("exited with code {}: {said}", t.exit_code)
        });
    let detail = match (last, waiting.message.as_deref()) {
        (Some(last), _) if why == "CrashLoopBackOff" => last,
        (_, Some(m)) => excerpt(m),
        (Some(last), None) => last,
        (None, None) => String::new(),
    };
    Some(
        format!("container {} {why}: {detail}", c.name)
            .trim_end_matches([':', ' '])
            .to_owned(),
    )
}

/// What `pod`'s status says at `now`.
pub fn judge(pod: &Pod, now: Timestamp) -> Verdict {
    if pod.metadata.deletion_timestamp.is_some() {
        return Verdict::Fine;
    }
    let Some(status) = &pod.status else {
        return Verdict::Fine;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Verdict::Fine;
    }
    let containers = status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten();
    if let Some(why) = containers.clone().find_map(container_failing) {
        return Verdict::Failing(why);
    }
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled");
    match scheduled {
        Some(c) if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") => {
            return Verdict::Failing(format!(
                "cannot be scheduled: {}",
                excerpt(c.message.as_deref().unwrap_or_default())
            ));
        }
        Some(c) if c.status == "True" => {
            let creating = status.phase.as_deref() == Some("Pending")
                && containers.clone().all(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .is_some_and(|w| w.reason.as_deref() == Some("ContainerCreating"))
                });
            let since = c.last_transition_time.as_ref().map(|t| t.0);
            let long = since.is_some_and(|t| {
                now.duration_since(t).as_secs_f64() >= CREATING_GRACE.as_secs_f64()
            });
            if creating && long {
                return Verdict::Creating;
            }
        }
        _ => {}
    }
    Verdict::Fine
}

/// When an event last happened.
fn last_seen(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
}

/// The latest Warning among a pod's `events`, as a problem: a Secret the kubelet cannot mount is
/// reported with the reasons the operator used when it read Secrets itself.
pub fn from_events(events: &[Event]) -> Option<(&'static str, String)> {
    let latest = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .max_by_key(|e| last_seen(e))?;
    let message = excerpt(latest.message.as_deref().unwrap_or_default());
    let volume = |name: &str| message.contains(&format!("volume \"{name}\""));
    let not_found = message.contains("not found");
    let no_key = message.contains("non-existent");
    let (why, field) = if volume("database") && not_found {
        (reason::SECRET_MISSING, " (spec.root.database.secretName)")
    } else if volume("database") && no_key {
        (reason::SECRET_KEY_MISSING, " (spec.root.database.key)")
    } else if volume("database-ca") && not_found {
        (reason::SECRET_MISSING, " (spec.root.databaseCa.secretName)")
    } else if volume("database-ca") && no_key {
        (reason::SECRET_KEY_MISSING, " (spec.root.databaseCa.key)")
    } else if volume("admin-tokens") && not_found {
        (reason::SECRET_MISSING, " (spec.root.admin.tokenSecretName)")
    } else if volume("admin-tokens") && no_key {
        (reason::SECRET_KEY_MISSING, " (spec.root.admin.tokenKey)")
    } else if volume("tls") && not_found {
        (reason::TLS_SECRET_MISSING, " (spec.tls.secretName)")
    } else {
        (reason::POD_NOT_STARTING, "")
    };
    let what = latest.reason.as_deref().unwrap_or("Warning");
    Some((why, format!("{what}: {message}{field}")))
}

/// The problem of pod `name`: `why` from [`judge`] or [`from_events`].
pub fn problem(name: &str, reason: &'static str, why: &str) -> Problem {
    Problem {
        reason,
        message: format!("pod {name} does not start: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-01-01T00:01:00Z";

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    fn scheduled_at(t: &str) -> serde_json::Value {
        json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": t}])
    }

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    #[test]
    fn a_container_that_keeps_exiting_reports_its_last_words() {
        let p = pod(json!({
            "phase": "Running",
            "conditions": scheduled_at("2026-01-01T00:00:00Z"),
            "containerStatuses": [{
                "name": "evaluator", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 78,
                    "message": "error: tls_cert /etc/pbflags/tls/tls.crt: No such file\n"}}
            }]
        }));
        assert_eq!(
            judge(&p, now()),
            Verdict::Failing(
                "container evaluator CrashLoopBackOff: exited with code 78: error: tls_cert \
                 /etc/pbflags/tls/tls.crt: No such file"
                    .into()
            )
        );
    }

    #[test]
    fn a_missing_secret_in_an_environment_variable_is_read_from_the_waiting_state() {
        let p = pod(json!({
            "phase": "Pending",
            "conditions": scheduled_at("2026-01-01T00:00:58Z"),
            "containerStatuses": [{
                "name": "evaluator", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError",
                                      "message": "secret \"db\" not found"}}
            }]
        }));
        assert_eq!(
            judge(&p, now()),
            Verdict::Failing(
                "container evaluator CreateContainerConfigError: secret \"db\" not found".into()
            )
        );
    }

    #[test]
    fn a_pod_in_creation_is_fine_until_the_grace_period_ends() {
        let creating = |since: &str| {
            pod(json!({
                "phase": "Pending",
                "conditions": scheduled_at(since),
                "containerStatuses": [{
                    "name": "evaluator", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}
                }]
            }))
        };
        assert_eq!(
            judge(&creating("2026-01-01T00:00:50Z"), now()),
            Verdict::Fine
        );
        assert_eq!(
            judge(&creating("2026-01-01T00:00:30Z"), now()),
            Verdict::Creating
        );
        // Running, terminating and finished pods are never reported.
        let running =
            pod(json!({"phase": "Running", "conditions": scheduled_at("2026-01-01T00:00:00Z")}));
        assert_eq!(judge(&running, now()), Verdict::Fine);
        let mut gone = creating("2026-01-01T00:00:30Z");
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert_eq!(judge(&gone, now()), Verdict::Fine);
    }

    #[test]
    fn an_unschedulable_pod_says_why() {
        let p = pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient memory."}]
        }));
        assert_eq!(
            judge(&p, now()),
            Verdict::Failing(
                "cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory.".into()
            )
        );
    }

    fn event(type_: &str, reason: &str, message: &str, at: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{at}")},
            "involvedObject": {"kind": "Pod", "name": "p"},
            "type": type_, "reason": reason, "message": message, "lastTimestamp": at,
        }))
        .unwrap()
    }

    #[test]
    fn mount_failures_name_the_secret_and_the_field() {
        let cases = [
            (
                "MountVolume.SetUp failed for volume \"database\" : secret \"db\" not found",
                reason::SECRET_MISSING,
                "(spec.root.database.secretName)",
            ),
            (
                "MountVolume.SetUp failed for volume \"database\" : references non-existent secret key: url",
                reason::SECRET_KEY_MISSING,
                "(spec.root.database.key)",
            ),
            (
                "MountVolume.SetUp failed for volume \"database-ca\" : secret \"ca\" not found",
                reason::SECRET_MISSING,
                "(spec.root.databaseCa.secretName)",
            ),
            (
                "MountVolume.SetUp failed for volume \"tls\" : secret \"tls\" not found",
                reason::TLS_SECRET_MISSING,
                "(spec.tls.secretName)",
            ),
            (
                "Failed to create pod sandbox: boom",
                reason::POD_NOT_STARTING,
                "boom",
            ),
        ];
        for (message, want, says) in cases {
            let events = [
                event(
                    "Warning",
                    "FailedMount",
                    "an older failure",
                    "2026-01-01T00:00:10Z",
                ),
                event("Normal", "Scheduled", "assigned", "2026-01-01T00:00:59Z"),
                event("Warning", "FailedMount", message, "2026-01-01T00:00:40Z"),
            ];
            let (got, text) = from_events(&events).unwrap();
            assert_eq!(got, want, "{message}");
            assert!(
                text.starts_with("FailedMount: ") && text.contains(says),
                "{text}"
            );
        }
        assert_eq!(
            from_events(&[event("Normal", "Pulled", "ok", "2026-01-01T00:00:10Z")]),
            None
        );
    }
}
