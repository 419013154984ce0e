//! `kusto-devserver`: the test endpoint as a process, for demos and C/shell tests.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kusto_devserver::{
    faults, AuthConfig, ConnectProxy, Faults, MetadataMode, ProxyConfig, Server, ServerConfig,
};

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
  --auth                 serve the Entra ID token endpoint, IMDS, Arc and auth metadata, and
                         accept tokens issued here on ingest (implied by the --auth-* options)
  --auth-tenant T        tenant of the token endpoint (default test-tenant)
  --auth-resource R      token resource (default https://kusto.kusto.windows.net)
  --auth-token-lifetime-secs N   lifetime of issued tokens (default 3600)
  --auth-secret-client ID:SECRET register a client-secret app (repeatable)
  --auth-cert-client ID  register a certificate app with the test certificate (repeatable)
  --auth-user-identity ID        register a user-assigned managed identity (repeatable)
  --auth-expires-in-string       the token endpoint sends expires_in as a string
  --auth-metadata-404    GET /v1/rest/auth/metadata answers 404
  --arc-key-dir DIR      where Arc challenge files go (default: a temporary directory)
  --proxy-port N         also run a CONNECT/forward proxy on 127.0.0.1:N (0: any free port)
  --proxy-user U --proxy-pass P  require these proxy credentials
  --azurite              also be the data-management endpoint (POST /v1/rest/mgmt and an ingestor)
                         over an Azurite started here (installed into target/azurite or
                         $KEDGE_AZURITE_DIR if missing; HTTPS with the same test CA under --tls)
  --dm-queues N          ingestion queues handed out (default 2; implies --azurite)
  --dm-containers N      blob containers handed out (default 2; implies --azurite)
Control (same port, no auth): POST /_dev/fault, POST /_dev/random-faults[?seed=N],
GET /_dev/records?db=D&table=T, GET /_dev/stats, GET /_dev/requests, POST /_dev/reset,
POST /_dev/down?secs=N, POST /_dev/shutdown; with auth: GET /_dev/auth/stats,
POST /_dev/auth/expire-all, POST /_dev/auth/secret-client?client_id=ID&secret=S,
POST /_dev/auth/cert-client?client_id=ID (body: PEM), POST /_dev/auth/user-identity?client_id=ID,
POST /_dev/auth/federated-token?client_id=ID (answers the token); with --azurite: GET /_dev/dm/stats,
GET /_dev/dm/violations, GET /_dev/dm/ingestions, POST /_dev/dm/faults (body: throttle-mgmt=N,
storage-unreachable, sas-expired, notification-delay-ms=N, ingest-delay-ms=N, ingestor-paused, exhaust-ingestions=N),
POST /_dev/dm/storage-pause, POST /_dev/dm/storage-resume";

struct Args {
    cfg: ServerConfig,
    ca_out: Option<String>,
    url_file: Option<String>,
    seed: u64,
    random: String,
    exit_after: Duration,
    secret_clients: Vec<(String, String)>,
    cert_clients: Vec<String>,
    user_identities: Vec<String>,
    proxy_port: Option<u16>,
    proxy_user: Option<String>,
    proxy_pass: Option<String>,
    azurite: bool,
    dm_queues: usize,
    dm_containers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        cfg: ServerConfig::default(),
        ca_out: None,
        url_file: None,
        seed: 0,
        random: String::new(),
        exit_after: Duration::from_secs(600),
        secret_clients: Vec::new(),
        cert_clients: Vec::new(),
        user_identities: Vec::new(),
        proxy_port: None,
        proxy_user: None,
        proxy_pass: None,
        azurite: false,
        dm_queues: 2,
        dm_containers: 2,
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
            "--auth" => {
                a.cfg.auth.get_or_insert_with(AuthConfig::default);
            }
            "--auth-tenant" => a.cfg.auth.get_or_insert_with(AuthConfig::default).tenant = value()?,
            "--auth-resource" => {
                a.cfg.auth.get_or_insert_with(AuthConfig::default).resource = value()?
            }
            "--auth-token-lifetime-secs" => {
                let v = value()?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("bad --auth-token-lifetime-secs {v:?}"))?;
                a.cfg
                    .auth
                    .get_or_insert_with(AuthConfig::default)
                    .token_lifetime = Duration::from_secs(secs);
            }
            "--auth-secret-client" => {
                let v = value()?;
                let (id, secret) = v
                    .split_once(':')
                    .filter(|(i, s)| !i.is_empty() && !s.is_empty())
                    .ok_or_else(|| format!("bad --auth-secret-client {v:?}: expected ID:SECRET"))?;
                a.secret_clients.push((id.to_string(), secret.to_string()));
                a.cfg.auth.get_or_insert_with(AuthConfig::default);
            }
            "--auth-cert-client" => {
                a.cert_clients.push(value()?);
                a.cfg.auth.get_or_insert_with(AuthConfig::default);
            }
            "--auth-user-identity" => {
                a.user_identities.push(value()?);
                a.cfg.auth.get_or_insert_with(AuthConfig::default);
            }
            "--auth-expires-in-string" => {
                a.cfg
                    .auth
                    .get_or_insert_with(AuthConfig::default)
                    .expires_in_as_string = true
            }
            "--auth-metadata-404" => {
                a.cfg.auth.get_or_insert_with(AuthConfig::default).metadata = MetadataMode::NotFound
            }
            "--arc-key-dir" => {
                a.cfg
                    .auth
                    .get_or_insert_with(AuthConfig::default)
                    .arc_key_dir = Some(value()?.into())
            }
            "--proxy-port" => {
                let v = value()?;
                a.proxy_port = Some(v.parse().map_err(|_| format!("bad --proxy-port {v:?}"))?);
            }
            "--azurite" => a.azurite = true,
            "--dm-queues" | "--dm-containers" => {
                let v = value()?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or_else(|| format!("bad {flag} {v:?}: expected 1..16"))?;
                if flag == "--dm-queues" {
                    a.dm_queues = n;
                } else {
                    a.dm_containers = n;
                }
                a.azurite = true;
            }
            "--proxy-user" => a.proxy_user = Some(value()?),
            "--proxy-pass" => a.proxy_pass = Some(value()?),
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
    if a.proxy_user.is_some() != a.proxy_pass.is_some() {
        return Err("--proxy-user and --proxy-pass go together".into());
    }
    if a.proxy_user.is_some() && a.proxy_port.is_none() {
        return Err("--proxy-user needs --proxy-port".into());
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
    let mut cfg = args.cfg.clone();
    let azurite = if args.azurite {
        let ca = if cfg.tls {
            match kusto_devserver::tls::TestCa::generate() {
                Ok(ca) => Some(ca),
                Err(e) => {
                    eprintln!("kusto-devserver: test CA: {e}");
                    return ExitCode::from(1);
                }
            }
        } else {
            None
        };
        let started = match &ca {
            Some(ca) => kusto_devserver::azurite::Azurite::start_tls(ca),
            None => kusto_devserver::azurite::Azurite::start(),
        };
        let az = match started {
            Ok(a) => a,
            Err(e) => {
                eprintln!("kusto-devserver: cannot start Azurite: {e}");
                return ExitCode::from(1);
            }
        };
        let mut dm = kusto_devserver::DmConfig::new(az.endpoints());
        dm.ingestion_queues = args.dm_queues;
        dm.containers = args.dm_containers;
        dm.storage_pid = Some(az.pid());
        cfg.dm = Some(dm);
        cfg.tls_ca = ca;
        Some(az)
    } else {
        None
    };
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kusto-devserver: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    for (id, secret) in &args.secret_clients {
        server.register_secret_client(id, secret);
    }
    for id in &args.cert_clients {
        server.register_cert_client(id, kusto_devserver::TEST_CLIENT_CERT_PEM);
    }
    for id in &args.user_identities {
        server.register_user_assigned_identity(id);
    }
    let proxy = match args.proxy_port {
        None => None,
        Some(port) => {
            let cfg = ProxyConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], port)),
                credentials: args.proxy_user.clone().zip(args.proxy_pass.clone()),
                verbose: args.cfg.verbose,
                ..ProxyConfig::default()
            };
            match ConnectProxy::start(cfg) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("kusto-devserver: cannot start the proxy: {e}");
                    return ExitCode::from(1);
                }
            }
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
    if let Some(p) = &proxy {
        println!("proxy listening on {}", p.url());
    }
    if let Some(az) = &azurite {
        println!(
            "storage at {} {} {}",
            az.blob_url(),
            az.queue_url(),
            az.table_url()
        );
    }
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
    drop(proxy);
    server.stop();
    drop(azurite);
    ExitCode::SUCCESS
}
