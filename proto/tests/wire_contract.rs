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
