//! Encoding of values and states as pbflags v0.6 stores them: `FlagValue` as protobuf bytes (NULL for
//! none), states as `ENABLED` / `DEFAULT` / `KILLED`, types as `BOOL` / `STRING` / `INT64` / `DOUBLE`.

use pbflags_proto::v1::{FlagType, FlagValue, State};
use prost::Message as _;

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a `FlagValue`.
    #[error("undecodable value bytes ({0} bytes)")]
    Value(usize),
    /// The state string is none of ENABLED, DEFAULT, KILLED.
    #[error("unknown state {0:?}")]
    State(String),
}

/// Decodes stored value bytes: NULL, empty or a `FlagValue` with no member set are "no value".
pub fn decode_value(bytes: Option<&[u8]>) -> Result<Option<FlagValue>, DecodeError> {
    match bytes {
        None | Some([]) => Ok(None),
        Some(b) => {
            let v = FlagValue::decode(b).map_err(|_| DecodeError::Value(b.len()))?;
            Ok(v.value.is_some().then_some(v))
        }
    }
}

/// Encodes a value for storage; `None` (or no member set) is NULL, as v0.6 writes it.
pub fn encode_value(v: Option<&FlagValue>) -> Option<Vec<u8>> {
    v.filter(|v| v.value.is_some())
        .map(FlagValue::encode_to_vec)
}

/// Decodes a stored state string.
pub fn decode_state(s: &str) -> Result<State, DecodeError> {
    match s {
        "ENABLED" => Ok(State::Enabled),
        "DEFAULT" => Ok(State::Default),
        "KILLED" => Ok(State::Killed),
        other => Err(DecodeError::State(other.to_owned())),
    }
}

/// The stored spelling of a state.
pub fn state_name(s: State) -> &'static str {
    match s {
        State::Enabled => "ENABLED",
        State::Killed => "KILLED",
        State::Default | State::Unspecified => "DEFAULT",
    }
}

/// The stored spelling of a type.
pub fn type_from_name(s: &str) -> FlagType {
    match s {
        "BOOL" => FlagType::Bool,
        "STRING" => FlagType::String,
        "INT64" => FlagType::Int64,
        "DOUBLE" => FlagType::Double,
        _ => FlagType::Unspecified,
    }
}

/// The stored layer of a descriptor layer: `GLOBAL` for empty or "global", else upper-cased.
pub fn layer_name(layer: &str) -> String {
    if crate::core::descriptor::is_global_layer(layer) {
        "GLOBAL".to_owned()
    } else {
        layer.to_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_the_v0_6_byte_format() {
        assert_eq!(
            encode_value(Some(&FlagValue::bool(false))),
            Some(vec![0x08, 0x00]),
            "set members are encoded even when zero"
        );
        for v in [
            FlagValue::bool(true),
            FlagValue::string("x"),
            FlagValue::int64(-3),
            FlagValue::double(0.75),
        ] {
            let bytes = encode_value(Some(&v));
            assert_eq!(decode_value(bytes.as_deref()), Ok(Some(v)));
        }
    }

    #[test]
    fn null_empty_and_memberless_values_are_no_value() {
        assert_eq!(decode_value(None), Ok(None));
        assert_eq!(decode_value(Some(&[])), Ok(None));
        assert_eq!(encode_value(Some(&FlagValue { value: None })), None);
    }

    #[test]
    fn garbage_bytes_and_unknown_states_are_errors() {
        assert_eq!(
            decode_value(Some(&[0xff, 0xff, 0xff])),
            Err(DecodeError::Value(3))
        );
        assert_eq!(
            decode_state("PAUSED"),
            Err(DecodeError::State("PAUSED".into()))
        );
        assert_eq!(decode_state("KILLED"), Ok(State::Killed));
    }

    #[test]
    fn layers_are_stored_upper_case_with_global_for_empty() {
        assert_eq!(
            (layer_name(""), layer_name("global"), layer_name("user")),
            ("GLOBAL".into(), "GLOBAL".into(), "USER".into())
        );
    }
}
