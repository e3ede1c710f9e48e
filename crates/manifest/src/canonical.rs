//! Canonical JSON: compact, object keys sorted bytewise at every level, independent of whether
//! serde_json was built with `preserve_order`. Input of the content hash.

use serde::Serialize;
use serde_json::Value;

/// Serialises `value` canonically. Values that cannot become JSON (non-string map keys) come out as
/// `null`; the manifest types never produce them.
pub(crate) fn to_canonical_json<T: Serialize>(value: &T) -> String {
    let mut out = String::new();
    match serde_json::to_value(value) {
        Ok(v) => write_value(&v, &mut out),
        Err(_) => out.push_str("null"),
    }
    out
}

fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(v, out);
            }
            out.push(']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut String) {
    // Scalars always serialise; `null` is an unreachable fallback.
    out.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_at_every_level_and_is_compact() {
        let v = json!({"b": 1, "a": {"d": [true, null, {"z": 1, "y": "x\"q"}], "c": 1.5}});
        assert_eq!(
            to_canonical_json(&v),
            r#"{"a":{"c":1.5,"d":[true,null,{"y":"x\"q","z":1}]},"b":1}"#
        );
    }
}
