//! Property tests: no input and no source behaviour makes an evaluation fail or panic, and the
//! answers always obey the precedence invariants.

#[path = "support/engine.rs"]
mod harness;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use harness::def;
use pbflags_evaluator::core::cache::CacheConfig;
use pbflags_evaluator::core::engine::Engine;
use pbflags_evaluator::core::registry::{ContentHash, Registry, Snapshot};
use pbflags_evaluator::core::source::{
    FlagState, Override, SourceError, SourceResult, StateSource,
};
use pbflags_evaluator::metrics::{Backend, Metrics};
use pbflags_proto::v1::{EvaluationSource as Src, FlagValue, State, flag_value};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Option<FlagValue>> {
    prop_oneof![
        Just(None),
        Just(Some(FlagValue { value: None })),
        any::<bool>().prop_map(|b| Some(FlagValue::bool(b))),
        ".{0,40}".prop_map(|s| Some(FlagValue::string(s))),
        any::<i64>().prop_map(|i| Some(FlagValue::int64(i))),
        any::<f64>().prop_map(|d| Some(FlagValue::double(d))),
    ]
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        Just(State::Unspecified),
        Just(State::Enabled),
        Just(State::Default),
        Just(State::Killed)
    ]
}

fn flag_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("p/1".to_owned()),
        Just("p/2".to_owned()),
        Just("p/3".to_owned()),
        Just(String::new()),
        Just("x".repeat(100_000)),
        ".{0,20}",
    ]
}

fn entity_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("e1".to_owned()),
        Just("e2".to_owned()),
        Just("\u{0}é🦀".to_owned()),
        Just("y".repeat(50_000))
    ]
}

#[derive(Debug, Clone)]
enum Answer {
    Fail,
    Flag(Option<(State, Option<FlagValue>, bool)>),
    Rows(Vec<(String, String, State, Option<FlagValue>)>),
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        Just(Answer::Fail),
        proptest::option::of((state(), value(), any::<bool>())).prop_map(Answer::Flag),
        proptest::collection::vec((flag_id(), entity_id(), state(), value()), 0..4)
            .prop_map(Answer::Rows),
    ]
}

/// A source that answers from a script, ignoring what it was asked: wrong flags, wrong entities,
/// empty oneofs, unspecified states and failures, in any order.
struct ScriptedSource {
    script: Vec<Answer>,
    next: AtomicUsize,
}

impl ScriptedSource {
    fn next(&self) -> Answer {
        if self.script.is_empty() {
            return Answer::Fail;
        }
        self.script[self.next.fetch_add(1, Ordering::Relaxed) % self.script.len()].clone()
    }
}

fn to_state((state, value, archived): (State, Option<FlagValue>, bool)) -> FlagState {
    FlagState {
        state,
        value,
        archived,
    }
}

impl StateSource for ScriptedSource {
    fn flag_state(&self, _: &str) -> BoxFuture<'_, SourceResult<Option<FlagState>>> {
        let a = self.next();
        Box::pin(async move {
            match a {
                Answer::Fail => Err(SourceError::unavailable("scripted")),
                Answer::Flag(f) => Ok(f.map(to_state)),
                Answer::Rows(r) => Ok(r
                    .into_iter()
                    .next()
                    .map(|(_, _, s, v)| to_state((s, v, false)))),
            }
        })
    }
    fn flag_states<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<HashMap<String, FlagState>>> {
        let a = self.next();
        Box::pin(async move {
            match a {
                Answer::Fail => Err(SourceError::unavailable("scripted")),
                Answer::Flag(f) => Ok(f
                    .map(|f| (ids.first().cloned().unwrap_or_default(), to_state(f)))
                    .into_iter()
                    .collect()),
                Answer::Rows(r) => Ok(r
                    .into_iter()
                    .map(|(id, _, s, v)| (id, to_state((s, v, false))))
                    .collect()),
            }
        })
    }
    fn overrides<'a>(
        &'a self,
        _: &'a str,
        _: &'a [String],
    ) -> BoxFuture<'a, SourceResult<Vec<Override>>> {
        let a = self.next();
        Box::pin(async move {
            match a {
                Answer::Fail => Err(SourceError::unavailable("scripted")),
                Answer::Flag(_) => Ok(vec![]),
                Answer::Rows(r) => Ok(r
                    .into_iter()
                    .map(|(flag_id, entity_id, state, value)| Override {
                        flag_id,
                        entity_id,
                        state,
                        value,
                    })
                    .collect()),
            }
        })
    }
    fn killed_flags(&self) -> BoxFuture<'_, SourceResult<Vec<String>>> {
        let a = self.next();
        Box::pin(async move {
            match a {
                Answer::Fail => Err(SourceError::unavailable("scripted")),
                Answer::Flag(_) => Ok(vec!["p/1".to_owned()]),
                Answer::Rows(r) => Ok(r.into_iter().map(|(id, ..)| id).collect()),
            }
        })
    }
}

#[derive(Debug, Clone)]
enum Op {
    Eval(String, String),
    Bulk(Vec<String>, String),
    PollKills,
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (flag_id(), entity_id()).prop_map(|(f, e)| Op::Eval(f, e)),
        2 => (proptest::collection::vec(flag_id(), 0..5), entity_id()).prop_map(|(f, e)| Op::Bulk(f, e)),
        1 => Just(Op::PollKills),
        1 => Just(Op::Flush),
    ]
}

fn engine(script: Vec<Answer>) -> Engine {
    let flags = vec![
        def("p/1", "user", Some(FlagValue::bool(true))),
        def("p/2", "", Some(FlagValue::string("d"))),
        def("p/3", "entity", None),
    ];
    let registry = Arc::new(Registry::new(Snapshot::new(
        flags,
        ContentHash::default(),
        vec![],
    )));
    let source = Arc::new(ScriptedSource {
        script,
        next: AtomicUsize::new(0),
    });
    let config = CacheConfig {
        flag_ttl: Duration::from_millis(1),
        override_ttl: Duration::from_millis(1),
        ..CacheConfig::default()
    };
    Engine::new(registry, source, Backend::Memory, config, Metrics::new())
}

/// The invariants every answer obeys, whatever the source said.
fn check(engine: &Engine, flag_id: &str, entity_id: &str, source: Src, value: Option<&FlagValue>) {
    assert_ne!(source, Src::Unspecified, "UNSPECIFIED is never returned");
    let snapshot = engine.registry().load();
    let def = snapshot.get(flag_id);
    let default = def.and_then(|d| d.default.as_ref());
    if engine.kills().contains(flag_id) {
        assert_eq!(source, Src::Killed);
    }
    match source {
        Src::Killed | Src::Default => {
            assert_eq!(value, default, "{source:?} serves the compiled default")
        }
        Src::Override => {
            assert!(
                !entity_id.is_empty() && def.is_some_and(|d| !d.is_global_layer()),
                "override only for layered flags"
            );
            assert!(value.and_then(|v| v.value.as_ref()).is_some());
        }
        Src::Global | Src::Archived | Src::Cached => {
            assert!(
                value.and_then(|v| v.value.as_ref()).is_some(),
                "{source:?} always carries a value"
            )
        }
        Src::Unspecified => unreachable!(),
    }
    if let Some(flag_value::Value::StringValue(s)) = value.and_then(|v| v.value.as_ref()) {
        assert!(
            s.chars().count() <= 40,
            "values come only from the source or the defaults"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn evaluations_never_fail_and_obey_precedence(
        script in proptest::collection::vec(answer(), 0..12),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let engine = engine(script);
        for op in ops {
            match op {
                Op::Eval(f, e) => {
                    let ev = engine.evaluate(&f, &e).now_or_never().expect("scripted source answers at once");
                    check(&engine, &f, &e, ev.source, ev.value());
                }
                Op::Bulk(ids, e) => {
                    let out = engine.bulk_evaluate(ids.clone(), &e).now_or_never().expect("answers at once");
                    let want = if ids.is_empty() { 3 } else { ids.len() };
                    prop_assert_eq!(out.len(), want);
                    for (i, (id, ev)) in out.iter().enumerate() {
                        if !ids.is_empty() {
                            prop_assert_eq!(id, &ids[i]);
                        }
                        check(&engine, id, &e, ev.source, ev.value());
                    }
                }
                Op::PollKills => {
                    let _ = engine.poll_kill_set().now_or_never().expect("answers at once");
                }
                Op::Flush => engine.caches().flush(),
            }
        }
        let report = engine.health_report();
        prop_assert!(report.status != pbflags_proto::v1::EvaluatorStatus::Unspecified);
    }
}
