//! `kusto-devserver`: the test endpoint as a process, for demos and C/shell tests.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kusto_devserver::{faults, Faults, Server, ServerConfig};

const USAGE: &str = "\
usage: kusto-devserver [options]
  --port N               listen on 127.0.0.1:N (default 0: any free port)
  --tls                  serve HTTPS with a freshly generated test CA
  --ca-out FILE          write the test CA (PEM) to FILE (with --tls)
  --token T              require 'Authorization: Bearer T' on ingest requests
  --table DB.TABLE       only these tables exist (repeatable; default: every table exists)
  --url-file FILE        write the URL to FILE once listening (atomically)
  --verbose              one line per request on stderr
  --seed N               seed of the random faults (default 0)
  --random-faults SPEC   e.g. 429:0.1,503:0.1,reset:0.05
  --exit-after-secs N    exit on its own after N seconds (default 600)
Control (same port, no auth): POST /_dev/fault, POST /_dev/random-faults[?seed=N],
GET /_dev/records?db=D&table=T, GET /_dev/stats, GET /_dev/requests, POST /_dev/reset,
POST /_dev/down?secs=N, POST /_dev/shutdown";

struct Args {
    cfg: ServerConfig,
    ca_out: Option<String>,
    url_file: Option<String>,
    seed: u64,
    random: String,
    exit_after: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        cfg: ServerConfig::default(),
        ca_out: None,
        url_file: None,
        seed: 0,
        random: String::new(),
        exit_after: Duration::from_secs(600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => {
                let v = value()?;
                let port: u16 = v.parse().map_err(|_| format!("bad port {v:?}"))?;
                a.cfg.bind = SocketAddr::from(([127, 0, 0, 1], port));
            }
            "--tls" => a.cfg.tls = true,
            "--ca-out" => a.ca_out = Some(value()?),
            "--token" => a.cfg.token = Some(value()?),
            "--table" => {
                let v = value()?;
                let (db, table) = v
                    .split_once('.')
                    .filter(|(d, t)| !d.is_empty() && !t.is_empty())
                    .ok_or_else(|| format!("bad --table {v:?}: expected DB.TABLE"))?;
                a.cfg
                    .tables
                    .get_or_insert_with(Vec::new)
                    .push((db.to_string(), table.to_string()));
            }
            "--url-file" => a.url_file = Some(value()?),
            "--verbose" => a.cfg.verbose = true,
            "--seed" => {
                let v = value()?;
                a.seed = v.parse().map_err(|_| format!("bad seed {v:?}"))?;
            }
            "--random-faults" => {
                a.random = value()?;
                faults::parse_random_spec(&a.random)?;
            }
            "--exit-after-secs" => {
                let v = value()?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("bad --exit-after-secs {v:?}"))?;
                a.exit_after = Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.ca_out.is_some() && !a.cfg.tls {
        return Err("--ca-out needs --tls".into());
    }
    Ok(a)
}

/// Write via a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(path: &str, contents: &str) -> std::io::Result<()> {
    let tmp = format!("{path}.tmp.{}", std::process::id());
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::rename(&tmp, path)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kusto-devserver: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::start(args.cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kusto-devserver: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let random = faults::parse_random_spec(&args.random).unwrap_or_default();
    server.set_faults(Faults {
        seed: args.seed,
        random,
    });
    if let (Some(path), Some(pem)) = (&args.ca_out, server.ca_pem()) {
        if let Err(e) = write_atomically(path, &pem) {
            eprintln!("kusto-devserver: cannot write {path}: {e}");
            return ExitCode::from(1);
        }
    }
    let url = server.url();
    if let Some(path) = &args.url_file {
        if let Err(e) = write_atomically(path, &format!("{url}\n")) {
            eprintln!("kusto-devserver: cannot write {path}: {e}");
            return ExitCode::from(1);
        }
    }
    println!("listening on {url}");
    let _ = std::io::stdout().flush();

    let deadline = Instant::now() + args.exit_after;
    while !server.shutdown_requested() {
        if Instant::now() >= deadline {
            eprintln!(
                "kusto-devserver: exiting after {} s (--exit-after-secs)",
                args.exit_after.as_secs()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the answer to /_dev/shutdown reach its client before connections are closed.
    std::thread::sleep(Duration::from_millis(50));
    server.stop();
    ExitCode::SUCCESS
}
