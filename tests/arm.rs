//! The library as it ships to the gateways: cross-compiled for armv7 (32-bit) and aarch64 with the release profile,
//! linked into the C examples and C tests by each target's cross gcc, and run under qemu user-mode emulation
//! against an in-process HTTPS test endpoint on loopback. Also: the stripped size of `kedge-send` against its
//! budget, the header on ARM, and the firmware build integration (pkg-config file, CMake example).
//!
//! Each target's library is built once per test process with
//! `cargo rustc --release --lib --target T -- --print native-static-libs`
//! into the usual target directory (`CARGO_TARGET_DIR` if set, else `<crate>/target`): the firmware build the
//! README gives (`cargo build --release --target T`; the root crate is a staticlib only, so the release profile's
//! LTO applies), plus rustc printing the system libraries the archive needs, which are what the programs are
//! linked with and what the Makefile, `kusto_edge.pc.in`, the CMake example and the README must say.
//! Missing cross tools or Rust targets skip a test with a `skipped:` line naming what to install, or fail it when
//! `KEDGE_REQUIRE_TOOLS=1` (`bash tests/run-all.sh` installs them all and sets it).

use std::collections::{HashMap, HashSet};
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kusto_devserver::tools;

mod programs;
use programs::*;

/// The size budget of `kedge-send` for armv7, linked with the release profile and stripped: the library plus a
/// small C program, dynamically linked against glibc. README "Cross-compiling for ARM" refers to this constant.
pub const KEDGE_SEND_ARMV7_BUDGET_BYTES: u64 = 1536 * 1024; // 1.5 MiB

const INSTALL_HINT: &str = "`bash tests/run-all.sh` installs every tool the tests need";

/// A gateway target: the Rust triple and the Debian cross toolchain and emulator for it, and the library's
/// cargo features for this build of it.
struct Cross {
    /// Names this build (target and feature set): its build directory and messages.
    name: &'static str,
    triple: &'static str,
    /// Feature arguments for cargo: none for the default build.
    cargo_features: &'static [&'static str],
    /// GNU triple: prefix of the cross tools and name of the sysroot under /usr.
    gnu: &'static str,
    /// The user-mode emulator that runs its programs here (None: the build machine's own target).
    qemu: Option<&'static str>,
    /// Debian packages: the cross gcc (with binutils) and the target's glibc.
    gcc_packages: &'static str,
    gxx_package: &'static str,
    /// ELF e_machine of the target's programs.
    elf_machine: u16,
}

const ARMV7: Cross = Cross {
    name: "armv7",
    triple: "armv7-unknown-linux-gnueabihf",
    cargo_features: &[],
    gnu: "arm-linux-gnueabihf",
    qemu: Some("qemu-arm-static"),
    gcc_packages: "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross",
    gxx_package: "g++-arm-linux-gnueabihf",
    elf_machine: 40, // EM_ARM
};

/// armv7 with the minimal feature set: streaming and the token sources that need no code of their own (static
/// token, token callback); Entra ID and managed identity compiled out.
const ARMV7_MINIMAL: Cross = Cross {
    name: "armv7-minimal",
    cargo_features: &["--no-default-features"],
    ..ARMV7
};

/// ARMv7 with NEON whose standard library is Thumb-2 too (rustup ships it built for Thumb): same cross gcc,
/// sysroot and emulator as armv7.
const THUMBV7NEON: Cross = Cross {
    name: "thumbv7neon",
    triple: "thumbv7neon-unknown-linux-gnueabihf",
    ..ARMV7
};

const AARCH64: Cross = Cross {
    name: "aarch64",
    triple: "aarch64-unknown-linux-gnu",
    cargo_features: &[],
    gnu: "aarch64-linux-gnu",
    qemu: Some("qemu-aarch64-static"),
    gcc_packages: "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
    gxx_package: "g++-aarch64-linux-gnu",
    elf_machine: 183, // EM_AARCH64
};

/// The build machine, built like the gateway targets (LTO applies): for the size table.
const X86_64: Cross = Cross {
    name: "x86_64",
    triple: "x86_64-unknown-linux-gnu",
    cargo_features: &[],
    gnu: "x86_64-linux-gnu",
    qemu: None,
    gcc_packages: "gcc binutils",
    gxx_package: "g++",
    elf_machine: 62, // EM_X86_64
};

impl Cross {
    fn tool(&self, name: &str) -> String {
        format!("{}-{name}", self.gnu)
    }
    fn emulator(&self) -> &'static str {
        self.qemu.expect("programs of an emulated target")
    }
    fn sysroot(&self) -> PathBuf {
        PathBuf::from("/usr").join(self.gnu)
    }
    /// What is missing to build and run this target's programs here, if anything: the cross toolchain, the
    /// target's glibc, the emulator, make and the Rust target (rustup's standard library for it).
    fn requirements(&self) -> Result<(), String> {
        for tool in ["gcc", "ar", "strip", "nm", "size"] {
            tools::need(&self.tool(tool), self.gcc_packages)?;
        }
        tools::need("make", "make")?;
        if let Some(qemu) = self.qemu {
            tools::need(qemu, "qemu-user-static")?;
            let loader = match self.gnu {
                "arm-linux-gnueabihf" => "lib/ld-linux-armhf.so.3",
                _ => "lib/ld-linux-aarch64.so.1",
            };
            if !self.sysroot().join(loader).exists() {
                return Err(format!(
                    "{} has no {loader}: install the Debian packages {}",
                    self.sysroot().display(),
                    self.gcc_packages
                ));
            }
        }
        rust_target_installed(self.triple)
    }

    /// Whether the calling test may go on: skips it (plain `cargo test`) or fails it (`KEDGE_REQUIRE_TOOLS=1`, as
    /// `bash tests/run-all.sh` sets) when something is missing.
    fn available(&self) -> bool {
        tools::available_or_skip(self.requirements())
    }
}

/// rustup's standard library for `triple` is where rustc looks for it.
fn rust_target_installed(triple: &str) -> Result<(), String> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "target-libdir", "--target", triple])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let has_std = out.status.success()
        && fs::read_dir(&dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("libstd-"))
            })
        });
    if has_std {
        Ok(())
    } else {
        Err(format!(
            "the Rust target {triple} is not installed: run rustup target add {triple}"
        ))
    }
}

fn output_of(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn stderr_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What one target's build produced.
struct Built {
    /// Directory holding libkusto_edge.a.
    lib_dir: PathBuf,
    /// Where `make` put the C programs.
    programs: PathBuf,
    /// The system libraries the static library needs, as rustc printed them (for the host: the Makefile's).
    native_libs: String,
}

/// The Makefile, run with the Makefile's own CFLAGS (-std=c99 -Wall -Wextra -Werror -pedantic): none from the
/// environment.
fn make_programs(vars: &[String], goals: &[&str]) -> Result<(), String> {
    let out = Command::new("make")
        .arg("-C")
        .arg(Path::new(MANIFEST_DIR).join("examples-c"))
        .args(vars)
        .args(goals)
        .env_remove("CFLAGS")
        .env_remove("LDFLAGS")
        .env_remove("MAKEFLAGS")
        .output()
        .map_err(|e| {
            format!("cannot run make: {e} (install the Debian package make; {INSTALL_HINT})")
        })?;
    if !out.status.success() {
        return Err(format!(
            "make {vars:?} failed (warnings are errors):\n{}",
            stderr_of(&out)
        ));
    }
    Ok(())
}

fn build_cross(c: &Cross) -> Result<Built, String> {
    let target = target_dir();
    // Builds of one target with different features write the same archive: each copies its own out before
    // the next build starts.
    static ARCHIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _archive = ARCHIVE.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = Command::new(env!("CARGO"))
        .args(["rustc", "--release", "--lib", "--target", c.triple])
        .args(c.cargo_features)
        .args(["--", "--print", "native-static-libs"])
        .current_dir(MANIFEST_DIR)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let log = String::from_utf8_lossy(&cargo.stderr).into_owned();
    if !cargo.status.success() {
        let hint = if log.contains("target may not be installed")
            || log.contains("can't find crate for `core`")
        {
            format!("\nrun: rustup target add {} ({INSTALL_HINT})", c.triple)
        } else {
            String::new()
        };
        return Err(format!(
            "cargo rustc --release --lib --target {} {} failed:\n{log}{hint}",
            c.triple,
            c.cargo_features.join(" ")
        ));
    }
    let native_libs = log
        .lines()
        .find_map(|l| {
            l.split_once("native-static-libs:")
                .map(|(_, libs)| libs.trim().to_owned())
        })
        .ok_or_else(|| {
            format!(
                "rustc printed no native-static-libs for {}:\n{log}",
                c.triple
            )
        })?;
    let programs = target.join(format!("c-build-{}", c.name));
    let lib_dir = programs.join("lib");
    fs::create_dir_all(&lib_dir).map_err(|e| format!("{}: {e}", lib_dir.display()))?;
    let archive = target
        .join(c.triple)
        .join("release")
        .join("libkusto_edge.a");
    fs::copy(&archive, lib_dir.join("libkusto_edge.a"))
        .map_err(|e| format!("copy {}: {e}", archive.display()))?;
    drop(_archive);
    make_programs(
        &[
            format!("CC={}", c.tool("gcc")),
            format!("AR={}", c.tool("ar")),
            format!("LIBDIR={}", lib_dir.display()),
            format!("BUILD={}", programs.display()),
            format!("NATIVE_LIBS={native_libs}"),
        ],
        &["check-lib", "all"],
    )?;
    Ok(Built {
        lib_dir,
        programs,
        native_libs,
    })
}

fn built(c: &Cross) -> &'static Built {
    static BUILDS: [OnceLock<Result<Built, String>>; 5] = [const { OnceLock::new() }; 5];
    let i = [&ARMV7, &ARMV7_MINIMAL, &THUMBV7NEON, &AARCH64, &X86_64]
        .iter()
        .position(|b| b.name == c.name)
        .expect("a build listed here");
    let cell = &BUILDS[i];
    match cell.get_or_init(|| {
        if let Err(missing) = c.requirements() {
            return Err(format!("{missing} ({INSTALL_HINT})"));
        }
        let started = Instant::now();
        let b = build_cross(c);
        eprintln!(
            "{}: library and C programs built in {:?}",
            c.name,
            started.elapsed()
        );
        b
    }) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn host_lib_dir() -> &'static Path {
    static HOST_BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match HOST_BUILT.get_or_init(build_host_lib) {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

/// `program` (an ARM executable) under user-mode qemu, with the target's glibc from its Debian sysroot.
fn emulated(c: &Cross, program: &Path) -> Command {
    assert!(program.is_file(), "{} was not built", program.display());
    assert_eq!(
        elf_machine(program),
        c.elf_machine,
        "{} is not a {} program",
        program.display(),
        c.triple
    );
    let mut cmd = Command::new(c.emulator());
    cmd.arg("-L").arg(c.sysroot()).arg(program);
    cmd
}

fn elf_machine(program: &Path) -> u16 {
    let bytes = fs::read(program).expect("read program");
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", program.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

fn api_robustness_passes(c: &Cross) {
    let b = built(c);
    let _g = serial();
    let scratch = Scratch::new(&format!("robustness-{}", c.name));
    let out = run(
        emulated(c, &b.programs.join("api_robustness")),
        None,
        &scratch,
        Duration::from_secs(180),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "api_robustness on {}: {}",
        c.triple,
        out.describe()
    );
    let last = out.stdout.lines().last().unwrap_or("");
    let (n, rest) = last.split_once(' ').unwrap_or(("", ""));
    let n: u32 = n.parse().unwrap_or(0);
    assert_eq!(
        rest,
        "passed, 0 failed",
        "unexpected last line: {}",
        out.describe()
    );
    assert!(n > 100, "only {n} checks ran: {}", out.describe());
    eprintln!(
        "{}: api_robustness, {n} checks, {:?} under {}",
        c.name,
        out.took,
        c.emulator()
    );
}

fn sensor_delivers_every_record(c: &Cross, program: &Path) {
    let _g = serial();
    let scratch = Scratch::new(&format!("sensor-{}", c.name));
    let server = tls_server(None);
    let ca = write_ca(&server, &scratch);
    let mut cmd = emulated(c, program);
    cmd.arg(server.url()).arg(&ca);
    let out = run(cmd, None, &scratch, Duration::from_secs(180));
    assert_eq!(
        out.status.code(),
        Some(0),
        "sensor on {}: {}",
        c.triple,
        out.describe()
    );
    assert_each_seq_once(&server.records("edge", "Telemetry"), 300);
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r.status == 200 && r.gzip_ok),
        "a request failed: {requests:?}"
    );
    assert!(
        out.stdout.contains("300 acknowledged"),
        "sensor's summary: {}",
        out.describe()
    );
    eprintln!(
        "{}: sensor, 300 records in {:?} under {}",
        c.name,
        out.took,
        c.emulator()
    );
}

const E2E_RECORDS: u64 = 20_000;

fn kedge_send_streams_every_record_exactly_once(c: &Cross) {
    let b = built(c);
    let _g = serial();
    let scratch = Scratch::new(&format!("e2e-{}", c.name));
    let server = tls_server(None);
    let ca = write_ca(&server, &scratch);
    let input = scratch.path("records.jsonl");
    write_records(&input, E2E_RECORDS);
    let mut cmd = emulated(c, &b.programs.join("kedge-send"));
    cmd.args([
        "--url",
        &server.url(),
        "--database",
        "db",
        "--table",
        "Telemetry",
    ])
    .arg("--ca-file")
    .arg(&ca)
    .args(["--batch-bytes", "262144"])
    .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(300));
    assert_eq!(
        out.status.code(),
        Some(0),
        "kedge-send on {}: {}",
        c.triple,
        out.describe()
    );
    assert_each_seq_once(&server.records("db", "Telemetry"), E2E_RECORDS);
    let requests = server.requests();
    assert!(
        requests.len() >= 8,
        "2 MB in batches of 256 KiB took only {} requests",
        requests.len()
    );
    let mut ids = HashSet::new();
    for r in &requests {
        assert!(
            r.status == 200 && r.gzip_ok,
            "request {} failed: {r:?}",
            r.client_request_id
        );
        assert!(
            ids.insert(r.client_request_id.clone()),
            "request id sent twice: {}",
            r.client_request_id
        );
    }
    assert!(
        out.stderr.contains(&format!(
            "{E2E_RECORDS} records ({E2E_RECORDS} acknowledged, 0 rejected)"
        )),
        "summary: {}",
        out.describe()
    );
    eprintln!(
        "{}: kedge-send, {E2E_RECORDS} records in {} requests, {:?} under {}: {}",
        c.name,
        requests.len(),
        out.took,
        c.emulator(),
        out.stderr.trim()
    );
}

/// The same tests for each target: `cargo test --test arm armv7::` runs one target's.
macro_rules! on_target {
    ($module:ident, $cross:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn api_robustness_gets_the_documented_code_for_every_argument_under_qemu() {
                if !$cross.available() {
                    return;
                }
                api_robustness_passes(&$cross);
            }

            #[test]
            fn sensor_example_delivers_every_record_over_https_under_qemu() {
                if !$cross.available() {
                    return;
                }
                let b = built(&$cross);
                sensor_delivers_every_record(&$cross, &b.programs.join("sensor"));
            }

            #[test]
            fn kedge_send_streams_20k_records_exactly_once_over_https_under_qemu() {
                if !$cross.available() {
                    return;
                }
                kedge_send_streams_every_record_exactly_once(&$cross);
            }

            #[test]
            fn native_libs_rustc_prints_are_the_ones_documented() {
                if !$cross.available() {
                    return;
                }
                native_libs_are_documented(&$cross);
            }
        }
    };
}

on_target!(armv7, ARMV7);
on_target!(thumbv7neon, THUMBV7NEON);
on_target!(aarch64, AARCH64);

/// The minimal firmware build (`--no-default-features`: streaming, static token and token callback) builds, links
/// the same C programs (they call the same API), streams end to end, and refuses a compiled-out token source at
/// run time with the cargo feature it needs, rather than failing to link or quietly sending without a token.
#[test]
fn minimal_armv7_build_streams_and_names_the_feature_of_a_compiled_out_provider() {
    if !ARMV7_MINIMAL.available() {
        return;
    }
    kedge_send_streams_every_record_exactly_once(&ARMV7_MINIMAL);
    let b = built(&ARMV7_MINIMAL);
    let _g = serial();
    let scratch = Scratch::new("minimal-providers");
    let input = scratch.path("records.jsonl");
    write_records(&input, 10);
    let secret = scratch.path("secret");
    fs::write(&secret, "s3cr3t\n").unwrap();
    let common = [
        "--url",
        "https://127.0.0.1:9",
        "--database",
        "db",
        "--table",
        "Telemetry",
    ];
    for (flags, feature) in [
        (vec!["--managed-identity"], "managed-identity"),
        (
            vec![
                "--tenant",
                "contoso.com",
                "--client-id",
                "app",
                "--client-secret-file",
                secret.to_str().unwrap(),
            ],
            "entra",
        ),
    ] {
        let mut cmd = emulated(&ARMV7_MINIMAL, &b.programs.join("kedge-send"));
        cmd.args(common).args(&flags).arg(&input);
        let out = run(cmd, None, &scratch, Duration::from_secs(60));
        assert_ne!(
            out.status.code(),
            Some(0),
            "kedge-send {flags:?} on the minimal build: {}",
            out.describe()
        );
        assert!(
            out.stderr.contains(&format!("cargo feature `{feature}`"))
                && out.stderr.contains("invalid configuration value"),
            "kedge-send {flags:?} on the minimal build does not name the feature: {}",
            out.describe()
        );
        assert!(!out.stderr.contains("s3cr3t"), "{}", out.describe());
    }
}

/// The `NATIVE_LIBS ?=` default of examples-c/Makefile.
fn makefile_native_libs() -> String {
    let makefile = fs::read_to_string(Path::new(MANIFEST_DIR).join("examples-c/Makefile")).unwrap();
    makefile
        .lines()
        .find_map(|l| l.strip_prefix("NATIVE_LIBS ?="))
        .expect("examples-c/Makefile sets NATIVE_LIBS ?=")
        .trim()
        .to_owned()
}

fn pc_in() -> String {
    fs::read_to_string(Path::new(MANIFEST_DIR).join("kusto_edge.pc.in")).expect("kusto_edge.pc.in")
}

/// What rustc prints for the target is what the Makefile, the pkg-config file, the CMake example and the README
/// tell integrators to link with (for glibc targets the list is the same on x86_64, armv7 and aarch64).
fn native_libs_are_documented(c: &Cross) {
    let printed = &built(c).native_libs;
    assert_eq!(
        &makefile_native_libs(),
        printed,
        "examples-c/Makefile's NATIVE_LIBS vs rustc for {}",
        c.triple
    );
    let private = pc_in()
        .lines()
        .find_map(|l| l.strip_prefix("Libs.private:").map(|s| s.trim().to_owned()))
        .expect("kusto_edge.pc.in has Libs.private");
    assert_eq!(
        &private, printed,
        "kusto_edge.pc.in's Libs.private vs rustc for {}",
        c.triple
    );
    let cmake =
        fs::read_to_string(Path::new(MANIFEST_DIR).join("examples-c/CMakeLists.txt")).unwrap();
    let cmake_list: String = printed
        .split_whitespace()
        .map(|l| l.trim_start_matches("-l"))
        .collect::<Vec<_>>()
        .join(";");
    assert!(
        cmake.contains(&format!("\"{cmake_list}\"")),
        "examples-c/CMakeLists.txt's KUSTO_EDGE_NATIVE_LIBS is not \"{cmake_list}\" (rustc for {})",
        c.triple
    );
    let readme = fs::read_to_string(Path::new(MANIFEST_DIR).join("README.md")).unwrap();
    let row = format!("| {} | {printed} |", c.triple);
    assert!(
        readme.lines().any(|l| l == row),
        "README's native libs table has no row {row}"
    );
}

/// The header's ABI means the same on 32- and 64-bit ARM: fixed-width integers only, `size_t` only for lengths
/// and sizes, and it compiles as C99 and as C++11 with each target's cross compilers.
#[test]
fn header_uses_fixed_width_types_only_and_compiles_as_c99_and_cxx_for_arm() {
    let header = fs::read_to_string(Path::new(MANIFEST_DIR).join("include/kusto_edge.h")).unwrap();
    let code = strip_c_comments(&header);
    let tokens: Vec<&str> = code
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .filter(|t| !t.is_empty())
        .collect();
    for banned in [
        "int",
        "long",
        "short",
        "unsigned",
        "signed",
        "float",
        "double",
        "time_t",
        "off_t",
        "ssize_t",
        "intptr_t",
        "uintptr_t",
        "ptrdiff_t",
        "wchar_t",
        "bool",
        "_Bool",
    ] {
        assert!(
            !tokens.contains(&banned),
            "kusto_edge.h uses `{banned}`, whose size or meaning differs between ARM ABIs: use a fixed-width type"
        );
    }
    for (i, t) in tokens.iter().enumerate() {
        if *t == "size_t" {
            let name = tokens.get(i + 1).copied().unwrap_or("");
            assert!(
                name.ends_with("_len") || name.ends_with("_size"),
                "size_t is for lengths and sizes only (named *_len, *_size), but kusto_edge.h has `size_t {name}`"
            );
        }
    }

    let scratch = Scratch::new("header");
    let src = scratch.path("uses_header.c");
    fs::write(
        &src,
        "#include \"kusto_edge.h\"\n\
         int main(void) { kedge_stats s; (void)s; return kedge_result_str(KEDGE_OK) == 0; }\n",
    )
    .unwrap();
    // Layout: the counters sit at 8-byte offsets on both ABIs, and kedge_stats (no pointer-sized field) has the
    // same size on 32- and 64-bit ARM.
    let layout_src = scratch.path("layout.c");
    fs::write(
        &layout_src,
        "#include <stdio.h>\n\
         #include \"kusto_edge.h\"\n\
         #define ALIGNED8(t, f) (offsetof(t, f) % 8 == 0)\n\
         typedef char report_counts_are_8_aligned[(ALIGNED8(kedge_delivery_report, records) && \
             ALIGNED8(kedge_delivery_report, raw_bytes) && ALIGNED8(kedge_delivery_report, wire_bytes)) ? 1 : -1];\n\
         typedef char stats_is_whole_counters[sizeof(kedge_stats) % 8 == 0 ? 1 : -1];\n\
         int main(void) { printf(\"kedge_stats %lu\\n\", (unsigned long)sizeof(kedge_stats)); return 0; }\n",
    )
    .unwrap();
    let mut layouts = Vec::new();
    let include = Path::new(MANIFEST_DIR).join("include");
    let warn: &[&str] = &["-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"];
    let gxx = |c: &Cross| tools::need(&c.tool("g++"), c.gxx_package);
    if !tools::available_or_skip(
        ARMV7
            .requirements()
            .and_then(|()| gxx(&ARMV7))
            .and_then(|()| AARCH64.requirements())
            .and_then(|()| gxx(&AARCH64)),
    ) {
        return;
    }
    for c in [&ARMV7, &AARCH64] {
        for (compiler, lang) in [
            (c.tool("gcc"), ["-std=c99", "-x", "c"]),
            (c.tool("g++"), ["-std=c++11", "-x", "c++"]),
        ] {
            let out = output_of(
                Command::new(&compiler)
                    .args(lang)
                    .args(warn)
                    .arg("-I")
                    .arg(&include)
                    .arg(&src),
                &compiler,
            );
            assert!(
                out.status.success(),
                "kusto_edge.h does not compile with {compiler} {lang:?}:\n{}",
                stderr_of(&out)
            );
        }
        let exe = scratch.path(&format!("layout-{}", c.triple));
        let out = output_of(
            Command::new(c.tool("gcc"))
                .args(["-std=c99", "-o"])
                .arg(&exe)
                .args(warn.iter().filter(|f| **f != "-fsyntax-only"))
                .arg("-I")
                .arg(&include)
                .arg(&layout_src),
            "gcc",
        );
        assert!(
            out.status.success(),
            "layout.c for {}:\n{}",
            c.triple,
            stderr_of(&out)
        );
        let out = run(emulated(c, &exe), None, &scratch, Duration::from_secs(60));
        assert_eq!(
            out.status.code(),
            Some(0),
            "layout on {}: {}",
            c.triple,
            out.describe()
        );
        layouts.push(out.stdout);
    }
    assert_eq!(
        layouts[0], layouts[1],
        "kedge_stats differs between armv7 and aarch64"
    );
}

fn strip_c_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            out.push(' ');
        } else {
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    out
}

/// Stripped size of `program`, stripped with `strip` into the scratch directory.
fn stripped_size(strip: &str, program: &Path, scratch: &Scratch) -> u64 {
    let name = program.file_name().unwrap().to_string_lossy();
    let dir = program
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy();
    let out_path = scratch.path(&format!("{dir}-{name}.stripped"));
    let out = output_of(
        Command::new(strip).arg("-o").arg(&out_path).arg(program),
        strip,
    );
    assert!(
        out.status.success(),
        "{strip} {}: {}",
        program.display(),
        stderr_of(&out)
    );
    fs::metadata(&out_path).unwrap().len()
}

/// An empty C program linked with the same line as kedge-send, minus the library: the size without kusto-edge.
fn empty_program(cc: &str, native_libs: &str, scratch: &Scratch, tag: &str) -> PathBuf {
    let src = scratch.path("empty.c");
    fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let exe = scratch.path(&format!("empty-{tag}"));
    let out = output_of(
        Command::new(cc)
            .args(["-std=c99", "-O2", "-o"])
            .arg(&exe)
            .arg(&src)
            .args(native_libs.split_whitespace()),
        cc,
    );
    assert!(out.status.success(), "{cc} empty.c: {}", stderr_of(&out));
    exe
}

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

/// Sums the sizes of the symbols of an unstripped program by the crate (or C library) they come from: where the
/// code goes. Data without a symbol (the bundled root certificates, string constants) is not in it.
fn size_by_origin(nm: &str, program: &Path) -> Vec<(String, u64)> {
    let out = output_of(
        Command::new(nm)
            .args(["-S", "--size-sort", "-C"])
            .arg(program),
        nm,
    );
    assert!(out.status.success(), "{nm}: {}", stderr_of(&out));
    let mut by: HashMap<String, u64> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.splitn(4, ' ');
        let (_, Some(size), Some(_kind), Some(name)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Ok(size) = u64::from_str_radix(size, 16) else {
            continue;
        };
        *by.entry(origin_of(name)).or_default() += size;
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    v
}

fn origin_of(symbol: &str) -> String {
    if symbol.starts_with("ring_core_") || symbol.contains("ring_core_0_17") {
        return "ring (C/asm)".into();
    }
    if symbol.starts_with("kedge_") {
        return "kusto_edge (C API)".into();
    }
    // `<rustls::x::Y as core::fmt::Debug>::fmt` belongs to rustls; `core::ptr::drop_in_place<ureq::...>` to ureq.
    let s = symbol
        .trim_start_matches('<')
        .trim_start_matches('&')
        .trim_start_matches("dyn ");
    let s = if s.starts_with("core::ptr::drop_in_place<") {
        s.trim_start_matches("core::ptr::drop_in_place<")
            .trim_start_matches('<')
            .trim_start_matches('&')
    } else {
        s
    };
    match s.find("::") {
        Some(i)
            if s[..i]
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_') =>
        {
            s[..i].to_owned()
        }
        _ => "other (C, libgcc, unnamed)".into(),
    }
}

/// `kedge-send` for armv7, linked with the release profile (LTO, opt-level "s") and stripped, must stay within
/// KEDGE_SEND_ARMV7_BUDGET_BYTES. Prints the README's size table (aarch64 and x86_64 built the same way) and,
/// for armv7, where the bytes go.
#[test]
fn kedge_send_for_armv7_stripped_fits_the_size_budget() {
    if !tools::available_or_skip(
        ARMV7
            .requirements()
            .and_then(|()| THUMBV7NEON.requirements())
            .and_then(|()| AARCH64.requirements())
            .and_then(|()| X86_64.requirements()),
    ) {
        return;
    }
    let scratch = Scratch::new("size");
    let mut rows = Vec::new();
    let mut armv7_size = 0;
    let mut minimal_size = 0;
    for c in [&ARMV7, &ARMV7_MINIMAL, &THUMBV7NEON, &AARCH64, &X86_64] {
        let b = built(c);
        let program = b.programs.join("kedge-send");
        let total = stripped_size(&c.tool("strip"), &program, &scratch);
        let empty = empty_program(&c.tool("gcc"), &b.native_libs, &scratch, c.triple);
        let without_library = stripped_size(&c.tool("strip"), &empty, &scratch);
        let archive = fs::metadata(b.lib_dir.join("libkusto_edge.a"))
            .unwrap()
            .len();
        rows.push(format!(
            "{:<14} {:<36} kedge-send {total:>8} B = {:>9}; minus an empty C program: {:>9}; libkusto_edge.a {:>9}",
            c.name,
            c.triple,
            kib(total),
            kib(total.saturating_sub(without_library)),
            kib(archive)
        ));
        if c.name == ARMV7_MINIMAL.name {
            minimal_size = total;
        }
        if c.name == ARMV7.name {
            armv7_size = total;
            let breakdown = size_by_origin(&c.tool("nm"), &program);
            let named: u64 = breakdown.iter().map(|(_, s)| s).sum();
            eprintln!(
                "armv7 kedge-send, code and named data by origin ({} in named symbols):",
                kib(named)
            );
            for (origin, size) in breakdown.iter().take(20) {
                eprintln!("  {origin:<28} {:>8}", kib(*size));
            }
            let sections = output_of(Command::new(c.tool("size")).arg("-A").arg(&program), "size");
            let sections = String::from_utf8_lossy(&sections.stdout).into_owned();
            eprintln!("armv7 kedge-send, sections over 8 KiB in the stripped program:");
            for line in sections.lines() {
                let mut f = line.split_whitespace();
                if let (Some(name), Some(Ok(size))) = (f.next(), f.next().map(str::parse::<u64>)) {
                    if size > 8192 && !name.starts_with(".debug") && name != "Total" {
                        eprintln!("  {name:<28} {:>8}", kib(size));
                    }
                }
            }
        }
    }
    eprintln!("stripped sizes (release profile):\n{}", rows.join("\n"));
    assert!(
        armv7_size <= KEDGE_SEND_ARMV7_BUDGET_BYTES,
        "kedge-send for armv7 is {armv7_size} bytes stripped ({}), over its budget of {} bytes ({}): see the \
         breakdown above",
        kib(armv7_size),
        KEDGE_SEND_ARMV7_BUDGET_BYTES,
        kib(KEDGE_SEND_ARMV7_BUDGET_BYTES)
    );
    assert!(
        minimal_size < armv7_size,
        "the minimal armv7 kedge-send ({minimal_size} bytes) is not smaller than the default one ({armv7_size}): \
         the features leave nothing out"
    );
}

/// Generates kusto_edge.pc from kusto_edge.pc.in for a library directory, as a package recipe would.
fn write_pc(dir: &Path, lib_dir: &Path) {
    let include = Path::new(MANIFEST_DIR).join("include");
    let pc = pc_in()
        .replace("@prefix@", "/usr")
        .replace("@libdir@", &lib_dir.display().to_string())
        .replace("@includedir@", &include.display().to_string())
        .replace("@version@", env!("CARGO_PKG_VERSION"));
    assert!(
        !pc.contains('@'),
        "kusto_edge.pc.in has a placeholder the README does not list:\n{pc}"
    );
    fs::write(dir.join("kusto_edge.pc"), pc).unwrap();
}

/// The pkg-config file gives the flags that compile and link a C program (here sensor.c, on the host and for
/// armv7, the way a Yocto or Buildroot recipe would use it), and the program delivers.
#[test]
fn pkg_config_file_links_sensor_for_the_host_and_for_armv7() {
    if !tools::available_or_skip(
        tools::need("pkg-config", "pkg-config").and_then(|()| ARMV7.requirements()),
    ) {
        return;
    }
    let scratch = Scratch::new("pkg-config");
    let sensor_c = Path::new(MANIFEST_DIR).join("examples-c/sensor.c");
    let host = ("host", host_lib_dir(), "cc".to_owned());
    let arm = ("armv7", built(&ARMV7).lib_dir.as_path(), ARMV7.tool("gcc"));
    for (tag, lib_dir, cc) in [host, arm] {
        let pc_dir = scratch.path(&format!("pc-{tag}"));
        fs::create_dir_all(&pc_dir).unwrap();
        write_pc(&pc_dir, lib_dir);
        let out = output_of(
            Command::new("pkg-config")
                .args(["--static", "--cflags", "--libs", "kusto_edge"])
                .env("PKG_CONFIG_PATH", &pc_dir)
                .env("PKG_CONFIG_LIBDIR", &pc_dir),
            "pkg-config",
        );
        assert!(
            out.status.success(),
            "pkg-config --static --cflags --libs kusto_edge: {}",
            stderr_of(&out)
        );
        let flags = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            flags.contains("-lkusto_edge") && flags.contains("-lpthread"),
            "pkg-config gave {flags}"
        );
        let exe = scratch.path(&format!("sensor-{tag}"));
        let out = output_of(
            Command::new(&cc)
                .args([
                    "-std=c99",
                    "-O2",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-pedantic",
                    "-o",
                ])
                .arg(&exe)
                .arg(&sensor_c)
                .args(flags.split_whitespace()),
            &cc,
        );
        assert!(
            out.status.success(),
            "{cc} sensor.c $(pkg-config --static --cflags --libs kusto_edge): {}",
            stderr_of(&out)
        );
        if tag == "armv7" {
            sensor_delivers_every_record(&ARMV7, &exe);
        } else {
            assert_eq!(elf_machine(&exe), 62, "host sensor is not x86_64"); // EM_X86_64
            sensor_delivers_every_record_natively(&exe);
        }
    }
}

fn sensor_delivers_every_record_natively(program: &Path) {
    let _g = serial();
    let scratch = Scratch::new("sensor-host");
    let server = tls_server(None);
    let ca = write_ca(&server, &scratch);
    let mut cmd = Command::new(program);
    cmd.arg(server.url()).arg(&ca);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "sensor: {}", out.describe());
    assert_each_seq_once(&server.records("edge", "Telemetry"), 300);
}

fn cmake(args: &[&std::ffi::OsStr], what: &str) {
    let out = output_of(
        Command::new("cmake")
            .args(args)
            .env_remove("CFLAGS")
            .env_remove("LDFLAGS"),
        "cmake",
    );
    assert!(
        out.status.success(),
        "cmake {what} failed:\n{}",
        stderr_of(&out)
    );
}

/// The CMake example, configured and built as firmware would: natively against the x86_64 library, and for
/// armv7 with the toolchain file; both sensors deliver every record.
#[test]
fn cmake_example_builds_sensor_natively_and_for_armv7_with_the_toolchain_file() {
    if !tools::available_or_skip(tools::need("cmake", "cmake").and_then(|()| ARMV7.requirements()))
    {
        return;
    }
    let examples = Path::new(MANIFEST_DIR).join("examples-c");
    let toolchain = examples.join("cmake/armv7-linux-gnueabihf.cmake");
    let host = ("x86_64", host_lib_dir(), None);
    let arm = ("armv7", built(&ARMV7).lib_dir.as_path(), Some(&toolchain));
    for (tag, lib_dir, toolchain) in [host, arm] {
        let build = target_dir().join(format!("cmake-build-{tag}"));
        let _ = fs::remove_dir_all(&build);
        let mut args: Vec<std::ffi::OsString> = vec![
            "-S".into(),
            examples.clone().into(),
            "-B".into(),
            build.clone().into(),
        ];
        args.push(format!("-DKUSTO_EDGE_LIB_DIR={}", lib_dir.display()).into());
        args.push("-DCMAKE_BUILD_TYPE=Release".into());
        if let Some(t) = toolchain {
            args.push(format!("-DCMAKE_TOOLCHAIN_FILE={}", t.display()).into());
        }
        let started = Instant::now();
        cmake(
            &args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
            &format!("configure ({tag})"),
        );
        cmake(
            &["--build".as_ref(), build.as_os_str()],
            &format!("--build ({tag})"),
        );
        eprintln!("cmake configure + build ({tag}): {:?}", started.elapsed());
        let sensor = build.join("sensor");
        match toolchain {
            Some(_) => sensor_delivers_every_record(&ARMV7, &sensor),
            None => sensor_delivers_every_record_natively(&sensor),
        }
    }
}
