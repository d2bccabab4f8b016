//! The precedence rules, pure: what is known about a flag in, the answer out. No async, no clock, no
//! caches, no metrics; the engine gathers the inputs (from caches or sources) and calls these.
//!
//! Kill set → per-entity override (non-global layers only) → global state → last-known value when
//! the source failed → compiled default, as pbflags v0.6 (its evaluator, section 3.2 of the
//! behaviour notes) with one deliberate difference: a last-known entry is judged by the same state
//! rules as a fresh one, so a last-known DEFAULT override or state yields the compiled default
//! rather than its stale value.

use pbflags_proto::v1::flag_value::Value;
use pbflags_proto::v1::{EvaluationSource, FlagType, FlagValue, State};

use super::descriptor::FlagDef;
use super::source::{FlagState, Override};

/// An answer, borrowing its value from the flag definition or the entry it was decided from.
pub type Decided<'a> = (EvaluationSource, Option<&'a FlagValue>);

/// What is known of an override or a global state: a fresh answer of the source (or hot cache),
/// a last-known one kept from before the source failed, or nothing (the source failed and nothing
/// was kept). The inner `None` is the source saying there is no row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Known<T> {
    /// The source's current answer.
    Fresh(Option<T>),
    /// The last answer before the source failed.
    Stale(Option<T>),
    /// The source failed and nothing was kept.
    Unavailable,
}

impl<T> Known<T> {
    /// The entry, if any, and whether it is stale.
    pub fn parts(self) -> (Option<T>, bool) {
        match self {
            Known::Fresh(v) => (v, false),
            Known::Stale(v) => (v, true),
            Known::Unavailable => (None, false),
        }
    }
}

/// The compiled default of `def` (none for an undeclared flag), from `source`.
#[inline]
pub fn default_of(def: Option<&FlagDef>, source: EvaluationSource) -> Decided<'_> {
    (source, def.and_then(|d| d.default.as_ref()))
}

/// The answer for a flag in the kill set: its compiled default.
#[inline]
pub fn killed(def: Option<&FlagDef>) -> Decided<'_> {
    default_of(def, EvaluationSource::Killed)
}

/// Whether the override step applies: an entity is given and the flag is declared in a non-global
/// layer. Undeclared flags and global-layer flags skip it (no override fetch).
#[inline]
pub fn overridable(def: Option<&FlagDef>, entity_id: &str) -> bool {
    !entity_id.is_empty() && def.is_some_and(|d| !d.is_global_layer())
}

/// Whether a stored value's type differs from the flag's declared type (after the descriptors
/// changed a flag's type, say). Such a value is treated as absent: the compiled default is served.
/// Values of undeclared flags are taken as they are.
#[inline]
pub fn mistyped(value: &FlagValue, def: Option<&FlagDef>) -> bool {
    let (Some(d), Some(v)) = (def, value.value.as_ref()) else {
        return false;
    };
    let t = match v {
        Value::BoolValue(_) => FlagType::Bool,
        Value::StringValue(_) => FlagType::String,
        Value::Int64Value(_) => FlagType::Int64,
        Value::DoubleValue(_) => FlagType::Double,
    };
    d.flag_type != FlagType::Unspecified && d.flag_type != t
}

/// A stored value the answer may carry: one with a member set, of the declared type.
#[inline]
fn usable<'a>(value: Option<&'a FlagValue>, def: Option<&FlagDef>) -> Option<&'a FlagValue> {
    value.filter(|v| v.value.is_some() && !mistyped(v, def))
}

/// The override step: `Some` when the override decides the answer, `None` to go on to global state.
#[inline]
pub fn by_override<'a>(
    row: Option<&'a Override>,
    stale: bool,
    def: Option<&'a FlagDef>,
) -> Option<Decided<'a>> {
    let o = row?;
    let value = usable(o.value.as_ref(), def);
    match (o.state, value) {
        (State::Enabled, Some(v)) if stale => Some((EvaluationSource::Cached, Some(v))),
        (State::Enabled, Some(v)) => Some((EvaluationSource::Override, Some(v))),
        (State::Enabled | State::Default | State::Killed, _) => {
            Some(default_of(def, EvaluationSource::Default))
        }
        (State::Unspecified, _) => None,
    }
}

/// The global step over the flag's row (`None`: no row, or nothing known).
#[inline]
pub fn by_global<'a>(
    row: Option<&'a FlagState>,
    stale: bool,
    def: Option<&'a FlagDef>,
) -> Decided<'a> {
    let Some(s) = row else {
        return default_of(def, EvaluationSource::Default);
    };
    let Some(value) = usable(s.value.as_ref(), def) else {
        return default_of(def, EvaluationSource::Default);
    };
    match (stale, s.archived, s.state) {
        (true, true, _) | (true, false, State::Enabled) => (EvaluationSource::Cached, Some(value)),
        (false, true, _) => (EvaluationSource::Archived, Some(value)),
        (false, false, State::Enabled) => (EvaluationSource::Global, Some(value)),
        _ => default_of(def, EvaluationSource::Default),
    }
}

/// Everything one evaluation needs, gathered.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The flag's definition (`None`: not in the descriptors).
    pub def: Option<&'a FlagDef>,
    /// The flag is in the kill set.
    pub killed: bool,
    /// The entity (`""`: a global evaluation).
    pub entity_id: &'a str,
    /// The entity's override of the flag (ignored unless [`overridable`]).
    pub override_row: Known<&'a Override>,
    /// The flag's global state.
    pub global_row: Known<&'a FlagState>,
}

/// The whole precedence over gathered facts. The engine runs the same steps but gathers lazily:
/// it fetches the global state only when the override step does not decide.
pub fn decide<'a>(facts: &Facts<'a>) -> Decided<'a> {
    if facts.killed {
        return killed(facts.def);
    }
    if overridable(facts.def, facts.entity_id) {
        let (row, stale) = facts.override_row.parts();
        if let Some(d) = by_override(row, stale, facts.def) {
            return d;
        }
    }
    let (row, stale) = facts.global_row.parts();
    by_global(row, stale, facts.def)
}

#[cfg(test)]
mod tests {
    //! Every combination of the inputs, against the v0.6 source table written out case by case.

    use super::*;
    use pbflags_proto::v1::FlagType;
    use pbflags_proto::v1::flag_value::Value;

    fn value(s: &str) -> FlagValue {
        FlagValue {
            value: Some(Value::StringValue(s.to_owned())),
        }
    }

    fn def(layer: &str, default: Option<&str>) -> FlagDef {
        FlagDef {
            flag_id: "f/1".into(),
            feature_id: "f".into(),
            field_number: 1,
            name: "f".into(),
            flag_type: FlagType::String,
            layer: layer.into(),
            default: default.map(value),
            supported_values: None,
            description: String::new(),
            feature_display_name: String::new(),
            feature_description: String::new(),
            feature_owner: String::new(),
        }
    }

    const STATES: [State; 4] = [
        State::Unspecified,
        State::Enabled,
        State::Default,
        State::Killed,
    ];

    /// Values a row may carry: none, an empty `FlagValue` (no oneof set), a real one.
    fn values() -> [Option<FlagValue>; 3] {
        [None, Some(FlagValue { value: None }), Some(value("row"))]
    }

    fn overrides() -> Vec<Override> {
        let mut v = Vec::new();
        for state in STATES {
            for value in values() {
                v.push(Override {
                    flag_id: "f/1".into(),
                    entity_id: "e".into(),
                    state,
                    value,
                });
            }
        }
        v
    }

    fn states() -> Vec<FlagState> {
        let mut v = Vec::new();
        for state in STATES {
            for value in values() {
                for archived in [false, true] {
                    v.push(FlagState {
                        state,
                        value: value.clone(),
                        archived,
                    });
                }
            }
        }
        v
    }

    fn knowns<T: Copy>(rows: &[T]) -> Vec<Known<T>> {
        let mut v = vec![Known::Unavailable, Known::Fresh(None), Known::Stale(None)];
        for r in rows {
            v.push(Known::Fresh(Some(*r)));
            v.push(Known::Stale(Some(*r)));
        }
        v
    }

    fn has_value(v: Option<&FlagValue>) -> bool {
        v.is_some_and(|v| v.value.is_some())
    }

    /// The expected answer, as an owned (source, value) pair, written from the behaviour table.
    fn oracle(f: &Facts<'_>) -> (EvaluationSource, Option<FlagValue>) {
        let default = f.def.and_then(|d| d.default.clone());
        if f.killed {
            return (EvaluationSource::Killed, default);
        }
        let declared_non_global = f
            .def
            .is_some_and(|d| !(d.layer.is_empty() || d.layer.eq_ignore_ascii_case("global")));
        if !f.entity_id.is_empty() && declared_non_global {
            let (row, stale) = match f.override_row {
                Known::Fresh(r) => (r, false),
                Known::Stale(r) => (r, true),
                Known::Unavailable => (None, false),
            };
            if let Some(o) = row {
                let enabled_with_value = o.state == State::Enabled && has_value(o.value.as_ref());
                if enabled_with_value {
                    let source = if stale {
                        EvaluationSource::Cached
                    } else {
                        EvaluationSource::Override
                    };
                    return (source, o.value.clone());
                }
                if o.state != State::Unspecified {
                    return (EvaluationSource::Default, default);
                }
            }
        }
        let (row, stale) = match f.global_row {
            Known::Fresh(r) => (r, false),
            Known::Stale(r) => (r, true),
            Known::Unavailable => (None, false),
        };
        match row {
            Some(s) if has_value(s.value.as_ref()) && s.archived => {
                let source = if stale {
                    EvaluationSource::Cached
                } else {
                    EvaluationSource::Archived
                };
                (source, s.value.clone())
            }
            Some(s) if has_value(s.value.as_ref()) && s.state == State::Enabled => {
                let source = if stale {
                    EvaluationSource::Cached
                } else {
                    EvaluationSource::Global
                };
                (source, s.value.clone())
            }
            _ => (EvaluationSource::Default, default),
        }
    }

    #[test]
    fn a_value_of_another_type_than_declared_is_mistyped() {
        let mut d = FlagDef {
            flag_type: FlagType::Bool,
            ..def("", None)
        };
        let b = FlagValue {
            value: Some(Value::BoolValue(true)),
        };
        assert!(!mistyped(&b, Some(&d)));
        assert!(mistyped(&value("x"), Some(&d)));
        assert!(
            !mistyped(&value("x"), None),
            "undeclared flags take any type"
        );
        assert!(!mistyped(&FlagValue { value: None }, Some(&d)));
        d.flag_type = FlagType::Unspecified;
        assert!(!mistyped(&value("x"), Some(&d)));
    }

    #[test]
    fn every_combination_matches_the_v06_table() {
        let defs = [
            None,
            Some(def("user", Some("compiled"))),
            Some(def("user", None)),
            Some(def("", Some("compiled"))),
            Some(def("GLOBAL", Some("compiled"))),
        ];
        let overrides = overrides();
        let states = states();
        let override_rows = knowns(&overrides.iter().collect::<Vec<_>>());
        let global_rows = knowns(&states.iter().collect::<Vec<_>>());
        let mut cases = 0u32;
        let mut by_source = std::collections::BTreeMap::new();
        for d in &defs {
            for killed in [false, true] {
                for entity_id in ["", "e"] {
                    for &override_row in &override_rows {
                        for &global_row in &global_rows {
                            let facts = Facts {
                                def: d.as_ref(),
                                killed,
                                entity_id,
                                override_row,
                                global_row,
                            };
                            let (source, v) = decide(&facts);
                            let got = (source, v.cloned());
                            assert_eq!(got, oracle(&facts), "{facts:?}");
                            *by_source.entry(source as i32).or_insert(0u32) += 1;
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 5 * 2 * 2 * (3 + 2 * 12) * (3 + 2 * 24));
        // Every source but UNSPECIFIED is reachable, and UNSPECIFIED never is.
        for s in [
            EvaluationSource::Default,
            EvaluationSource::Global,
            EvaluationSource::Override,
            EvaluationSource::Killed,
            EvaluationSource::Cached,
            EvaluationSource::Archived,
        ] {
            assert!(by_source.contains_key(&(s as i32)), "{s:?} never decided");
        }
        assert!(!by_source.contains_key(&(EvaluationSource::Unspecified as i32)));
    }

    #[test]
    fn a_decided_value_borrows_from_the_row_or_the_definition() {
        let d = def("user", Some("compiled"));
        let row = FlagState {
            state: State::Enabled,
            value: Some(value("row")),
            archived: false,
        };
        let (_, v) = by_global(Some(&row), false, Some(&d));
        assert!(std::ptr::eq(v.unwrap(), row.value.as_ref().unwrap()));
        let (_, v) = killed(Some(&d));
        assert!(std::ptr::eq(v.unwrap(), d.default.as_ref().unwrap()));
    }
}
