//! The README's configuration table is the user's reference: every key the library takes is in it, with its
//! default, and it lists no key the library does not take.

fn all_keys() -> Vec<(&'static str, &'static str)> {
    let core = kusto_edge_core::config::KEYS
        .iter()
        .map(|k| (k.key, k.default));
    let auth = kusto_edge_core::auth::AUTH_KEYS
        .iter()
        .map(|&(key, default, _)| (key, default));
    core.chain(auth).collect()
}

#[test]
fn readme_documents_every_config_key_with_its_default() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    let all = all_keys();
    for &(key, default) in &all {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("README has no row for config key {key}"));
        let shown = default.trim_start_matches('(').trim_end_matches(')');
        assert!(
            row.contains(shown),
            "README row for {key} does not show the default {default}: {row}"
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.contains('.') || r.contains("connection_string"))
    {
        let key = r.trim_start_matches("| `").split('`').next().unwrap();
        if key.contains(' ') || key.starts_with('-') {
            continue; // not a config row
        }
        assert!(
            all.iter().any(|&(k, _)| k == key),
            "README documents {key}, which the library does not know"
        );
    }
}

#[test]
fn every_documented_key_is_accepted_with_its_default_value() {
    for (key, default) in all_keys() {
        if default.starts_with('(') || default.starts_with('$') || key == "url" {
            continue;
        }
        let mut c = kusto_edge_core::Config::default();
        c.set(key, default)
            .unwrap_or_else(|e| panic!("{key} = {default}: {e}"));
    }
}
