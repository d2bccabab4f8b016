//! Descriptor rollouts, the decisions: pure functions of what the reconcile read.
//!
//! A FlagEvaluator's pods never mount the user's ConfigMap. They mount `<name>-descriptors`, the
//! *published* copy the operator writes, annotated with its SHA-256. When the user's ConfigMap key
//! holds other content (the *candidate*), the operator first checks it with a Job running the
//! evaluator image — `sync` against the root's database (which also parses the set and refuses
//! breaking changes), or `descriptors` for a proxy-only FlagEvaluator — on a per-content copy
//! (`<name>-descriptors-<sha>`), and publishes only what passed. A refused set never reaches a pod;
//! the published one keeps serving.

use k8s_openapi::api::batch::v1::JobStatus;
use serde::Deserialize;

/// Annotation of the published copy: the SHA-256 of its content.
pub const SHA256_ANNOTATION: &str = "pbflags.dev/descriptors-sha256";
/// Annotation of the published copy: how many flags it declares.
pub const FLAGS_ANNOTATION: &str = "pbflags.dev/descriptors-flags";
/// Annotation of the published copy: when it was accepted (RFC 3339).
pub const ACCEPTED_AT_ANNOTATION: &str = "pbflags.dev/descriptors-accepted-at";
/// Label of check Jobs and their candidate ConfigMaps (value: the candidate's short hash).
pub const CHECK_LABEL: &str = "pbflags.dev/descriptors-check";
/// Retries of a check Job whose failure is not a refusal (e.g. the database is unreachable).
pub const CHECK_RETRIES: i32 = 3;

/// What a check Job's pod reported (`--report /dev/termination-log`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Report {
    /// The set was accepted (and, for a root, synced).
    pub accepted: bool,
    /// Refused for what it is (not a descriptor set, no flags, breaking changes): retrying cannot
    /// help.
    #[serde(default)]
    pub refused: bool,
    /// Why not, if not.
    #[serde(default)]
    pub reason: Option<String>,
    /// Flags declared, if accepted.
    #[serde(default)]
    pub flags: Option<u64>,
    /// SHA-256 of what was checked, if accepted.
    #[serde(default)]
    pub sha256: Option<String>,
}

impl Report {
    /// The report in a termination message, if it is one.
    pub fn parse(message: &str) -> Option<Self> {
        serde_json::from_str(message.trim()).ok()
    }
}

/// What to do about the candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The pods already have it.
    Current,
    /// Start the check Job.
    Check,
    /// The check Job is running.
    Checking,
    /// It passed: publish it.
    Publish {
        /// Flags it declares, if the check said.
        flags: Option<u64>,
    },
    /// It was refused; the published set keeps serving.
    Refused {
        /// Why, as the check said.
        reason: String,
    },
    /// The check itself failed (not a refusal) after its retries.
    CheckFailed {
        /// What the check said, if anything.
        reason: String,
    },
}

/// Whether a Job has finished, and how.
fn finished(status: &JobStatus) -> Option<bool> {
    let conditions = status.conditions.iter().flatten();
    for c in conditions {
        if c.status == "True" {
            match c.type_.as_str() {
                "Complete" => return Some(true),
                "Failed" => return Some(false),
                _ => {}
            }
        }
    }
    if status.succeeded.unwrap_or(0) >= 1 {
        Some(true)
    } else if status.failed.unwrap_or(0) > CHECK_RETRIES {
        Some(false)
    } else {
        None
    }
}

/// The decision for a candidate with SHA-256 `candidate`, given the published copy's, the check
/// Job's status (if the Job exists) and its pod's report (if one was read).
pub fn decide(
    published: Option<&str>,
    candidate: &str,
    job: Option<&JobStatus>,
    report: Option<&Report>,
) -> Decision {
    if published == Some(candidate) {
        return Decision::Current;
    }
    let Some(job) = job else {
        return Decision::Check;
    };
    match finished(job) {
        // The pod's report comes before the Job controller marks the Job finished (about a
        // second later): an acceptance of this very candidate, or a refusal, is final already.
        None => match report {
            Some(r) if r.accepted && r.sha256.as_deref() == Some(candidate) => {
                Decision::Publish { flags: r.flags }
            }
            Some(r) if r.refused => Decision::Refused {
                reason: r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "refused without a reason".to_owned()),
            },
            _ => Decision::Checking,
        },
        Some(true) => Decision::Publish {
            flags: report.and_then(|r| r.flags),
        },
        Some(false) => match report {
            Some(r) if r.refused => Decision::Refused {
                reason: r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "refused without a reason".to_owned()),
            },
            Some(r) => Decision::CheckFailed {
                reason: r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the check failed".to_owned()),
            },
            None => Decision::CheckFailed {
                reason: "the check Job failed without a report; see its pod logs".to_owned(),
            },
        },
    }
}

/// The first 10 hex digits of a SHA-256: what names and labels carry.
pub fn short(sha256: &str) -> &str {
    sha256.get(..10).unwrap_or(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobCondition;

    fn job(condition: Option<&str>, succeeded: i32, failed: i32) -> JobStatus {
        JobStatus {
            conditions: condition.map(|t| {
                vec![JobCondition {
                    type_: t.to_owned(),
                    status: "True".to_owned(),
                    ..JobCondition::default()
                }]
            }),
            succeeded: Some(succeeded),
            failed: Some(failed),
            ..JobStatus::default()
        }
    }

    fn report(json: &str) -> Report {
        Report::parse(json).expect("a report")
    }

    #[test]
    fn what_the_pods_have_needs_nothing_and_a_new_set_is_checked_first() {
        assert_eq!(decide(Some("abc"), "abc", None, None), Decision::Current);
        assert_eq!(decide(Some("abc"), "def", None, None), Decision::Check);
        assert_eq!(decide(None, "def", None, None), Decision::Check);
        assert_eq!(
            decide(None, "def", Some(&job(None, 0, 1)), None),
            Decision::Checking,
            "a failure within the retries is still checking"
        );
    }

    #[test]
    fn a_pod_report_decides_before_the_job_is_marked_finished() {
        let running = job(None, 0, 0);
        let ok = report(r#"{"accepted":true,"sha256":"def","flags":3}"#);
        assert_eq!(
            decide(Some("abc"), "def", Some(&running), Some(&ok)),
            Decision::Publish { flags: Some(3) }
        );
        // An acceptance of other content (a stale pod) decides nothing.
        let other = report(r#"{"accepted":true,"sha256":"xyz","flags":3}"#);
        assert_eq!(
            decide(Some("abc"), "def", Some(&running), Some(&other)),
            Decision::Checking
        );
        let refused = report(r#"{"accepted":false,"refused":true,"reason":"n/3: type"}"#);
        assert_eq!(
            decide(Some("abc"), "def", Some(&running), Some(&refused)),
            Decision::Refused {
                reason: "n/3: type".into()
            }
        );
        // A failure that is no refusal is retried by the Job: still checking.
        let failed = report(r#"{"accepted":false,"reason":"database unreachable"}"#);
        assert_eq!(
            decide(Some("abc"), "def", Some(&running), Some(&failed)),
            Decision::Checking
        );
    }

    #[test]
    fn a_passed_check_publishes_with_the_reported_flag_count() {
        let ok = report(r#"{"accepted":true,"sha256":"def","flags":12}"#);
        assert_eq!(
            decide(
                Some("abc"),
                "def",
                Some(&job(Some("Complete"), 1, 0)),
                Some(&ok)
            ),
            Decision::Publish { flags: Some(12) }
        );
        assert_eq!(
            decide(Some("abc"), "def", Some(&job(None, 1, 0)), None),
            Decision::Publish { flags: None }
        );
    }

    #[test]
    fn a_refusal_keeps_the_published_set_and_says_why() {
        let refused = report(
            r#"{"accepted":false,"refused":true,"reason":"breaking changes refused:\n  notifications/3: type INT64 → STRING"}"#,
        );
        let Decision::Refused { reason } = decide(
            Some("abc"),
            "def",
            Some(&job(Some("Failed"), 0, 1)),
            Some(&refused),
        ) else {
            panic!("refused");
        };
        assert!(reason.contains("notifications/3"), "{reason}");
    }

    #[test]
    fn a_failed_check_that_is_no_refusal_is_reported_as_such() {
        let down = report(r#"{"accepted":false,"refused":false,"reason":"database error"}"#);
        assert_eq!(
            decide(None, "def", Some(&job(Some("Failed"), 0, 4)), Some(&down)),
            Decision::CheckFailed {
                reason: "database error".to_owned()
            }
        );
        assert!(matches!(
            decide(None, "def", Some(&job(None, 0, CHECK_RETRIES + 1)), None),
            Decision::CheckFailed { .. }
        ));
    }

    #[test]
    fn reports_parse_from_termination_messages_and_junk_does_not() {
        assert_eq!(
            Report::parse("{\"accepted\":true,\"sha256\":\"x\",\"flags\":3}\n")
                .and_then(|r| r.flags),
            Some(3)
        );
        assert_eq!(Report::parse("error: something"), None);
        assert_eq!(short("0123456789abcdef"), "0123456789");
    }
}
