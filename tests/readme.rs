//! The README's configuration table is the user's reference: every key the library takes is in it, with its
//! default, and it lists no key the library does not take.

#[test]
fn readme_documents_every_config_key_with_its_default() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    for k in kusto_edge::config::KEYS {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| `{}` |", k.key)))
            .unwrap_or_else(|| panic!("README has no row for config key {}", k.key));
        let default = k.default.trim_start_matches('(').trim_end_matches(')');
        assert!(
            row.contains(default),
            "README row for {} does not show the default {}: {row}",
            k.key,
            k.default
        );
    }
    for r in rows {
        let key = r.trim_start_matches("| `").split('`').next().unwrap();
        assert!(
            kusto_edge::config::KEYS.iter().any(|k| k.key == key),
            "README documents {key}, which the library does not know"
        );
    }
}

#[test]
fn every_documented_key_is_accepted_with_its_default_value() {
    for k in kusto_edge::config::KEYS {
        if k.default.starts_with('(') || k.key == "url" {
            continue;
        }
        let mut c = kusto_edge::Config::default();
        c.set(k.key, k.default)
            .unwrap_or_else(|e| panic!("{} = {}: {e}", k.key, k.default));
    }
}
