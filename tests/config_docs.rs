//! docs/configuration.md is checked against the embedded defaults: every key of
//! config/twinmq.toml (set or shown commented out) has a row with the same default, and
//! every documented key exists.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Value};
use figment::Provider;
use twinmq::config::DEFAULT_CONFIG_TOML;

/// What the defaults file says about a key: its literal value, or `None` when the key is
/// shown commented out (unset by default).
fn keys_in_defaults() -> BTreeMap<String, Option<String>> {
    let mut keys = BTreeMap::new();
    let mut section = String::new();
    for line in DEFAULT_CONFIG_TOML.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{header}.");
            continue;
        }
        let (text, commented) = match line.strip_prefix("# ") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let Some((key, value)) = text.split_once(" = ") else {
            continue;
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let full = format!("{section}{key}");
        keys.insert(full, (!commented).then(|| value.trim().to_string()));
    }
    keys
}

fn flatten(prefix: &str, dict: &Dict, out: &mut Vec<String>) {
    for (key, value) in dict {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Dict(_, inner) => flatten(&full, inner, out),
            _ => out.push(full),
        }
    }
}

/// `key -> default column` for every table row of the docs whose first cell is a key.
fn rows_in_docs(doc: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        if let Some(key) = cells[1].strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
            rows.insert(key.to_string(), cells[2].to_string());
        }
    }
    rows
}

fn docs() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    std::fs::read_to_string(path).expect("docs/configuration.md")
}

#[test]
fn the_line_scan_sees_every_parsed_key() {
    let data = Toml::string(DEFAULT_CONFIG_TOML)
        .data()
        .expect("defaults parse");
    let dict = data.values().next().expect("one profile");
    let mut parsed = Vec::new();
    flatten("", dict, &mut parsed);
    let scanned = keys_in_defaults();
    for key in &parsed {
        assert!(
            matches!(scanned.get(key), Some(Some(_))),
            "{key} is set in the defaults but the scan missed it"
        );
    }
    let set = scanned.values().filter(|v| v.is_some()).count();
    assert_eq!(set, parsed.len(), "no extra keys scanned");
}

#[test]
fn every_key_in_the_defaults_is_documented_with_its_default() {
    let doc = docs();
    let rows = rows_in_docs(&doc);
    let keys = keys_in_defaults();
    assert!(keys.len() > 40, "scanned {} keys", keys.len());
    for (key, default) in &keys {
        let Some(column) = rows.get(key) else {
            panic!("{key} is not documented in docs/configuration.md");
        };
        match default {
            Some(value) => assert_eq!(column, &format!("`{value}`"), "default of {key}"),
            None => assert_eq!(column, "unset", "default of optional {key}"),
        }
    }
}

#[test]
fn every_documented_key_exists() {
    let keys = keys_in_defaults();
    for key in rows_in_docs(&docs()).keys() {
        assert!(
            keys.contains_key(key),
            "docs describe {key}, which the defaults lack"
        );
    }
}
