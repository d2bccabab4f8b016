//! The pbflags wire contract, generated from `proto/` at build time.
//!
//! `pbflags` holds the option messages that define flags in user protos; `pbflags::v1` holds values,
//! states and the `FlagEvaluatorService`. Nothing here has behaviour of its own.

/// Option messages (`FeatureOptions`, `FlagOptions`, ...) used to declare flags in protobuf.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pbflags {
    include!(concat!(env!("OUT_DIR"), "/pbflags.rs"));

    /// Values, types, states and the evaluator service (package `pbflags.v1`).
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/pbflags.v1.rs"));
    }
}

pub use pbflags::v1;

/// Serialized `FileDescriptorSet` of the pbflags protos (with their imports), for reflection and for
/// decoding options with a known schema.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pbflags_descriptor.bin"));

/// The example descriptor set built from `proto/example/notifications.proto` (with imports).
pub const EXAMPLE_DESCRIPTORS: &[u8] = include_bytes!("../example/descriptors.pb");

impl v1::FlagValue {
    /// A boolean value.
    pub fn bool(v: bool) -> Self {
        Self {
            value: Some(v1::flag_value::Value::BoolValue(v)),
        }
    }
    /// A string value.
    pub fn string(v: impl Into<String>) -> Self {
        Self {
            value: Some(v1::flag_value::Value::StringValue(v.into())),
        }
    }
    /// An integer value.
    pub fn int64(v: i64) -> Self {
        Self {
            value: Some(v1::flag_value::Value::Int64Value(v)),
        }
    }
    /// A floating-point value.
    pub fn double(v: f64) -> Self {
        Self {
            value: Some(v1::flag_value::Value::DoubleValue(v)),
        }
    }
}
