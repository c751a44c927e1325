//! Writes JSON values as block-style YAML that people can read and edit: multi-line text as
//! literal blocks (`|`), simple words unquoted, everything else as a JSON string (which is
//! also a valid YAML double-quoted scalar). Only what the scenario format needs; the loader
//! reads every output back in the synthesis pipeline, so a slip here cannot go unnoticed.

use serde_json::{Map, Value};

/// The YAML text of a JSON value (a mapping at the top, as scenario files are).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize) {
    for (key, value) in map {
        pad(out, indent);
        out.push_str(&key_text(key));
        out.push(':');
        write_after_indicator(out, value, indent);
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                // First entry on the dash's line, the rest aligned under it.
                let mut entries = map.iter();
                if let Some((key, value)) = entries.next() {
                    out.push(' ');
                    out.push_str(&key_text(key));
                    out.push(':');
                    write_after_indicator(out, value, indent + 2);
                }
                for (key, value) in entries {
                    pad(out, indent + 2);
                    out.push_str(&key_text(key));
                    out.push(':');
                    write_after_indicator(out, value, indent + 2);
                }
            }
            other => write_after_indicator(out, other, indent),
        }
    }
}

/// Writes a value after `key:` or `-` at `indent`, ending the line(s).
fn write_after_indicator(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent + 2);
        }
        Value::String(text) if block_safe(text) => {
            let chomping = if !text.ends_with('\n') {
                "-"
            } else if text.ends_with("\n\n") {
                "+"
            } else {
                ""
            };
            out.push_str(" |");
            out.push_str(chomping);
            out.push('\n');
            let body = text.strip_suffix('\n').unwrap_or(text);
            for line in body.split('\n') {
                if !line.is_empty() {
                    pad(out, indent + 2);
                    out.push_str(line);
                }
                out.push('\n');
            }
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// Whether a string can be written as a literal block: multi-line, and nothing a block
/// scalar would change or need an indentation indicator for.
fn block_safe(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\n'])
        && !text.chars().any(|character| character.is_control() && character != '\n')
        && !text.split('\n').any(|line| !line.is_empty() && line.trim().is_empty())
}

fn inline(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) if plain_safe(text) => text.clone(),
        Value::String(text) => quoted(text),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// Words YAML readers may take for something other than a string.
fn reserved(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "nan" | "inf"
    )
}

/// Conservative: a letter first, then letters, digits, spaces and `_ . / ( ) , -`, no
/// trailing space. Such a scalar cannot be a number, a boolean, a comment or a mapping.
fn plain_safe(text: &str) -> bool {
    let mut characters = text.chars();
    characters.next().is_some_and(|first| first.is_ascii_alphabetic())
        && characters.all(|character| character.is_ascii_alphanumeric() || " _./(),-".contains(character))
        && !text.ends_with(' ')
        && !reserved(text)
}

fn key_text(key: &str) -> String {
    let mut characters = key.chars();
    let simple = characters.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || "_.-".contains(character))
        && !reserved(key);
    if simple { key.to_owned() } else { quoted(key) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tricky_values_read_back_unchanged() {
        let value = json!({
            "plain": "Release shipment SH-12 (today)",
            "multi": "line one\nline two\n",
            "multi_no_newline": "a\n  indented\n\nb",
            "multi_trailing": "x\n\n",
            "leading_space": " starts with a space\nsecond",
            "colon": "key: value # not a comment",
            "reserved": "yes",
            "number_like": "007",
            "empty": "",
            "tabbed": "a\tb\nc",
            "2025-12-04": {"nested": [1, 2.5, true, null, "x", {"a": [], "b": {}}, ["deep", "er"]]},
            "quote\"key": "unicode ✓ and \"quotes\"",
            "list_of_maps": [{"heading": "ROLE", "body": "You are X.\nMore.\n", "scope": "once"}],
            "empty_list": [],
            "empty_map": {}
        });
        let text = to_yaml(&value);
        let back = crate::scenario::yaml_to_json(&text).unwrap();
        assert_eq!(back, value, "{text}");
        assert!(text.contains("multi: |\n  line one\n  line two\n"), "{text}");
        assert!(text.contains("plain: Release shipment SH-12 (today)\n"), "{text}");
        assert!(text.contains("reserved: \"yes\"\n"), "{text}");
    }
}
