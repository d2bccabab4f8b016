//! The wire contract against pbflags v0.6, as its protos declare it: packages, file options (Go and
//! Java code generation settings included), the service's methods, and every message's field
//! names, numbers and types. A client generated from v0.6's protos must work unchanged.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{FileDescriptorProto, FileDescriptorSet};

fn file(name: &str) -> FileDescriptorProto {
    FileDescriptorSet::decode(pbflags_proto::FILE_DESCRIPTOR_SET)
        .unwrap()
        .file
        .into_iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("{name} is compiled in"))
}

#[test]
fn file_options_match_v0_6() {
    for (name, package, go, java) in [
        (
            "pbflags/options.proto",
            "pbflags",
            "github.com/SpotlightGOV/pbflags/gen/pbflags;pbflagspb",
            "org.spotlightgov.pbflags.proto",
        ),
        (
            "pbflags/v1/types.proto",
            "pbflags.v1",
            "github.com/SpotlightGOV/pbflags/gen/pbflags/v1;pbflagsv1",
            "org.spotlightgov.pbflags.v1.proto",
        ),
        (
            "pbflags/v1/evaluator.proto",
            "pbflags.v1",
            "github.com/SpotlightGOV/pbflags/gen/pbflags/v1;pbflagsv1",
            "org.spotlightgov.pbflags.v1.proto",
        ),
    ] {
        let f = file(name);
        assert_eq!(f.package(), package, "{name}");
        assert_eq!(f.syntax(), "proto3", "{name}");
        let o = f.options.unwrap();
        assert_eq!(
            (o.go_package(), o.java_package(), o.java_multiple_files()),
            (go, java, true),
            "{name}"
        );
    }
}

/// (field name, number, type, repeated, full message or enum type name, or "")
type Field = (&'static str, i32, Type, bool, &'static str);

fn check_message(file_name: &str, message: &str, want: &[Field]) {
    let f = file(file_name);
    let m = f
        .message_type
        .iter()
        .find(|m| m.name() == message)
        .unwrap_or_else(|| panic!("{message} in {file_name}"));
    let got: Vec<(String, i32, Type, bool, String)> = m
        .field
        .iter()
        .map(|x| {
            (
                x.name().to_owned(),
                x.number(),
                x.r#type(),
                x.label() == Label::Repeated,
                x.type_name().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, i32, Type, bool, String)> = want
        .iter()
        .map(|&(n, num, t, rep, tn)| (n.to_owned(), num, t, rep, tn.to_owned()))
        .collect();
    assert_eq!(got, want, "{message}");
}

#[test]
fn evaluator_messages_match_v0_6_field_for_field() {
    use Type::{Bool, Enum, Int32, Int64, Message, String as Str};
    let ev = "pbflags/v1/evaluator.proto";
    check_message(
        ev,
        "EvaluateRequest",
        &[
            ("flag_id", 1, Str, false, ""),
            ("entity_id", 2, Str, false, ""),
        ],
    );
    check_message(
        ev,
        "EvaluateResponse",
        &[
            ("flag_id", 1, Str, false, ""),
            ("value", 2, Message, false, ".pbflags.v1.FlagValue"),
            ("source", 3, Enum, false, ".pbflags.v1.EvaluationSource"),
        ],
    );
    check_message(
        ev,
        "BulkEvaluateRequest",
        &[
            ("flag_ids", 1, Str, true, ""),
            ("entity_id", 2, Str, false, ""),
        ],
    );
    check_message(
        ev,
        "BulkEvaluateResponse",
        &[(
            "evaluations",
            1,
            Message,
            true,
            ".pbflags.v1.EvaluateResponse",
        )],
    );
    check_message(ev, "HealthRequest", &[]);
    check_message(
        ev,
        "HealthResponse",
        &[
            ("status", 1, Enum, false, ".pbflags.v1.EvaluatorStatus"),
            ("seconds_since_server_contact", 2, Int64, false, ""),
            ("cached_flag_count", 3, Int32, false, ""),
            ("consecutive_failures", 4, Int32, false, ""),
        ],
    );
    check_message(ev, "GetFlagStateRequest", &[("flag_id", 1, Str, false, "")]);
    check_message(
        ev,
        "GetFlagStateResponse",
        &[
            ("flag", 1, Message, false, ".pbflags.v1.FlagState"),
            ("archived", 2, Bool, false, ""),
        ],
    );
    check_message(
        ev,
        "FlagState",
        &[
            ("flag_id", 1, Str, false, ""),
            ("state", 2, Enum, false, ".pbflags.v1.State"),
            ("value", 3, Message, false, ".pbflags.v1.FlagValue"),
        ],
    );
    check_message(ev, "GetKilledFlagsRequest", &[]);
    check_message(
        ev,
        "GetKilledFlagsResponse",
        &[
            ("flag_ids", 1, Str, true, ""),
            (
                "killed_overrides",
                2,
                Message,
                true,
                ".pbflags.v1.KilledOverride",
            ),
        ],
    );
    check_message(
        ev,
        "KilledOverride",
        &[
            ("flag_id", 1, Str, false, ""),
            ("entity_id", 2, Str, false, ""),
        ],
    );
    check_message(
        ev,
        "GetOverridesRequest",
        &[
            ("entity_id", 1, Str, false, ""),
            ("flag_ids", 2, Str, true, ""),
        ],
    );
    check_message(
        ev,
        "GetOverridesResponse",
        &[("overrides", 1, Message, true, ".pbflags.v1.OverrideState")],
    );
    check_message(
        ev,
        "OverrideState",
        &[
            ("flag_id", 1, Str, false, ""),
            ("entity_id", 2, Str, false, ""),
            ("state", 3, Enum, false, ".pbflags.v1.State"),
            ("value", 4, Message, false, ".pbflags.v1.FlagValue"),
        ],
    );
}

#[test]
fn the_service_has_v0_6s_six_unary_methods() {
    let f = file("pbflags/v1/evaluator.proto");
    let s = &f.service[0];
    assert_eq!(s.name(), "FlagEvaluatorService");
    let methods: Vec<(&str, &str, &str, bool)> = s
        .method
        .iter()
        .map(|m| {
            (
                m.name(),
                m.input_type(),
                m.output_type(),
                m.client_streaming() || m.server_streaming(),
            )
        })
        .collect();
    let want: Vec<(String, String, String, bool)> = [
        "Evaluate",
        "BulkEvaluate",
        "Health",
        "GetFlagState",
        "GetKilledFlags",
        "GetOverrides",
    ]
    .iter()
    .map(|m| {
        (
            (*m).to_owned(),
            format!(".pbflags.v1.{m}Request"),
            format!(".pbflags.v1.{m}Response"),
            false,
        )
    })
    .collect();
    let got: Vec<(String, String, String, bool)> = methods
        .into_iter()
        .map(|(a, b, c, d)| (a.to_owned(), b.to_owned(), c.to_owned(), d))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn admin_messages_and_service_match_v0_6_1() {
    use Type::{Bool, Enum, Int32, Int64, Message, String as Str};
    let ad = "pbflags/v1/admin.proto";
    let f = file(ad);
    assert_eq!(f.package(), "pbflags.v1");
    let o = f.options.clone().unwrap();
    assert_eq!(
        (o.go_package(), o.java_package(), o.java_multiple_files()),
        (
            "github.com/SpotlightGOV/pbflags/gen/pbflags/v1;pbflagsv1",
            "org.spotlightgov.pbflags.v1.proto",
            true
        )
    );
    let value = ".pbflags.v1.FlagValue";
    let state = ".pbflags.v1.State";
    check_message(ad, "ListFeaturesRequest", &[]);
    check_message(
        ad,
        "ListFeaturesResponse",
        &[("features", 1, Message, true, ".pbflags.v1.FeatureDetail")],
    );
    check_message(
        ad,
        "FeatureDetail",
        &[
            ("feature_id", 1, Str, false, ""),
            ("description", 2, Str, false, ""),
            ("owner", 3, Str, false, ""),
            ("flags", 4, Message, true, ".pbflags.v1.FlagDetail"),
        ],
    );
    check_message(
        ad,
        "FlagDetail",
        &[
            ("flag_id", 1, Str, false, ""),
            ("display_name", 2, Str, false, ""),
            ("description", 3, Str, false, ""),
            ("flag_type", 4, Enum, false, ".pbflags.v1.FlagType"),
            ("layer", 5, Str, false, ""),
            ("state", 6, Enum, false, state),
            ("default_value", 7, Message, false, value),
            ("current_value", 8, Message, false, value),
            (
                "overrides",
                9,
                Message,
                true,
                ".pbflags.v1.FlagOverrideDetail",
            ),
            (
                "supported_values",
                10,
                Message,
                false,
                ".pbflags.SupportedValues",
            ),
            ("archived", 11, Bool, false, ""),
        ],
    );
    check_message(
        ad,
        "FlagOverrideDetail",
        &[
            ("entity_id", 1, Str, false, ""),
            ("state", 2, Enum, false, state),
            ("value", 3, Message, false, value),
        ],
    );
    check_message(ad, "GetFlagRequest", &[("flag_id", 1, Str, false, "")]);
    check_message(
        ad,
        "GetFlagResponse",
        &[("flag", 1, Message, false, ".pbflags.v1.FlagDetail")],
    );
    check_message(
        ad,
        "UpdateFlagStateRequest",
        &[
            ("flag_id", 1, Str, false, ""),
            ("state", 2, Enum, false, state),
            ("value", 3, Message, false, value),
            ("actor", 4, Str, false, ""),
        ],
    );
    check_message(
        ad,
        "SetFlagOverrideRequest",
        &[
            ("flag_id", 1, Str, false, ""),
            ("entity_id", 2, Str, false, ""),
            ("state", 3, Enum, false, state),
            ("value", 4, Message, false, value),
            ("actor", 5, Str, false, ""),
        ],
    );
    check_message(
        ad,
        "RemoveFlagOverrideRequest",
        &[
            ("flag_id", 1, Str, false, ""),
            ("entity_id", 2, Str, false, ""),
            ("actor", 3, Str, false, ""),
        ],
    );
    for empty in [
        "UpdateFlagStateResponse",
        "SetFlagOverrideResponse",
        "RemoveFlagOverrideResponse",
    ] {
        check_message(ad, empty, &[]);
    }
    check_message(
        ad,
        "GetAuditLogRequest",
        &[
            ("flag_id", 1, Str, false, ""),
            ("limit", 2, Int32, false, ""),
        ],
    );
    check_message(
        ad,
        "GetAuditLogResponse",
        &[("entries", 1, Message, true, ".pbflags.v1.AuditLogEntry")],
    );
    check_message(
        ad,
        "AuditLogEntry",
        &[
            ("id", 1, Int64, false, ""),
            ("flag_id", 2, Str, false, ""),
            ("action", 3, Str, false, ""),
            ("old_value", 4, Message, false, value),
            ("new_value", 5, Message, false, value),
            ("actor", 6, Str, false, ""),
            (
                "created_at",
                7,
                Message,
                false,
                ".google.protobuf.Timestamp",
            ),
        ],
    );
    let s = &f.service[0];
    assert_eq!(s.name(), "FlagAdminService");
    let methods: Vec<String> = s
        .method
        .iter()
        .map(|m| {
            assert!(!m.client_streaming() && !m.server_streaming());
            assert_eq!(m.input_type(), format!(".pbflags.v1.{}Request", m.name()));
            assert_eq!(m.output_type(), format!(".pbflags.v1.{}Response", m.name()));
            m.name().to_owned()
        })
        .collect();
    assert_eq!(
        methods,
        [
            "ListFeatures",
            "GetFlag",
            "UpdateFlagState",
            "SetFlagOverride",
            "RemoveFlagOverride",
            "GetAuditLog"
        ]
    );
}
