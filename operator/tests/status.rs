//! Status computation: conditions, reasons, tiers, endpoint; transition times move only on change.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use pbflags_operator::crd::FlagEvaluator;
use pbflags_operator::status::{self, Observed, Problem, reason};

fn fe() -> FlagEvaluator {
    let path = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("tests/fixtures/root-and-proxy.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn at(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
}

fn cond<'a>(
    s: &'a pbflags_operator::crd::FlagEvaluatorStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn all_replicas_ready_is_ready_and_not_progressing() {
    let s = status::compute(
        &fe(),
        &Observed {
            root: Some((2, 2)),
            proxy: Some((3, 3)),
            ..Default::default()
        },
        at(100),
    );
    assert_eq!(
        (
            cond(&s, "Ready").status.as_str(),
            cond(&s, "Ready").reason.as_str()
        ),
        ("True", reason::READY)
    );
    assert_eq!(cond(&s, "Progressing").status, "False");
    assert_eq!(cond(&s, "Degraded").status, "False");
    assert_eq!(s.root.unwrap().summary, "2/2");
    assert_eq!(s.mode.as_deref(), Some("root+proxy"));
    assert_eq!(
        s.endpoint.as_deref(),
        Some("http://flags-proxy.team-a.svc:9201")
    );
    assert_eq!(s.observed_generation, Some(3));
}

#[test]
fn a_rollout_in_progress_is_progressing() {
    let s = status::compute(
        &fe(),
        &Observed {
            root: Some((2, 1)),
            proxy: Some((3, 3)),
            ..Default::default()
        },
        at(100),
    );
    assert_eq!(
        (
            cond(&s, "Ready").status.as_str(),
            cond(&s, "Progressing").status.as_str()
        ),
        ("False", "True")
    );
    assert_eq!(cond(&s, "Ready").reason, reason::ROLLING_OUT);
}

#[test]
fn a_problem_degrades_with_its_reason_and_message() {
    let problem = Problem {
        reason: reason::SECRET_MISSING,
        message: "Secret team-a/flags-db does not exist".into(),
    };
    let s = status::compute(
        &fe(),
        &Observed {
            problem: Some(problem),
            ..Default::default()
        },
        at(100),
    );
    let d = cond(&s, "Degraded");
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", reason::SECRET_MISSING)
    );
    assert!(d.message.contains("flags-db"));
    assert_eq!(cond(&s, "Ready").reason, reason::SECRET_MISSING);
    assert_eq!(cond(&s, "Progressing").status, "False");
}

#[test]
fn migrating_is_not_ready_yet() {
    let s = status::compute(
        &fe(),
        &Observed {
            migrating: true,
            proxy: Some((3, 3)),
            ..Default::default()
        },
        at(100),
    );
    assert_eq!(cond(&s, "Ready").reason, reason::MIGRATING);
}

#[test]
fn transition_times_change_only_when_a_status_changes() {
    let mut fe = fe();
    let ready = Observed {
        root: Some((2, 2)),
        proxy: Some((3, 3)),
        ..Default::default()
    };
    let first = status::compute(&fe, &ready, at(100));
    fe.status = Some(first.clone());
    let again = status::compute(&fe, &ready, at(200));
    assert_eq!(
        again, first,
        "an unchanged world computes an identical status"
    );
    let rolling = Observed {
        root: Some((2, 1)),
        ..ready
    };
    let changed = status::compute(&fe, &rolling, at(300));
    assert_eq!(cond(&changed, "Ready").last_transition_time, at(300));
    assert_eq!(
        cond(&changed, "Degraded").last_transition_time,
        at(100),
        "Degraded stayed False"
    );
}
