//! The committed C header is exactly what cbindgen makes of src/ffi: a stale header fails here.

use std::path::Path;

fn generate() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let config =
        cbindgen::Config::from_file(Path::new(root).join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen could not read src/ffi")
        .write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}

#[test]
fn committed_header_is_fresh() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/kusto_edge.h");
    let fresh = generate();
    if std::env::var_os("KEDGE_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/kusto_edge.h is stale: regenerate it with `KEDGE_BLESS=1 cargo test --test header` and commit it"
    );
}

#[test]
fn every_exported_symbol_is_prefixed() {
    let header = generate();
    let code = header
        .lines()
        .map(str::trim)
        .filter(|l| !(l.starts_with("//") || l.starts_with("/*") || l.starts_with('*')));
    let mut checked = 0;
    for line in code {
        // Function declarations: `type name(`; typedefs and tags: `typedef struct name`, `enum name`.
        let name = if line.starts_with("typedef") && line.contains("(*") {
            line.split("(*").nth(1).and_then(|s| s.split(')').next())
        } else if let Some(rest) = line
            .strip_prefix("typedef struct ")
            .or_else(|| line.strip_prefix("enum "))
        {
            rest.split_whitespace().next()
        } else if !line.starts_with('#') && line.contains('(') {
            line.split('(')
                .next()
                .and_then(|s| s.split_whitespace().last())
                .map(|s| s.trim_start_matches('*'))
        } else {
            None
        };
        if let Some(name) = name {
            checked += 1;
            assert!(
                name.starts_with("kedge_"),
                "C symbol without the kedge_ prefix: {name} in `{line}`"
            );
        }
    }
    assert!(
        checked > 20,
        "the header parse found only {checked} symbols"
    );
}
