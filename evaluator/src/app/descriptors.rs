//! `pbflags-evaluator descriptors`: print the flags of a descriptor set.

use std::fmt::Write as _;

use pbflags_proto::v1::{FlagValue, flag_value};

use crate::core::descriptor::type_name;
use crate::core::registry::Snapshot;

/// Renders `value` for people: `true`, `"daily"`, `3`, `0.75`, or `-` when absent.
pub fn display_value(value: Option<&FlagValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => "-".to_owned(),
        Some(flag_value::Value::BoolValue(b)) => b.to_string(),
        Some(flag_value::Value::StringValue(s)) => format!("{s:?}"),
        Some(flag_value::Value::Int64Value(i)) => i.to_string(),
        Some(flag_value::Value::DoubleValue(d)) => d.to_string(),
    }
}

/// A table (or JSON lines) of the snapshot's flags, followed by its hash and warnings.
pub fn render(snapshot: &Snapshot, json: bool) -> String {
    let mut out = String::new();
    if json {
        for f in snapshot.flags() {
            let _ = writeln!(
                out,
                "{{\"flag_id\":{:?},\"name\":{:?},\"type\":{:?},\"layer\":{:?},\"default\":{:?}}}",
                f.flag_id,
                f.name,
                type_name(f.flag_type),
                f.layer,
                display_value(f.default.as_ref())
            );
        }
        return out;
    }
    let _ = writeln!(
        out,
        "{:<32} {:<24} {:<7} {:<8} DEFAULT",
        "FLAG", "NAME", "TYPE", "LAYER"
    );
    for f in snapshot.flags() {
        let layer = if f.is_global_layer() {
            "global"
        } else {
            f.layer.as_str()
        };
        let _ = writeln!(
            out,
            "{:<32} {:<24} {:<7} {:<8} {}",
            f.flag_id,
            f.name,
            type_name(f.flag_type),
            layer,
            display_value(f.default.as_ref())
        );
    }
    let _ = writeln!(out, "{} flags, sha256 {}", snapshot.len(), snapshot.hash());
    for w in snapshot.warnings() {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_example_flag_with_its_default() {
        let s = Snapshot::from_bytes(pbflags_proto::EXAMPLE_DESCRIPTORS).expect("example");
        let text = render(&s, false);
        assert!(text.contains("notifications/1"));
        assert!(text.contains("email_enabled"));
        assert!(text.contains("\"daily\""));
        assert!(text.contains("0.75"));
        assert!(text.contains("4 flags, sha256 "));
    }

    #[test]
    fn json_lines_have_one_object_per_flag() {
        let s = Snapshot::from_bytes(pbflags_proto::EXAMPLE_DESCRIPTORS).expect("example");
        let text = render(&s, true);
        assert_eq!(text.lines().count(), 4);
        assert!(text.lines().all(|l| l.starts_with('{') && l.ends_with('}')));
    }
}
