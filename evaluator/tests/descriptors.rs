//! Descriptor parsing: compatibility with pbflags v0.6 on its example, and clear reports where v0.6 is silent.

mod support;

use pbflags_evaluator::core::descriptor::{self, ParseError, Warning};
use pbflags_proto::v1::{FlagType, FlagValue};

const HEADER: &str = "syntax = \"proto3\";\npackage t;\nimport \"pbflags/options.proto\";\n";

fn parse_src(body: &str) -> descriptor::Parsed {
    descriptor::parse(&support::compile(&format!("{HEADER}{body}"))).expect("parses")
}

#[test]
fn example_yields_the_four_notification_flags_like_v0_6() {
    let parsed = descriptor::parse(pbflags_proto::EXAMPLE_DESCRIPTORS).expect("example parses");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let ids: Vec<_> = parsed.flags.iter().map(|f| f.flag_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "notifications/1",
            "notifications/2",
            "notifications/3",
            "notifications/4"
        ]
    );

    let f1 = &parsed.flags[0];
    assert_eq!(f1.feature_id, "notifications");
    assert_eq!(f1.name, "email_enabled");
    assert_eq!(f1.flag_type, FlagType::Bool);
    assert_eq!(f1.layer, "user");
    assert!(!f1.is_global_layer());
    assert_eq!(f1.default, Some(FlagValue::bool(true)));
    assert_eq!(f1.feature_display_name, "Notifications");
    assert_eq!(
        f1.feature_description,
        "Controls notification delivery behavior"
    );
    assert_eq!(f1.feature_owner, "platform-team");
    assert_eq!(f1.description, "Send notifications by email");

    let f2 = &parsed.flags[1];
    assert_eq!(
        (f2.flag_type, f2.layer.as_str(), f2.is_global_layer()),
        (FlagType::String, "", true)
    );
    assert_eq!(f2.default, Some(FlagValue::string("daily")));
    let sv = f2.supported_values.as_ref().expect("supported values");
    assert_eq!(sv.string_values, ["hourly", "daily", "weekly"]);

    assert_eq!(
        (parsed.flags[2].flag_type, parsed.flags[2].default.clone()),
        (FlagType::Int64, Some(FlagValue::int64(3)))
    );
    assert_eq!(
        (parsed.flags[3].flag_type, parsed.flags[3].default.clone()),
        (FlagType::Double, Some(FlagValue::double(0.75)))
    );
    assert!(parsed.flags[2].supported_values.is_none());
}

#[test]
fn global_layer_is_empty_or_global_in_any_case() {
    for (layer, global) in [
        ("", true),
        ("global", true),
        ("GLOBAL", true),
        ("user", false),
        ("entity", false),
        ("unspecified", false),
    ] {
        assert_eq!(descriptor::is_global_layer(layer), global, "{layer:?}");
    }
}

#[test]
fn empty_input_is_a_clear_error() {
    let err = descriptor::parse(&[]).unwrap_err();
    assert!(matches!(err, ParseError::Empty), "{err}");
    assert!(err.to_string().contains("empty"));
}

#[test]
fn garbage_input_is_an_error_not_a_panic() {
    for bytes in [
        &b"\xff\xff\xff\xff"[..],
        b"not a descriptor set at all",
        &[0x0a, 0x80],
    ] {
        let err = descriptor::parse(bytes).unwrap_err();
        assert!(matches!(err, ParseError::Invalid(_)), "{err}");
    }
}

#[test]
fn every_truncation_of_the_example_is_handled_without_panic() {
    let full = pbflags_proto::EXAMPLE_DESCRIPTORS;
    let mut errors = 0;
    for len in (1..full.len()).step_by(97) {
        if descriptor::parse(&full[..len]).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0, "some truncations must fail");
}

#[test]
fn a_set_without_pbflags_options_names_the_missing_extension() {
    let bytes = support::compile("syntax = \"proto3\";\npackage t;\nmessage M { bool b = 1; }\n");
    let err = descriptor::parse(&bytes).unwrap_err();
    assert!(
        matches!(err, ParseError::MissingExtension { number: 51000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("51000"));
}

#[test]
fn a_set_with_options_but_no_features_has_zero_flags() {
    let parsed = parse_src("message M { bool b = 1; }\n");
    assert!(parsed.flags.is_empty());
}

#[test]
fn int64_family_maps_to_int64() {
    let parsed = parse_src(
        "message M { option (pbflags.feature) = { id: \"m\" };
           sint64 a = 1 [(pbflags.flag) = {}];
           sfixed64 b = 2 [(pbflags.flag) = {}];
           int64 c = 3 [(pbflags.flag) = {}]; }\n",
    );
    assert!(parsed.flags.iter().all(|f| f.flag_type == FlagType::Int64));
    assert_eq!(parsed.flags.len(), 3);
    assert!(parsed.flags.iter().all(|f| f.default.is_none()));
}

#[test]
fn unsupported_field_kinds_are_skipped_with_a_warning_naming_the_field() {
    let parsed = parse_src(
        "message M { option (pbflags.feature) = { id: \"m\" };
           int32 small = 1 [(pbflags.flag) = {}];
           float f = 2 [(pbflags.flag) = {}];
           bytes raw = 3 [(pbflags.flag) = {}];
           map<string, string> labels = 4 [(pbflags.flag) = {}];
           bool ok = 5 [(pbflags.flag) = {}]; }\n",
    );
    assert_eq!(
        parsed
            .flags
            .iter()
            .map(|f| f.flag_id.as_str())
            .collect::<Vec<_>>(),
        ["m/5"]
    );
    let fields: Vec<_> = parsed
        .warnings
        .iter()
        .map(|w| match w {
            Warning::UnsupportedType { field, .. } => field.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(fields, ["t.M.small", "t.M.f", "t.M.raw", "t.M.labels"]);
    assert!(parsed.warnings[0].to_string().contains("t.M.small"));
}

#[test]
fn repeated_fields_are_kept_as_scalars_with_a_warning() {
    let parsed = parse_src(
        "message M { option (pbflags.feature) = { id: \"m\" };
           repeated bool many = 7 [(pbflags.flag) = { default: { bool_value: { value: true } } }]; }\n",
    );
    assert_eq!(parsed.flags.len(), 1);
    assert_eq!(parsed.flags[0].flag_id, "m/7");
    assert_eq!(parsed.flags[0].flag_type, FlagType::Bool);
    assert_eq!(
        parsed.warnings,
        [Warning::RepeatedField {
            field: "t.M.many".into()
        }]
    );
}

#[test]
fn mismatched_default_is_kept_verbatim_with_a_warning() {
    let parsed = parse_src(
        "message M { option (pbflags.feature) = { id: \"m\" };
           bool b = 1 [(pbflags.flag) = { default: { string_value: { value: \"yes\" } } }]; }\n",
    );
    assert_eq!(parsed.flags[0].default, Some(FlagValue::string("yes")));
    assert_eq!(
        parsed.warnings,
        [Warning::DefaultTypeMismatch {
            field: "t.M.b".into(),
            field_type: FlagType::Bool,
            default_type: FlagType::String
        }]
    );
}

#[test]
fn present_wrapper_without_value_is_the_zero_value() {
    let parsed = parse_src(
        "message M { option (pbflags.feature) = { id: \"m\" };
           bool b = 1 [(pbflags.flag) = { default: { bool_value: {} } }];
           int64 i = 2 [(pbflags.flag) = { default: {} }]; }\n",
    );
    assert_eq!(parsed.flags[0].default, Some(FlagValue::bool(false)));
    assert_eq!(
        parsed.flags[1].default, None,
        "default with no member set means no default"
    );
}

#[test]
fn nested_features_and_empty_ids_are_reported_and_ignored() {
    let parsed = parse_src(
        "message Outer { message Inner { option (pbflags.feature) = { id: \"inner\" }; bool b = 1 [(pbflags.flag) = {}]; } }
         message Blank { option (pbflags.feature) = { id: \"\" }; bool b = 1 [(pbflags.flag) = {}]; }\n",
    );
    assert!(parsed.flags.is_empty());
    assert_eq!(
        parsed.warnings,
        [
            Warning::NestedFeature {
                message: "t.Outer.Inner".into()
            },
            Warning::EmptyFeatureId {
                message: "t.Blank".into()
            }
        ]
    );
}

#[test]
fn two_messages_with_one_feature_id_refuse_to_load() {
    let bytes = support::compile(&format!(
        "{HEADER}message A {{ option (pbflags.feature) = {{ id: \"dup\" }}; bool a = 1 [(pbflags.flag) = {{}}]; }}
         message B {{ option (pbflags.feature) = {{ id: \"dup\" }}; bool b = 1 [(pbflags.flag) = {{}}]; }}\n"
    ));
    let err = descriptor::parse(&bytes).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"dup\"") && msg.contains("t.A") && msg.contains("t.B"),
        "{msg}"
    );
}

#[test]
fn a_thousand_flags_parse_in_declaration_order() {
    let parsed = descriptor::parse(&support::many_flags("big", 1000)).expect("parses");
    assert_eq!(parsed.flags.len(), 1000);
    assert_eq!(parsed.flags[999].flag_id, "big/1000");
    assert_eq!(parsed.flags[41].default, Some(FlagValue::int64(42)));
}

#[test]
fn a_set_that_makes_the_descriptor_library_panic_is_refused_not_fatal() {
    // Found by the descriptors fuzz target: prost-reflect indexes out of bounds while building
    // the error for this mutated copy of the example set.
    let path = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("tests/data/descriptors-parser-panic.pb");
    let bytes = std::fs::read(path).expect("regression input");
    let err = descriptor::parse(&bytes).expect_err("refused");
    assert!(matches!(err, ParseError::Malformed), "{err:?}");
    assert!(err.to_string().contains("malformed input"), "{err}");
}

#[test]
fn a_file_that_imports_itself_is_refused_not_a_stack_overflow() {
    // Found by the descriptors fuzz target: prost-reflect recursed without end on this set (a file
    // publicly importing itself) and overflowed the stack, taking the process down.
    let path = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("tests/data/descriptors-import-cycle.pb");
    let bytes = std::fs::read(path).expect("regression input");
    let err = descriptor::parse(&bytes).expect_err("refused");
    assert!(matches!(err, ParseError::Imports(_)), "{err:?}");
    // A cycle through two files, and an import index out of range, built by hand.
    use prost::Message as _;
    let file = |name: &str, deps: &[&str], public: &[i32]| prost_types::FileDescriptorProto {
        name: Some(name.to_owned()),
        dependency: deps.iter().map(|d| (*d).to_owned()).collect(),
        public_dependency: public.to_vec(),
        ..Default::default()
    };
    let set = |files| prost_types::FileDescriptorSet { file: files }.encode_to_vec();
    let cycle = set(vec![
        file("a.proto", &["b.proto"], &[0]),
        file("b.proto", &["a.proto"], &[0]),
    ]);
    let err = descriptor::parse(&cycle).expect_err("refused");
    assert!(err.to_string().contains("import cycle"), "{err}");
    let out_of_range = set(vec![file("a.proto", &[], &[3])]);
    let err = descriptor::parse(&out_of_range).expect_err("refused");
    assert!(err.to_string().contains("import index 3"), "{err}");
}
