//! The outside tools some tests need (valgrind, the ARM cross toolchains and qemu, Node.js for Azurite, Python
//! for the SDK comparison), and the one rule for a missing one: `bash tests/run-all.sh` (the README's test
//! command, and CI) installs them all and sets `KEDGE_REQUIRE_TOOLS=1`, so there a missing tool **fails** the
//! test; a contributor's plain `cargo test` without the tool gets a `skipped: ... install ...` line on the
//! terminal instead and the test returns early.

use std::io::Write;
use std::process::{Command, Stdio};

/// What to run to get every tool.
pub const RUN_ALL: &str = "`bash tests/run-all.sh` installs every tool the tests need";

/// True when `KEDGE_REQUIRE_TOOLS` is set to anything but empty or `0` (tests/run-all.sh sets it to 1).
pub fn tools_required() -> bool {
    std::env::var("KEDGE_REQUIRE_TOOLS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// True when `program --version` (or the given arguments) runs and exits 0.
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(if args.is_empty() {
            &["--version"]
        } else {
            args
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `Ok` when `program` runs, else what is missing and the Debian package that has it.
pub fn need(program: &str, package: &str) -> Result<(), String> {
    if runs(program, &[]) {
        Ok(())
    } else {
        Err(format!(
            "{program} not found: install the Debian package {package}"
        ))
    }
}

/// Whether the calling test may go on. With everything there: true. Otherwise, with `KEDGE_REQUIRE_TOOLS=1`,
/// it panics (the test fails) with what to install; without, it prints `skipped: <test>: <what to install>`
/// straight to stderr (past the test harness's capture, so the line shows even for a passing test) and returns
/// false: the test then returns at once.
pub fn available_or_skip(requirements: Result<(), String>) -> bool {
    let Err(missing) = requirements else {
        return true;
    };
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    if tools_required() {
        panic!("{missing} (KEDGE_REQUIRE_TOOLS is set: a missing tool fails; {RUN_ALL})");
    }
    // One write, so that the line is not cut by the harness's own output on stdout.
    let line = format!(
        "skipped: {test}: {missing} ({RUN_ALL}; with KEDGE_REQUIRE_TOOLS=1 this is a failure)\n"
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    false
}

/// Node.js (and npm, unless Azurite is already installed where the tests look for it), for
/// [`crate::azurite::Azurite`].
pub fn azurite_requirements() -> Result<(), String> {
    need("node", "nodejs")?;
    let installed = crate::azurite::Azurite::install_dir()
        .join("node_modules/azurite/dist/src/azurite.js")
        .is_file();
    if installed {
        Ok(())
    } else {
        need("npm", "npm").map_err(|e| format!("{e} (Azurite is installed with npm)"))
    }
}

/// For tests that start Azurite: [`available_or_skip`] of [`azurite_requirements`].
pub fn azurite_or_skip() -> bool {
    available_or_skip(azurite_requirements())
}
