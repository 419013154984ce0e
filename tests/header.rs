//! The committed C header is exactly what cbindgen makes of src/lib.rs, plus the version macros made from Cargo's
//! version: a stale header (or a version bump without regenerating it) fails here.

use std::path::Path;

/// `KEDGE_VERSION_*`, from the package version, so that the header's macros and `kedge_version()` (which
/// returns `CARGO_PKG_VERSION`) cannot disagree. cbindgen cannot compute them from src/lib.rs (it does not expand
/// `env!`), so they go in as `after_includes`.
fn version_macros() -> String {
    format!(
        "\n// The version of the library this header belongs to; kedge_version() returns the same as a string.\n\
         #define KEDGE_VERSION_MAJOR {}\n\
         #define KEDGE_VERSION_MINOR {}\n\
         #define KEDGE_VERSION_PATCH {}\n\
         #define KEDGE_VERSION_STRING \"{}\"",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
    )
}

fn generate() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut config =
        cbindgen::Config::from_file(Path::new(root).join("cbindgen.toml")).expect("cbindgen.toml");
    assert!(
        config.after_includes.is_none(),
        "cbindgen.toml sets after_includes, where the version macros go: merge them here"
    );
    config.after_includes = Some(version_macros());
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen could not read src/lib.rs")
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

/// The value of `#define name value` in the header.
fn define<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.lines().find_map(|l| {
        let rest = l.strip_prefix("#define ")?.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim())
    })
}

#[test]
fn committed_header_version_macros_are_cargo_s_version() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/kusto_edge.h");
    let header = std::fs::read_to_string(&path).expect("include/kusto_edge.h");
    let want = [
        (
            "KEDGE_VERSION_MAJOR",
            env!("CARGO_PKG_VERSION_MAJOR").to_owned(),
        ),
        (
            "KEDGE_VERSION_MINOR",
            env!("CARGO_PKG_VERSION_MINOR").to_owned(),
        ),
        (
            "KEDGE_VERSION_PATCH",
            env!("CARGO_PKG_VERSION_PATCH").to_owned(),
        ),
        (
            "KEDGE_VERSION_STRING",
            format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        ),
    ];
    for (name, value) in want {
        assert_eq!(
            define(&header, name),
            Some(value.as_str()),
            "{name} in include/kusto_edge.h is not Cargo's version: regenerate it with `KEDGE_BLESS=1 cargo test --test header`"
        );
    }
}
