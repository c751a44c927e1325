//! Tidy checks: documentation keeps up with the code.

use std::path::Path;

use serde_json::Value;

use crate::support::repo_root;

/// Every field the scenario loader accepts, from the format's JSON Schema.
fn schema_fields(schema: &Value, root: &Value, fields: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                let name = reference.trim_start_matches("#/$defs/");
                if let Some(definition) = root.get("$defs").and_then(|defs| defs.get(name))
                    && !fields.contains(&format!("#{name}")) {
                        fields.push(format!("#{name}"));
                        schema_fields(definition, root, fields);
                    }
            }
            if let Some(Value::Object(properties)) = map.get("properties") {
                for (name, property) in properties {
                    fields.push(name.clone());
                    schema_fields(property, root, fields);
                }
            }
            for key in ["items", "anyOf", "oneOf", "allOf"] {
                if let Some(value) = map.get(key) {
                    schema_fields(value, root, fields);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| schema_fields(item, root, fields)),
        _ => {}
    }
}

#[test]
fn the_format_doc_names_every_field() {
    let schema = dilemma::scenario::format_schema();
    let mut fields = Vec::new();
    schema_fields(schema, schema, &mut fields);
    fields.retain(|field| !field.starts_with('#'));
    assert!(fields.len() > 25, "found only {fields:?}");
    let doc = std::fs::read_to_string(repo_root().join("docs/scenario-format.md")).unwrap();
    let missing: Vec<_> = fields.iter().filter(|field| !doc.contains(&format!("`{field}`"))).collect();
    assert!(missing.is_empty(), "docs/scenario-format.md does not mention {missing:?}");
}

fn rust_files(folder: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(folder).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_module_has_a_doc_comment() {
    let mut files = Vec::new();
    for krate in ["dilemma", "dilemma-local", "dilemma-cli"] {
        rust_files(&repo_root().join("crates").join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 15);
    let undocumented: Vec<_> = files
        .iter()
        .filter(|file| !std::fs::read_to_string(file).unwrap().trim_start().starts_with("//!"))
        .collect();
    assert!(undocumented.is_empty(), "modules without a `//!` doc: {undocumented:?}");
}

#[test]
fn the_library_never_prints() {
    let mut files = Vec::new();
    rust_files(&repo_root().join("crates/dilemma/src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in ["println!(", "eprintln!(", "print!(", "eprint!(", "dbg!("] {
            assert!(!text.contains(needle), "{} uses {needle}", file.display());
        }
    }
}

#[test]
fn architecture_md_maps_every_library_module() {
    let architecture = std::fs::read_to_string(repo_root().join("ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(repo_root().join("crates/dilemma/src")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".rs").to_owned();
        if name == "lib" {
            continue;
        }
        assert!(architecture.contains(&format!("`{name}")), "ARCHITECTURE.md does not mention the module `{name}`");
    }
}
