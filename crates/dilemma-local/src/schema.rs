//! JSON Schemas for constrained decoding: the tool-call schema, and the tightening applied to
//! every schema before llguidance compiles it.
//!
//! A small model under a grammar constraint never has to stop: inside an unbounded JSON string
//! every token but the closing quote is allowed, and a 135M model happily writes the same
//! phrase until `max_tokens` runs out, which leaves truncated, unparseable JSON. The same goes
//! for unbounded arrays, undeclared extra properties and free whitespace between tokens. So
//! before compiling, [`tighten`] bounds them. Every bound only *removes* documents from the
//! schema's language, so whatever the model produces still validates against the caller's
//! original schema.

use dilemma::chat::ToolSpec;
use serde_json::{Map, Value, json};

/// `maxLength` given to string schemas that have none (characters). Long enough for a
/// sentence or two of reasoning or an email body, short enough that a looping model is cut
/// off after about 75 tokens rather than at `max_tokens`.
pub const DEFAULT_MAX_STRING_LENGTH: u64 = 300;

/// `maxItems` given to array schemas that have none.
pub const DEFAULT_MAX_ITEMS: u64 = 16;

/// Keywords whose values are data, not subschemas: tightening must not rewrite them.
const DATA_KEYWORDS: [&str; 5] = ["const", "enum", "default", "examples", "example"];

/// Prepares a caller's schema for llguidance: bounds strings, arrays and extra properties
/// (see the module docs) and fixes the output layout (see [`with_layout`]).
pub fn tighten(mut schema: Value) -> Value {
    bound(&mut schema);
    with_layout(schema)
}

/// The schema of one call of one of `tools`: `{"tool": NAME, "arguments": PARAMETERS}`.
///
/// `tool` comes first so that the model picks the tool before writing its arguments.
pub fn tool_call_schema(tools: &[ToolSpec]) -> Value {
    let alternatives: Vec<Value> = tools
        .iter()
        .map(|tool| {
            let arguments = match &tool.parameters {
                // No schema: the tool takes no arguments.
                Value::Null => json!({"type": "object", "additionalProperties": false}),
                Value::Object(map) if map.is_empty() => json!({"type": "object", "additionalProperties": false}),
                parameters => parameters.clone(),
            };
            json!({
                "type": "object",
                "properties": {"tool": {"const": tool.name}, "arguments": arguments},
                "required": ["tool", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    json!({ "anyOf": alternatives })
}

/// Adds llguidance's JSON layout options unless the schema sets its own (`x-guidance`).
///
/// - Fixed separators (`", "`, `": "`) instead of free whitespace: otherwise the model can
///   spend its whole budget on newlines and indentation, and a fixed layout lets
///   [`to_spaced_json`] reproduce the generated text exactly when a tool call comes back as
///   history, so the KV cache prefix survives.
/// - `coerce_one_of`: llguidance refuses `oneOf` otherwise, and schemars emits it for enums
///   with data. Treated as `anyOf`, which can only matter when alternatives overlap.
fn with_layout(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema
        && !map.contains_key("x-guidance")
    {
        map.insert(
            "x-guidance".to_owned(),
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "coerce_one_of": true,
            }),
        );
    }
    schema
}

/// Bounds strings and arrays and closes objects with declared properties, recursively.
fn bound(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if has_type(map, "string")
                && !map.contains_key("maxLength")
                && !map.contains_key("enum")
                && !map.contains_key("const")
            {
                let min = map.get("minLength").and_then(Value::as_u64).unwrap_or(0);
                map.insert("maxLength".to_owned(), json!(min.max(DEFAULT_MAX_STRING_LENGTH)));
            }
            if has_type(map, "array") && !map.contains_key("maxItems") {
                let min = map.get("minItems").and_then(Value::as_u64).unwrap_or(0);
                map.insert("maxItems".to_owned(), json!(min.max(DEFAULT_MAX_ITEMS)));
            }
            if map.get("properties").is_some_and(Value::is_object)
                && !map.contains_key("additionalProperties")
                && !map.contains_key("patternProperties")
                && !map.contains_key("unevaluatedProperties")
            {
                map.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            for (key, child) in map.iter_mut() {
                if !DATA_KEYWORDS.contains(&key.as_str()) {
                    bound(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound),
        _ => {}
    }
}

/// Whether the schema object's `type` is (or includes) `name`. A property *named* `type`
/// inside `properties` holds an object, not a string, so it never matches.
fn has_type(map: &Map<String, Value>, name: &str) -> bool {
    match map.get("type") {
        Some(Value::String(kind)) => kind == name,
        Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == name),
        _ => false,
    }
}

/// Writes JSON in the layout the constraint imposes (`{"a": 1, "b": [1, 2]}`), so that an
/// assistant tool call replayed as history tokenises exactly like the generated text.
pub fn to_spaced_json(value: &Value) -> String {
    let mut out = String::new();
    write_spaced(value, &mut out);
    out
}

fn write_spaced(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_spaced(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_spaced(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighten_bounds_nested_strings_and_arrays_but_not_data() {
        let schema = json!({
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "tags": {"type": "array", "items": {"type": ["string", "null"]}, "minItems": 20},
                "kind": {"enum": [{"type": "string"}]},
                "long": {"type": "string", "minLength": 500},
                "short": {"type": "string", "maxLength": 5}
            }
        });
        let tightened = tighten(schema);
        let props = &tightened["properties"];
        assert_eq!(props["type"]["maxLength"], json!(DEFAULT_MAX_STRING_LENGTH));
        assert_eq!(props["tags"]["maxItems"], json!(20));
        assert_eq!(props["tags"]["items"]["maxLength"], json!(DEFAULT_MAX_STRING_LENGTH));
        assert_eq!(props["kind"]["enum"][0], json!({"type": "string"}));
        assert_eq!(props["long"]["maxLength"], json!(500));
        assert_eq!(props["short"]["maxLength"], json!(5));
        assert_eq!(tightened["additionalProperties"], json!(false));
        assert_eq!(tightened["x-guidance"]["whitespace_flexible"], json!(false));
    }

    #[test]
    fn tool_call_schema_has_one_alternative_per_tool() {
        let tools = vec![
            ToolSpec { name: "a".into(), description: String::new(), parameters: Value::Null },
            ToolSpec {
                name: "b".into(),
                description: String::new(),
                parameters: json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
            },
        ];
        let schema = tool_call_schema(&tools);
        let alternatives = schema["anyOf"].as_array().map(Vec::len);
        assert_eq!(alternatives, Some(2));
        assert_eq!(schema["anyOf"][1]["properties"]["tool"], json!({"const": "b"}));
        assert_eq!(schema["anyOf"][0]["properties"]["arguments"]["additionalProperties"], json!(false));
    }

    #[test]
    fn spaced_json_matches_constrained_layout() {
        let value = json!({"tool": "t", "arguments": {"a": [1, "x\"y"], "b": {}}});
        assert_eq!(to_spaced_json(&value), r#"{"tool": "t", "arguments": {"a": [1, "x\"y"], "b": {}}}"#);
    }
}
