//! Descriptor parsing: `FileDescriptorSet` bytes → flag definitions.
//!
//! Owns the mapping from protobuf options to [`FlagDef`]s. Pure: no file access, no clocks.
//!
//! Compatible with pbflags v0.6: features come from the `(pbflags.feature)` message option (51000) of
//! top-level messages, flags from the `(pbflags.flag)` field option (51001), flag id
//! `"<feature_id>/<field_number>"`. Extensions are resolved from the set itself, so a set built from any
//! copy of `pbflags/options.proto` works.
//!
//! Where v0.6 is silent, this parser speaks up. Each case, and what it does:
//!
//! | case | v0.6 | here |
//! |---|---|---|
//! | flag field of an unsupported kind (int32, float, bytes, enum, message, map, ...) | skipped silently | skipped, [`Warning::UnsupportedType`] |
//! | repeated flag field | accepted as a scalar | accepted as a scalar (same flag id and type), [`Warning::RepeatedField`] |
//! | default whose kind differs from the field's type | kept verbatim | kept verbatim (same default), [`Warning::DefaultTypeMismatch`] |
//! | feature option on a nested message | ignored | ignored, [`Warning::NestedFeature`] |
//! | feature option with an empty id | ignored | ignored, [`Warning::EmptyFeatureId`] |
//! | two messages with the same feature id | later one wins | load error [`ParseError::DuplicateFeature`]: flag ids would be ambiguous |
//! | empty, truncated or garbage bytes | error | error naming the cause, never a panic |
//!
//! Warnings keep every flag id, type and default the original would produce, so a descriptor set it
//! accepts serves identically here; only the duplicate-feature case refuses to load, because serving it
//! would pick one of two definitions arbitrarily.

use std::collections::HashMap;
use std::fmt;

use pbflags_proto::v1::{FlagType, FlagValue, flag_value};
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value,
};

/// Extension number of `(pbflags.feature)` on `google.protobuf.MessageOptions`.
pub const FEATURE_EXTENSION: u32 = 51000;
/// Extension number of `(pbflags.flag)` on `google.protobuf.FieldOptions`.
pub const FLAG_EXTENSION: u32 = 51001;

/// Values a UI may offer for a flag (a hint; never enforced).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SupportedValues {
    /// Allowed strings.
    pub string_values: Vec<String>,
    /// Allowed integers.
    pub int64_values: Vec<i64>,
    /// Allowed doubles.
    pub double_values: Vec<f64>,
}

/// One flag, as declared in the descriptors.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagDef {
    /// `"<feature_id>/<field_number>"`.
    pub flag_id: String,
    /// The feature's stable id.
    pub feature_id: String,
    /// The proto field number.
    pub field_number: u32,
    /// The proto field name, e.g. `email_enabled`.
    pub name: String,
    /// The flag's value type.
    pub flag_type: FlagType,
    /// The layer string, verbatim (case preserved; empty when unset).
    pub layer: String,
    /// The compiled default, if one is declared.
    pub default: Option<FlagValue>,
    /// UI hint values, `None` when all lists are empty.
    pub supported_values: Option<SupportedValues>,
    /// The flag's own description (`FlagOptions.description`).
    pub description: String,
    /// The feature message's simple name, e.g. `Notifications`.
    pub feature_display_name: String,
    /// The feature's description.
    pub feature_description: String,
    /// The feature's owner.
    pub feature_owner: String,
}

impl FlagDef {
    /// True when the flag has one value for everyone: its layer is empty or `global` (any case).
    pub fn is_global_layer(&self) -> bool {
        is_global_layer(&self.layer)
    }
}

/// True when `layer` names the global layer: empty or `global`, case-insensitively.
pub fn is_global_layer(layer: &str) -> bool {
    layer.is_empty() || layer.eq_ignore_ascii_case("global")
}

/// Something in the descriptors that loads, but probably not as its author meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A `(pbflags.flag)` field whose kind has no flag type; the field is skipped.
    UnsupportedType {
        /// Full name of the proto field.
        field: String,
        /// Its kind, as protobuf spells it.
        kind: String,
    },
    /// A repeated `(pbflags.flag)` field; it is served as a scalar flag of its element type.
    RepeatedField {
        /// Full name of the proto field.
        field: String,
    },
    /// The default's kind differs from the field's type; the default is served as declared.
    DefaultTypeMismatch {
        /// Full name of the proto field.
        field: String,
        /// The field's flag type.
        field_type: FlagType,
        /// The kind of the declared default.
        default_type: FlagType,
    },
    /// A nested message carries `(pbflags.feature)`; only top-level messages are features.
    NestedFeature {
        /// Full name of the nested message.
        message: String,
    },
    /// A `(pbflags.feature)` option with an empty id; the message is ignored.
    EmptyFeatureId {
        /// Full name of the message.
        message: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::UnsupportedType { field, kind } => write!(
                f,
                "{field}: flag fields must be bool, string, int64/sint64/sfixed64 or double; {kind} is not supported, field skipped"
            ),
            Warning::RepeatedField { field } => write!(
                f,
                "{field}: repeated flag field is served as a single value of its element type"
            ),
            Warning::DefaultTypeMismatch {
                field,
                field_type,
                default_type,
            } => write!(
                f,
                "{field}: default is {} but the field is {}; clients will fall back to their own default",
                type_name(*default_type),
                type_name(*field_type)
            ),
            Warning::NestedFeature { message } => write!(
                f,
                "{message}: (pbflags.feature) on a nested message is ignored; only top-level messages are features"
            ),
            Warning::EmptyFeatureId { message } => {
                write!(
                    f,
                    "{message}: (pbflags.feature) has an empty id; message ignored"
                )
            }
        }
    }
}

/// Why a descriptor set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Zero bytes.
    #[error("descriptor set is empty (0 bytes)")]
    Empty,
    /// Not a valid `FileDescriptorSet`, or its files do not link (e.g. a missing import).
    #[error("invalid descriptor set: {0}")]
    Invalid(#[source] prost_reflect::DescriptorError),
    /// The files' imports do not form a tree: an import index out of range, or a file importing
    /// itself directly or through others (protoc refuses both; the descriptor library would
    /// recurse without end on a cycle of public imports).
    #[error("invalid descriptor set: {0}")]
    Imports(String),
    /// The descriptor library panicked on the input (a malformed set it does not handle); the
    /// panic is contained and the set refused like any other invalid one.
    #[error("invalid descriptor set: malformed input the descriptor parser could not handle")]
    Malformed,
    /// `pbflags/options.proto` (or an equivalent) is not in the set.
    #[error(
        "{name} extension ({number}) not found in descriptors; build the set with its imports (e.g. `buf build -o` or `protoc --include_imports`)"
    )]
    MissingExtension {
        /// `feature` or `flag`.
        name: &'static str,
        /// 51000 or 51001.
        number: u32,
    },
    /// Two messages declare the same feature id.
    #[error("feature id {id:?} is declared by both {first} and {second}")]
    DuplicateFeature {
        /// The duplicated feature id.
        id: String,
        /// Full name of the first message.
        first: String,
        /// Full name of the second message.
        second: String,
    },
}

/// The result of a successful parse.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// Flags in file, message and field declaration order.
    pub flags: Vec<FlagDef>,
    /// What loaded but deserves the author's attention.
    pub warnings: Vec<Warning>,
}

/// Refuses a set whose imports do not form a tree (found by fuzzing: prost-reflect 0.16 recurses
/// without end, overflowing the stack, on a file that publicly imports itself). Sets that do not
/// decode at all are left to the descriptor library's own error.
fn check_imports(bytes: &[u8]) -> Result<(), ParseError> {
    use prost::Message as _;
    let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
        return Ok(());
    };
    let index: HashMap<&str, usize> = set
        .file
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name(), i))
        .collect();
    for f in &set.file {
        let n = f.dependency.len();
        let bad = f
            .public_dependency
            .iter()
            .chain(&f.weak_dependency)
            .find(|&&d| usize::try_from(d).map_or(true, |d| d >= n));
        if let Some(d) = bad {
            return Err(ParseError::Imports(format!(
                "{:?} lists import index {d}, but has {n} imports",
                f.name()
            )));
        }
    }
    // Depth-first over the imports present in the set, without recursion: 0 unvisited, 1 on the
    // current path, 2 done.
    let mut state = vec![0u8; set.file.len()];
    for start in 0..set.file.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((file, next)) = stack.last_mut() {
            let deps = &set.file[*file].dependency;
            if *next == deps.len() {
                state[*file] = 2;
                stack.pop();
                continue;
            }
            let dep = deps[*next].as_str();
            *next += 1;
            let Some(&d) = index.get(dep) else { continue };
            match state[d] {
                0 => {
                    state[d] = 1;
                    stack.push((d, 0));
                }
                1 => {
                    return Err(ParseError::Imports(format!(
                        "import cycle: {:?} imports {dep:?}, which imports it back",
                        set.file[*file].name()
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Parses a serialized `FileDescriptorSet` into flag definitions. A panic inside the descriptor
/// library (found by fuzzing: prost-reflect 0.16 indexes out of bounds building some errors) is
/// contained and reported as [`ParseError::Malformed`]: a bad file must never take the process down.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ParseError> {
    std::panic::catch_unwind(|| parse_unguarded(bytes)).unwrap_or(Err(ParseError::Malformed))
}

fn parse_unguarded(bytes: &[u8]) -> Result<Parsed, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    check_imports(bytes)?;
    let pool = DescriptorPool::decode(bytes).map_err(ParseError::Invalid)?;
    let feature_ext = find_extension(&pool, "google.protobuf.MessageOptions", FEATURE_EXTENSION)
        .ok_or(ParseError::MissingExtension {
            name: "feature",
            number: FEATURE_EXTENSION,
        })?;
    let flag_ext = find_extension(&pool, "google.protobuf.FieldOptions", FLAG_EXTENSION).ok_or(
        ParseError::MissingExtension {
            name: "flag",
            number: FLAG_EXTENSION,
        },
    )?;

    let mut out = Parsed::default();
    let mut seen: HashMap<String, String> = HashMap::new();
    for file in pool.files() {
        for message in file.messages() {
            for nested in message.child_messages() {
                warn_nested_features(&nested, &feature_ext, &mut out.warnings);
            }
            let Some(feature) = feature_of(&message, &feature_ext) else {
                continue;
            };
            if feature.id.is_empty() {
                out.warnings.push(Warning::EmptyFeatureId {
                    message: message.full_name().to_owned(),
                });
                continue;
            }
            if let Some(first) = seen.insert(feature.id.clone(), message.full_name().to_owned()) {
                return Err(ParseError::DuplicateFeature {
                    id: feature.id,
                    first,
                    second: message.full_name().to_owned(),
                });
            }
            for field in message.fields() {
                if let Some(def) = flag_of(&message, &feature, &field, &flag_ext, &mut out.warnings)
                {
                    out.flags.push(def);
                }
            }
        }
    }
    Ok(out)
}

struct Feature {
    id: String,
    description: String,
    owner: String,
}

fn find_extension(
    pool: &DescriptorPool,
    extendee: &str,
    number: u32,
) -> Option<ExtensionDescriptor> {
    pool.all_extensions()
        .find(|e| e.number() == number && e.containing_message().full_name() == extendee)
}

/// Reads extension `ext` from `options` (decoded against this set's own pool, so extensions resolve).
fn option_message(options: &DynamicMessage, ext: &ExtensionDescriptor) -> Option<DynamicMessage> {
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).as_ref() {
        Value::Message(m) => Some(m.clone()),
        _ => None,
    }
}

fn string_field(m: &DynamicMessage, name: &str) -> String {
    m.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn feature_of(message: &MessageDescriptor, ext: &ExtensionDescriptor) -> Option<Feature> {
    let opt = option_message(&message.options(), ext)?;
    Some(Feature {
        id: string_field(&opt, "id"),
        description: string_field(&opt, "description"),
        owner: string_field(&opt, "owner"),
    })
}

fn warn_nested_features(
    message: &MessageDescriptor,
    ext: &ExtensionDescriptor,
    warnings: &mut Vec<Warning>,
) {
    if option_message(&message.options(), ext).is_some() {
        warnings.push(Warning::NestedFeature {
            message: message.full_name().to_owned(),
        });
    }
    for nested in message.child_messages() {
        warn_nested_features(&nested, ext, warnings);
    }
}

fn flag_type_of(kind: &Kind) -> Option<FlagType> {
    match kind {
        Kind::Bool => Some(FlagType::Bool),
        Kind::String => Some(FlagType::String),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Some(FlagType::Int64),
        Kind::Double => Some(FlagType::Double),
        _ => None,
    }
}

fn kind_name(field: &FieldDescriptor) -> String {
    if field.is_map() {
        return "map".to_owned();
    }
    match field.kind() {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn flag_of(
    message: &MessageDescriptor,
    feature: &Feature,
    field: &FieldDescriptor,
    ext: &ExtensionDescriptor,
    warnings: &mut Vec<Warning>,
) -> Option<FlagDef> {
    let opt = option_message(&field.options(), ext)?;
    let full = field.full_name().to_owned();
    let Some(flag_type) = flag_type_of(&field.kind()).filter(|_| !field.is_map()) else {
        warnings.push(Warning::UnsupportedType {
            kind: kind_name(field),
            field: full,
        });
        return None;
    };
    if field.is_list() {
        warnings.push(Warning::RepeatedField {
            field: full.clone(),
        });
    }
    let default = default_of(&opt);
    if let Some(default_type) = default.as_ref().and_then(value_type)
        && default_type != flag_type
    {
        warnings.push(Warning::DefaultTypeMismatch {
            field: full,
            field_type: flag_type,
            default_type,
        });
    }
    Some(FlagDef {
        flag_id: format!("{}/{}", feature.id, field.number()),
        feature_id: feature.id.clone(),
        field_number: field.number(),
        name: field.name().to_owned(),
        flag_type,
        layer: string_field(&opt, "layer"),
        default,
        supported_values: supported_values_of(&opt),
        description: string_field(&opt, "description"),
        feature_display_name: message.name().to_owned(),
        feature_description: feature.description.clone(),
        feature_owner: feature.owner.clone(),
    })
}

/// The first populated member of `FlagDefault`'s oneof, read through its wrapper (an unset wrapper
/// `value` is the zero value, as in v0.6).
fn default_of(opt: &DynamicMessage) -> Option<FlagValue> {
    if !opt.has_field_by_name("default") {
        return None;
    }
    let default = opt.get_field_by_name("default")?;
    let default = default.as_message()?;
    for (member, wrap) in [
        ("bool_value", wrap_bool as fn(&Value) -> Option<FlagValue>),
        ("string_value", wrap_string),
        ("int64_value", wrap_int64),
        ("double_value", wrap_double),
    ] {
        if default.has_field_by_name(member) {
            let wrapper = default.get_field_by_name(member)?;
            let inner = wrapper.as_message()?.get_field_by_name("value")?;
            return wrap(&inner);
        }
    }
    None
}

fn wrap_bool(v: &Value) -> Option<FlagValue> {
    v.as_bool().map(FlagValue::bool)
}
fn wrap_string(v: &Value) -> Option<FlagValue> {
    v.as_str().map(FlagValue::string)
}
fn wrap_int64(v: &Value) -> Option<FlagValue> {
    v.as_i64().map(FlagValue::int64)
}
fn wrap_double(v: &Value) -> Option<FlagValue> {
    v.as_f64().map(FlagValue::double)
}

fn supported_values_of(opt: &DynamicMessage) -> Option<SupportedValues> {
    if !opt.has_field_by_name("supported_values") {
        return None;
    }
    let sv = opt.get_field_by_name("supported_values")?;
    let sv = sv.as_message()?;
    let list = |name: &str| -> Vec<Value> {
        sv.get_field_by_name(name)
            .and_then(|v| v.as_list().map(<[Value]>::to_vec))
            .unwrap_or_default()
    };
    let out = SupportedValues {
        string_values: list("string_values")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        int64_values: list("int64_values")
            .iter()
            .filter_map(Value::as_i64)
            .collect(),
        double_values: list("double_values")
            .iter()
            .filter_map(Value::as_f64)
            .collect(),
    };
    let empty =
        out.string_values.is_empty() && out.int64_values.is_empty() && out.double_values.is_empty();
    (!empty).then_some(out)
}

/// The type of the value held by `v`, if any.
pub fn value_type(v: &FlagValue) -> Option<FlagType> {
    Some(match v.value.as_ref()? {
        flag_value::Value::BoolValue(_) => FlagType::Bool,
        flag_value::Value::StringValue(_) => FlagType::String,
        flag_value::Value::Int64Value(_) => FlagType::Int64,
        flag_value::Value::DoubleValue(_) => FlagType::Double,
    })
}

/// `BOOL`, `STRING`, `INT64` or `DOUBLE`, as the database and the CLI spell flag types.
pub fn type_name(t: FlagType) -> &'static str {
    match t {
        FlagType::Bool => "BOOL",
        FlagType::String => "STRING",
        FlagType::Int64 => "INT64",
        FlagType::Double => "DOUBLE",
        FlagType::Unspecified => "UNSPECIFIED",
    }
}
