//! Azurite, the real Azure Storage emulator (npm package `azurite`, pinned to [`AZURITE_VERSION`]), run as a
//! child process for the data-management side of the devserver and for tests.
//!
//! [`Azurite::start`] installs the package if it is missing (`npm install --no-save --prefix DIR
//! azurite@VERSION`, DIR = env `KEDGE_AZURITE_DIR` or `target/azurite` of this workspace), starts it on free
//! loopback ports (port 0; the ports are read back from its start-up lines) with `--inMemoryPersistence
//! --silent --disableTelemetry --skipApiVersionCheck`, optionally HTTPS with a leaf of a [`TestCa`], and waits
//! until it answers. Dropping it kills it; so does the end of this process (the child watches its stdin).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rustix::process::{Pid, Signal};

use crate::sas::{DEV_ACCOUNT, DEV_KEY};
use crate::tls::TestCa;

/// The pinned npm package version.
pub const AZURITE_VERSION: &str = "3.37.0";

/// How to start Azurite.
#[derive(Clone, Debug)]
pub struct AzuriteOptions {
    /// Where the npm package lives (installed there if missing). `None`: [`Azurite::install_dir`].
    pub dir: Option<PathBuf>,
    /// Serve HTTPS with a leaf signed by this CA.
    pub tls: Option<TestCa>,
    /// How long to wait for it to listen (the install, if any, is not counted).
    pub startup_timeout: Duration,
}

impl Default for AzuriteOptions {
    fn default() -> Self {
        AzuriteOptions {
            dir: None,
            tls: None,
            startup_timeout: Duration::from_secs(60),
        }
    }
}

/// The three service endpoints of one storage account (path style) and its key: what the DM needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageEndpoints {
    /// `http://127.0.0.1:PORT/devstoreaccount1`
    pub blob: String,
    pub queue: String,
    pub table: String,
    pub account: String,
    /// Base64 account key.
    pub key: String,
    /// CA to trust for `https://` endpoints.
    pub ca_pem: Option<String>,
}

/// A running Azurite.
pub struct Azurite {
    child: Child,
    endpoints: StorageEndpoints,
    workdir: PathBuf,
    paused: Mutex<bool>,
}

/// Serialises installs between threads of this process (a lock directory guards against other processes).
static INSTALL: Mutex<()> = Mutex::new(());

impl Azurite {
    /// Plain HTTP on free loopback ports.
    pub fn start() -> Result<Azurite, String> {
        Azurite::start_with(AzuriteOptions::default())
    }

    /// HTTPS with a leaf of `ca`.
    pub fn start_tls(ca: &TestCa) -> Result<Azurite, String> {
        Azurite::start_with(AzuriteOptions {
            tls: Some(ca.clone()),
            ..AzuriteOptions::default()
        })
    }

    /// Env `KEDGE_AZURITE_DIR`, else `target/azurite` of this workspace.
    pub fn install_dir() -> PathBuf {
        match std::env::var_os("KEDGE_AZURITE_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/azurite"),
        }
    }

    /// The entry script of the package in `dir`, installing it first if it is missing.
    pub fn ensure_installed(dir: &Path) -> Result<PathBuf, String> {
        let script = dir.join("node_modules/azurite/dist/src/azurite.js");
        let installed = |dir: &Path| {
            std::fs::read_to_string(dir.join("node_modules/azurite/package.json"))
                .map(|p| p.contains(&format!("\"version\": \"{AZURITE_VERSION}\"")))
                .unwrap_or(false)
        };
        if installed(dir) && script.is_file() {
            return Ok(script);
        }
        let _g = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let lock = dir.join(".install-lock");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match std::fs::create_dir(&lock) {
                Ok(()) => break,
                Err(_) if Instant::now() < deadline => {
                    // A lock left by a killed installer goes stale after 5 minutes.
                    let stale = std::fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > Duration::from_secs(300));
                    if stale {
                        let _ = std::fs::remove_dir(&lock);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("install lock {}: {e}", lock.display())),
            }
        }
        let result = (|| {
            if installed(dir) && script.is_file() {
                return Ok(());
            }
            let out = Command::new("npm")
                .args([
                    "install",
                    "--no-save",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                ])
                .arg(dir)
                .arg(format!("azurite@{AZURITE_VERSION}"))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("npm: {e} (install Node.js and npm)"))?;
            if !out.status.success() || !script.is_file() {
                return Err(format!(
                    "npm install azurite@{AZURITE_VERSION} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir(&lock);
        result.map(|()| script)
    }

    pub fn start_with(opts: AzuriteOptions) -> Result<Azurite, String> {
        let dir = opts.dir.clone().unwrap_or_else(Azurite::install_dir);
        let script = Azurite::ensure_installed(&dir)?;
        remove_stale_workdirs();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let workdir = std::env::temp_dir().join(format!(
            "kdev-azurite-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
        // Exit when our end of its stdin closes, i.e. when this process ends however it ends.
        let watchdog = workdir.join("watchdog.js");
        std::fs::write(
            &watchdog,
            "process.stdin.on('end', () => process.exit(0));\n\
             process.stdin.on('error', () => process.exit(0));\n\
             process.stdin.resume();\n",
        )
        .map_err(|e| format!("{}: {e}", watchdog.display()))?;
        let mut cmd = Command::new("node");
        cmd.arg("--require")
            .arg(&watchdog)
            .arg(&script)
            .args(["--blobHost", "127.0.0.1", "--blobPort", "0"])
            .args(["--queueHost", "127.0.0.1", "--queuePort", "0"])
            .args(["--tableHost", "127.0.0.1", "--tablePort", "0"])
            .args([
                "--inMemoryPersistence",
                "--silent",
                "--disableTelemetry",
                "--skipApiVersionCheck",
            ]);
        let ca_pem = match &opts.tls {
            Some(ca) => {
                let leaf = ca
                    .issue_localhost()
                    .map_err(|e| format!("test certificate: {e}"))?;
                let (cert, key) = (workdir.join("cert.pem"), workdir.join("key.pem"));
                std::fs::write(&cert, &leaf.chain_pem).map_err(|e| e.to_string())?;
                std::fs::write(&key, &leaf.key_pem).map_err(|e| e.to_string())?;
                cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
                Some(ca.ca_pem.clone())
            }
            None => None,
        };
        cmd.current_dir(&workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("node: {e}"))?;
        let (tx, rx) = mpsc::channel::<String>();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let mut urls: [Option<String>; 3] = [None, None, None];
        let mut seen = Vec::new();
        let deadline = Instant::now() + opts.startup_timeout;
        let fail = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&workdir);
            Err(why)
        };
        while urls.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    for (i, svc) in ["Blob", "Queue", "Table"].iter().enumerate() {
                        let tag = format!("Azurite {svc} service is successfully listening at ");
                        if let Some(u) = line.strip_prefix(&tag) {
                            urls[i] = Some(u.trim().trim_end_matches('/').to_string());
                        }
                    }
                    if seen.len() < 40 {
                        seen.push(line);
                    }
                }
                Err(_) => {
                    return fail(
                        &mut child,
                        format!("Azurite did not start: {}", seen.join(" | ")),
                    )
                }
            }
        }
        let [Some(b), Some(q), Some(t)] = urls else {
            unreachable!()
        };
        let endpoints = StorageEndpoints {
            blob: format!("{b}/{DEV_ACCOUNT}"),
            queue: format!("{q}/{DEV_ACCOUNT}"),
            table: format!("{t}/{DEV_ACCOUNT}"),
            account: DEV_ACCOUNT.to_string(),
            key: DEV_KEY.to_string(),
            ca_pem,
        };
        // "Listening" is printed once the sockets are bound; make sure the blob service answers.
        let probe = format!("{}?comp=list", endpoints.blob);
        loop {
            let r = crate::client::request(
                "GET",
                &probe,
                &[],
                b"",
                endpoints.ca_pem.as_deref(),
                Duration::from_secs(2),
            );
            if r.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return fail(&mut child, format!("Azurite does not answer: {r:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Azurite {
            child,
            endpoints,
            workdir,
            paused: Mutex::new(false),
        })
    }

    /// All three endpoints, the account and its key.
    pub fn endpoints(&self) -> StorageEndpoints {
        self.endpoints.clone()
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (or `https://`).
    pub fn blob_url(&self) -> &str {
        &self.endpoints.blob
    }

    pub fn queue_url(&self) -> &str {
        &self.endpoints.queue
    }

    pub fn table_url(&self) -> &str {
        &self.endpoints.table
    }

    pub fn account(&self) -> &str {
        &self.endpoints.account
    }

    /// The base64 account key.
    pub fn key(&self) -> &str {
        &self.endpoints.key
    }

    /// The CA PEM to trust when it serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.endpoints.ca_pem.as_deref()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freeze the process (SIGSTOP): connections are accepted by the kernel but never answered, as when a
    /// storage account hangs.
    pub fn pause(&self) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
        signal(self.child.id(), Signal::STOP);
    }

    /// Undo [`Azurite::pause`] (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), Signal::CONT);
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

/// Work directories of processes that are gone (an Azurite held in a `static` is never dropped).
fn remove_stale_workdirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("kdev-azurite-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// SIGSTOP (`pause`) or SIGCONT a process (the Azurite of a DM, by its pid).
pub fn signal_pid(pid: u32, pause: bool) {
    signal(pid, if pause { Signal::STOP } else { Signal::CONT });
}

fn signal(pid: u32, sig: Signal) {
    // A pid that does not fit is no process of ours; an error means it is already gone.
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}
