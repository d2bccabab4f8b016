//! proto3 JSON of the hot responses (`EvaluateResponse`, `BulkEvaluateResponse`) written directly
//! from the typed messages. The generic path ([`super::connect::encode`]) encodes to protobuf,
//! decodes a dynamic message and serializes that; for these small answers that was most of the
//! JSON cost. The output equals the generic path's as JSON (a property test checks it): field
//! names in lowerCamelCase, defaults omitted, oneof members always written, int64 as a string,
//! non-finite doubles as `"NaN"`, `"Infinity"`, `"-Infinity"`, enums by name (by number when
//! unknown).

use pbflags_proto::v1::flag_value::Value;
use pbflags_proto::v1::{BulkEvaluateResponse, EvaluateResponse, EvaluationSource, FlagValue};

fn string(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly as the generic path does; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn double(out: &mut Vec<u8>, d: f64) {
    if d.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if d.is_infinite() {
        out.extend_from_slice(if d > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else {
        let _ = serde_json::to_writer(&mut *out, &d);
    }
}

fn flag_value(out: &mut Vec<u8>, v: &FlagValue) {
    out.push(b'{');
    match &v.value {
        None => {}
        Some(Value::BoolValue(b)) => {
            out.extend_from_slice(if *b {
                b"\"boolValue\":true"
            } else {
                b"\"boolValue\":false"
            });
        }
        Some(Value::StringValue(s)) => {
            out.extend_from_slice(b"\"stringValue\":");
            string(out, s);
        }
        Some(Value::Int64Value(i)) => {
            out.extend_from_slice(b"\"int64Value\":\"");
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b'"');
        }
        Some(Value::DoubleValue(d)) => {
            out.extend_from_slice(b"\"doubleValue\":");
            double(out, *d);
        }
    }
    out.push(b'}');
}

fn evaluation(out: &mut Vec<u8>, r: &EvaluateResponse) {
    out.push(b'{');
    let mut sep = "";
    if !r.flag_id.is_empty() {
        out.extend_from_slice(b"\"flagId\":");
        string(out, &r.flag_id);
        sep = ",";
    }
    if let Some(v) = &r.value {
        out.extend_from_slice(sep.as_bytes());
        out.extend_from_slice(b"\"value\":");
        flag_value(out, v);
        sep = ",";
    }
    if r.source != 0 {
        out.extend_from_slice(sep.as_bytes());
        out.extend_from_slice(b"\"source\":");
        match EvaluationSource::try_from(r.source) {
            Ok(s) => string(out, s.as_str_name()),
            Err(_) => out.extend_from_slice(r.source.to_string().as_bytes()),
        }
    }
    out.push(b'}');
}

/// `EvaluateResponse` as proto3 JSON.
pub fn evaluate_response(r: &EvaluateResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + r.flag_id.len());
    evaluation(&mut out, r);
    out
}

/// `BulkEvaluateResponse` as proto3 JSON.
pub fn bulk_evaluate_response(r: &BulkEvaluateResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 80 * r.evaluations.len());
    if r.evaluations.is_empty() {
        out.extend_from_slice(b"{}");
        return out;
    }
    out.extend_from_slice(b"{\"evaluations\":[");
    for (i, e) in r.evaluations.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        evaluation(&mut out, e);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::connect::{Codec, encode};
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Option<FlagValue>> {
        prop_oneof![
            Just(None),
            Just(Some(FlagValue { value: None })),
            any::<bool>().prop_map(|b| Some(FlagValue::bool(b))),
            ".*".prop_map(|s: String| Some(FlagValue::string(&s))),
            any::<i64>().prop_map(|i| Some(FlagValue::int64(i))),
            prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(0.0),
                Just(-0.0),
                Just(1e300),
                Just(0.75),
            ]
            .prop_map(|d| Some(FlagValue::double(d))),
        ]
    }

    fn response() -> impl Strategy<Value = EvaluateResponse> {
        (
            prop_oneof![Just(String::new()), ".*", "[a-z]+/[0-9]{1,3}"],
            value(),
            prop_oneof![0..8i32, Just(-1i32), Just(99i32)],
        )
            .prop_map(|(flag_id, value, source)| EvaluateResponse {
                flag_id,
                value,
                source,
            })
    }

    fn generic<T: prost::Message>(m: &T, name: &str) -> serde_json::Value {
        serde_json::from_slice(&encode(Codec::Json, m, name).unwrap()).unwrap()
    }

    fn direct(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
    }

    proptest! {
        #[test]
        fn evaluate_responses_equal_the_generic_encoding(r in response()) {
            prop_assert_eq!(direct(&evaluate_response(&r)), generic(&r, "EvaluateResponse"));
        }

        #[test]
        fn bulk_responses_equal_the_generic_encoding(
            evaluations in proptest::collection::vec(response(), 0..5)
        ) {
            let r = BulkEvaluateResponse { evaluations };
            prop_assert_eq!(direct(&bulk_evaluate_response(&r)), generic(&r, "BulkEvaluateResponse"));
        }
    }

    #[test]
    fn a_typical_answer_reads_as_before() {
        let r = EvaluateResponse {
            flag_id: "notifications/2".into(),
            value: Some(FlagValue::string("daily")),
            source: EvaluationSource::Default as i32,
        };
        assert_eq!(
            String::from_utf8(evaluate_response(&r)).unwrap(),
            r#"{"flagId":"notifications/2","value":{"stringValue":"daily"},"source":"EVALUATION_SOURCE_DEFAULT"}"#
        );
    }
}
