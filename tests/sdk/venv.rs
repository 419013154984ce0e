//! The official SDK's Python environment, shared by the tests that drive it (`sdk_fidelity.rs`,
//! `sdk_streaming_cpu.rs`): a virtual environment under `target/sdk-venv` (or `KEDGE_SDK_VENV`) with the pinned
//! `tests/sdk/requirements.txt`, made on first use.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

use kusto_devserver::tools;

pub const INSTALL_HINT: &str =
    "install Python 3 with venv and pip (Debian: apt-get install python3 python3-venv python3-pip)";

pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

/// Env `KEDGE_SDK_VENV`, else `target/sdk-venv` of this workspace (where `tests/run-all.sh` makes it).
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("KEDGE_SDK_VENV") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv"),
    }
}

/// The venv is there already, or python3 can make one (venv and ensurepip, which Debian splits off into
/// python3-venv).
pub fn python_requirements() -> Result<(), String> {
    let marker = venv_dir().join("kedge-requirements.txt");
    if venv_dir().join("bin/python").exists() && marker.exists() {
        return Ok(());
    }
    if tools::runs("python3", &["-c", "import venv, ensurepip"]) {
        Ok(())
    } else {
        Err(format!("python3 cannot make a venv: {INSTALL_HINT}"))
    }
}

/// Runs `cmd`, failing the test with its output unless it succeeds; returns its stdout.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The venv's python, creating the venv and installing the pinned requirements if they are not there yet.
/// A copy of the requirements file inside the venv marks a finished install (`tests/run-all.sh` writes the
/// same marker).
pub fn venv_python() -> PathBuf {
    let venv = venv_dir();
    let python = venv.join("bin/python");
    let reqs_path = sdk_dir().join("requirements.txt");
    let reqs = std::fs::read_to_string(&reqs_path).unwrap();
    let marker = venv.join("kedge-requirements.txt");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == reqs) && python.exists() {
        return python;
    }
    if !python.exists() {
        let out = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .output()
            .unwrap_or_else(|e| panic!("python3: {e} ({INSTALL_HINT})"));
        if !out.status.success() {
            // Half made (Debian without python3-venv leaves one without pip): start over next time.
            let _ = std::fs::remove_dir_all(&venv);
            panic!(
                "python3 -m venv failed ({INSTALL_HINT}):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&reqs_path),
        "pip install -r tests/sdk/requirements.txt",
    );
    std::fs::write(&marker, reqs).unwrap();
    python
}
