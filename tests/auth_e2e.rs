//! Every credential against the test endpoint's Entra ID, IMDS and Arc endpoints over loopback HTTPS: tokens are
//! fetched, sent, refreshed before they expire, renewed after a 401, and never leak into logs, errors or flash.

mod common;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kusto_devserver::{
    AuthConfig, ConnectProxy, GrantKind, MetadataMode, ProxyConfig, Server, ServerConfig,
    TEST_CLIENT_CERT_PEM,
};
use kusto_edge_core::{Client, Config, ErrorKind, LogLevel};

const SECRET: &str = "s3cret-Value-7731";
/// The registered app and its secret, as config keys.
const SECRET_CREDS: &[(&str, &str)] = &[
    ("auth.tenant", "test-tenant"),
    ("auth.client_id", "app-1"),
    ("auth.client_secret", SECRET),
];

fn fixture(name: &str) -> String {
    format!("{}/devserver/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn auth_server(lifetime: Duration) -> Server {
    let server = Server::start(ServerConfig {
        tls: true,
        auth: Some(AuthConfig {
            token_lifetime: lifetime,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    server.register_secret_client("app-1", SECRET);
    server.register_cert_client("app-cert", TEST_CLIENT_CERT_PEM);
    server
}

fn base_config(server: &Server, extra: &[(&str, &str)]) -> Config {
    let mut c = Config::default();
    c.set("url", &server.url()).unwrap();
    c.add_ca_pem(server.ca_pem().unwrap().as_bytes()).unwrap();
    c.set("auth.authority_host", &server.url()).unwrap();
    c.set("proxy.url", "none").unwrap();
    c.set("retry.base_ms", "10").unwrap();
    for (k, v) in extra {
        c.set(k, v).unwrap_or_else(|e| panic!("{k}: {e}"));
    }
    c
}

fn send_some(client: &Client, table: &str, n: usize) {
    let d = client.add_destination("db", table, "csv", None).unwrap();
    for i in 0..n {
        common::append(client, d, format!("{i},reading").as_bytes()).unwrap();
    }
    client.flush().unwrap_or_else(|e| panic!("flush: {e}"));
}

#[test]
fn client_secret_credentials_get_a_token_once_and_ingest() {
    let server = auth_server(Duration::from_secs(3600));
    let cfg = base_config(&server, SECRET_CREDS);
    let client = Client::new(&cfg, None, None).unwrap();
    send_some(&client, "t", 10);
    client.flush().unwrap();
    assert_eq!(server.records("db", "t").len(), 10);
    assert_eq!(
        server.auth_stats().secret_requests,
        1,
        "the token is cached"
    );
}

#[test]
fn a_wrong_client_secret_is_auth_refused_and_the_data_is_kept() {
    let server = auth_server(Duration::from_secs(3600));
    let cfg = base_config(
        &server,
        &[
            ("auth.tenant", "test-tenant"),
            ("auth.client_id", "app-1"),
            ("auth.client_secret", "wrong-secret-value"),
        ],
    );
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"1,a").unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::AuthRefused, "{}", e.message);
    assert!(
        e.message.contains("AADSTS7000215") || e.message.contains("invalid_client"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("wrong-secret-value"));
    assert_eq!(client.stats().records_buffered, 1);
    assert!(
        server.requests().is_empty(),
        "no ingest request without a token"
    );
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn claim<'a>(json: &'a str, name: &str) -> &'a str {
    let at = json
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + name.len()
        + 3;
    let rest = &json[at..];
    match rest.strip_prefix('"') {
        Some(r) => &r[..r.find('"').unwrap()],
        None => &rest[..rest.find([',', '}']).unwrap()],
    }
}

#[test]
fn certificate_credentials_send_an_rs256_assertion_that_verifies_with_the_certificate() {
    for key in ["client-key-pkcs8.pem", "client-key-pkcs1.pem"] {
        let server = auth_server(Duration::from_secs(3600));
        let cfg = base_config(
            &server,
            &[
                ("auth.tenant", "test-tenant"),
                ("auth.client_id", "app-cert"),
                ("auth.cert_file", &fixture("client-cert.pem")),
                ("auth.key_file", &fixture(key)),
            ],
        );
        let client = Client::new(&cfg, None, None).unwrap();
        send_some(&client, "cert", 3);
        assert_eq!(server.records("db", "cert").len(), 3, "{key}");
        assert_eq!(server.auth_stats().issued(GrantKind::Assertion), 1);

        // Verified here independently of both the library and the endpoint: RS256 over header.claims with the
        // public key of the certificate, and the claims the protocol asks for.
        let jwt = server
            .last_client_assertion()
            .expect("an assertion was sent");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = String::from_utf8(b64url_decode(parts[0])).unwrap();
        let claims = String::from_utf8(b64url_decode(parts[1])).unwrap();
        assert_eq!(claim(&header, "alg"), "RS256");
        assert_eq!(claim(&header, "typ"), "JWT");
        let cert_der =
            rustls_pki_types::pem::PemObject::from_pem_slice(TEST_CLIENT_CERT_PEM.as_bytes())
                .map(|c: rustls_pki_types::CertificateDer<'static>| c)
                .unwrap();
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der.as_ref());
        assert_eq!(b64url_decode(claim(&header, "x5t")), sha1.as_ref());
        assert_eq!(claim(&claims, "aud"), server.token_endpoint());
        assert_eq!(claim(&claims, "iss"), "app-cert");
        assert_eq!(claim(&claims, "sub"), "app-cert");
        assert_eq!(claim(&claims, "jti").len(), 36);
        let nbf: u64 = claim(&claims, "nbf").parse().unwrap();
        let exp: u64 = claim(&claims, "exp").parse().unwrap();
        assert_eq!(exp - nbf, 600);
        let cert = webpki::EndEntityCert::try_from(&cert_der).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        cert.verify_signature(
            webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &b64url_decode(parts[2]),
        )
        .expect("the assertion's signature verifies with the certificate's public key");
    }
}

#[test]
fn managed_identity_on_an_azure_vm_uses_imds_system_and_user_assigned() {
    let server = auth_server(Duration::from_secs(3600));
    let cfg = base_config(
        &server,
        &[
            ("auth.method", "managed_identity"),
            ("auth.imds_endpoint", &server.imds_endpoint()),
        ],
    );
    send_some(&Client::new(&cfg, None, None).unwrap(), "mi", 2);
    server.register_user_assigned_identity("user-mi-1");
    let cfg = base_config(
        &server,
        &[
            ("auth.method", "managed_identity"),
            ("auth.client_id", "user-mi-1"),
            ("auth.imds_endpoint", &server.imds_endpoint()),
        ],
    );
    send_some(&Client::new(&cfg, None, None).unwrap(), "mi", 2);
    assert_eq!(server.records("db", "mi").len(), 4);
    let s = server.auth_stats();
    assert_eq!(s.imds_requests, 2);
    assert!(s.tokens.iter().any(|t| t.client_id == "user-mi-1"));
}

#[test]
fn managed_identity_on_azure_arc_answers_the_challenge_file() {
    let dir = std::env::temp_dir().join(format!("kedge-arc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(ServerConfig {
        tls: true,
        auth: Some(AuthConfig {
            arc_key_dir: Some(dir.clone()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    let cfg = base_config(
        &server,
        &[
            ("auth.method", "arc"),
            ("auth.arc_endpoint", &server.arc_endpoint()),
            ("auth.arc_key_dir", dir.to_str().unwrap()),
        ],
    );
    send_some(&Client::new(&cfg, None, None).unwrap(), "arc", 2);
    assert_eq!(server.records("db", "arc").len(), 2);
    let s = server.auth_stats();
    assert_eq!((s.arc_challenges, s.arc_token_requests), (1, 1));

    // A challenge file outside the allowed directory is never read.
    let cfg = base_config(
        &server,
        &[
            ("auth.method", "arc"),
            ("auth.arc_endpoint", &server.arc_endpoint()),
            ("auth.arc_key_dir", "/var/opt/azcmagent/tokens/"),
        ],
    );
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "arc", "csv", None).unwrap();
    common::append(&client, d, b"x").unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::AuthRefused, "{}", e.message);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workload_identity_uses_the_federated_token_file_as_assertion() {
    let server = auth_server(Duration::from_secs(3600));
    let file = std::env::temp_dir().join(format!("kedge-federated-{}", std::process::id()));
    std::fs::write(&file, server.issue_federated_token("app-k8s")).unwrap();
    let cfg = base_config(
        &server,
        &[
            ("auth.method", "workload_identity"),
            ("auth.tenant", "test-tenant"),
            ("auth.client_id", "app-k8s"),
            ("auth.federated_token_file", file.to_str().unwrap()),
        ],
    );
    send_some(&Client::new(&cfg, None, None).unwrap(), "wi", 2);
    assert_eq!(server.records("db", "wi").len(), 2);
    assert_eq!(server.auth_stats().issued(GrantKind::Federated), 1);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn tokens_are_refreshed_ahead_of_expiry_during_a_long_run() {
    let server = auth_server(Duration::from_secs(3));
    let cfg = base_config(&server, SECRET_CREDS);
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "long", "csv", None).unwrap();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(8) {
        common::append(&client, d, format!("{n},x").as_bytes()).unwrap();
        client
            .flush()
            .unwrap_or_else(|e| panic!("flush at {:?}: {e}", start.elapsed()));
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.records("db", "long").len(), n);
    let s = server.auth_stats();
    assert!(
        s.secret_requests >= 3,
        "refreshed as the 3 s tokens aged: {} fetches",
        s.secret_requests
    );
    assert_eq!(
        s.expired_token_rejections, 0,
        "a token was used after it expired"
    );
}

#[test]
fn a_401_from_the_service_fetches_a_new_token_once_and_delivers() {
    let server = auth_server(Duration::from_secs(3600));
    let cfg = base_config(&server, SECRET_CREDS);
    let (client, clock) = common::clocked(&cfg, None);
    send_some(&client, "revoked", 1);
    // The cache hands out a token fetched less than a second ago even when forced (so that threads hitting the
    // same 401 do not each fetch one); revoke it after that, a second later on the client's clock.
    clock.advance(Duration::from_secs(1));
    server.expire_all_tokens();
    let d = 0;
    common::append(&client, d, b"after,revocation").unwrap();
    client.flush().unwrap();
    assert_eq!(server.records("db", "revoked").len(), 2);
    assert_eq!(server.auth_stats().secret_requests, 2);
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 401, 200]);
}

#[test]
fn cloud_metadata_gives_the_login_endpoint_when_none_is_configured() {
    let server = Server::start(ServerConfig {
        tls: true,
        auth: Some(AuthConfig {
            metadata: MetadataMode::Serve {
                login_endpoint: None,
            },
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    server.register_secret_client("app-1", SECRET);
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.add_ca_pem(server.ca_pem().unwrap().as_bytes()).unwrap();
    for (k, v) in [
        ("auth.tenant", "test-tenant"),
        ("auth.client_id", "app-1"),
        ("auth.client_secret", SECRET),
        ("proxy.url", "none"),
    ] {
        cfg.set(k, v).unwrap();
    }
    let client = Client::new(&cfg, None, None).unwrap();
    send_some(&client, "meta", 1);
    send_some_more(&client);
    assert_eq!(server.auth_stats().metadata_fetches, 1, "cached");
    assert_eq!(server.records("db", "meta").len(), 2);
}

fn send_some_more(client: &Client) {
    common::append(client, 0, b"1,more").unwrap();
    client.flush().unwrap();
}

#[test]
fn a_kusto_connection_string_describes_cluster_and_credentials() {
    let server = auth_server(Duration::from_secs(3600));
    let cs = format!(
        "Data Source={};Initial Catalog=db;AAD Federated Security=True;Application Client Id=app-1;Application Key={SECRET};Authority Id=test-tenant",
        server.url()
    );
    let mut cfg = Config::default();
    cfg.set("connection_string", &cs).unwrap();
    cfg.add_ca_pem(server.ca_pem().unwrap().as_bytes()).unwrap();
    cfg.set("auth.authority_host", &server.url()).unwrap();
    cfg.set("proxy.url", "none").unwrap();
    send_some(&Client::new(&cfg, None, None).unwrap(), "cs", 2);
    assert_eq!(server.records("db", "cs").len(), 2);
    let e = Config::default()
        .set(
            "connection_string",
            "Data Source=https://x.kusto.windows.net;Colour=blue",
        )
        .unwrap_err();
    assert!(e.message.contains("Colour"), "{}", e.message);
}

#[test]
fn a_callback_supplies_the_token() {
    let server = Server::start(ServerConfig {
        tls: true,
        token: Some("from-the-secure-element".into()),
        ..Default::default()
    })
    .unwrap();
    let mut cfg = base_config(&server, &[]);
    let calls = Arc::new(Mutex::new(0));
    let c2 = calls.clone();
    cfg.auth.set_callback(Arc::new(move || {
        *c2.lock().unwrap() += 1;
        Ok(("from-the-secure-element".to_owned(), 0))
    }));
    send_some(&Client::new(&cfg, None, None).unwrap(), "cb", 2);
    assert_eq!(server.records("db", "cb").len(), 2);
    assert_eq!(*calls.lock().unwrap(), 1);
}

#[test]
fn requests_go_through_a_connect_proxy_with_credentials() {
    let server = auth_server(Duration::from_secs(3600));
    let proxy = ConnectProxy::start(ProxyConfig {
        credentials: Some(("gw".into(), "proxy-pass-99".into())),
        ..Default::default()
    })
    .unwrap();
    let with_creds = proxy.url().replace("http://", "http://gw:proxy-pass-99@");
    let mut cfg = base_config(&server, SECRET_CREDS);
    cfg.set("proxy.url", &with_creds).unwrap();
    send_some(&Client::new(&cfg, None, None).unwrap(), "proxied", 2);
    assert_eq!(server.records("db", "proxied").len(), 2);
    assert!(
        proxy.tunnels() >= 1,
        "the client tunnelled through the proxy"
    );
    assert!(proxy
        .targets()
        .iter()
        .all(|t| t.ends_with(&server.addr().port().to_string())));

    let mut cfg = base_config(&server, &[("auth.token", "x")]);
    cfg.set("proxy.url", &proxy.url()).unwrap();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"1").unwrap();
    assert!(client.flush().is_err(), "407 without proxy credentials");
    assert!(proxy.auth_failures() >= 1);
}

/// Runs real failures and successes with every secret the suite uses, and checks that none of them appears in a
/// log line, a delivery report, an error message, the last error, or a spool file.
#[test]
fn no_secret_appears_in_logs_errors_reports_or_spool_files() {
    let server = auth_server(Duration::from_secs(3600));
    let spool: PathBuf =
        std::env::temp_dir().join(format!("kedge-secret-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let seen = Arc::new(Mutex::new(String::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let log: kusto_edge_core::client::LogFn =
        Arc::new(move |_l: LogLevel, m: &str| s1.lock().unwrap().push_str(m));
    let delivery: kusto_edge_core::client::DeliveryFn =
        Arc::new(move |r: &kusto_edge_core::DeliveryReport<'_>| {
            s2.lock().unwrap().push_str(r.message)
        });
    let secrets = [
        SECRET,
        "wrong-secret-value",
        "static-token-abc123",
        "proxy-pass-99",
    ];
    for creds in [
        vec![
            ("auth.tenant", "test-tenant"),
            ("auth.client_id", "app-1"),
            ("auth.client_secret", SECRET),
        ],
        vec![
            ("auth.tenant", "test-tenant"),
            ("auth.client_id", "app-1"),
            ("auth.client_secret", "wrong-secret-value"),
        ],
        vec![("auth.token", "static-token-abc123")],
    ] {
        let mut cfg = base_config(&server, &creds);
        cfg.set("log.level", "debug").unwrap();
        cfg.set("spool.dir", spool.to_str().unwrap()).unwrap();
        let client = Client::new(&cfg, Some(log.clone()), Some(delivery.clone())).unwrap();
        let d = client
            .add_destination("db", "secrets", "csv", None)
            .unwrap();
        common::append(&client, d, b"1,a").unwrap();
        if let Err(e) = client.flush() {
            seen.lock().unwrap().push_str(&e.message);
        }
        client.flush_to_spool().unwrap_or(());
        seen.lock().unwrap().push_str(&client.last_error());
        seen.lock().unwrap().push_str(&format!("{cfg:?}"));
    }
    let mut flash = Vec::new();
    for dir in [spool.clone(), spool.join("rejected"), spool.join("corrupt")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            flash.extend(std::fs::read(e.path()).unwrap_or_default());
        }
    }
    let text = seen.lock().unwrap().clone();
    assert!(
        text.contains("AADSTS") || text.contains("invalid_client"),
        "the failures were exercised: {text}"
    );
    for s in secrets {
        assert!(
            !text.contains(s),
            "secret {s:?} leaked into logs, reports or errors"
        );
        assert!(
            !flash.windows(s.len()).any(|w| w == s.as_bytes()),
            "secret {s:?} written to flash"
        );
    }
    let _ = std::fs::remove_dir_all(&spool);
}

/// `x.localhost` is a DNS name, whatever this machine's resolver makes of it (glibc hands `*.localhost` to DNS
/// unless nss-myhostname answers first): a token never goes there over plain http. Every way a token could be
/// sent, as cluster or as a credential endpoint, is refused as insecure transport before anything is sent, and a
/// loopback listener on the port the URLs name sees no connection at all. The refusal is the transport rule's
/// (`InsecureTransport`), not a failed name lookup, so the test holds whether the name resolves or not.
#[test]
fn a_token_is_never_sent_over_plain_http_to_a_name_under_localhost() {
    let spy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    spy.set_nonblocking(true).unwrap();
    let port = spy.local_addr().unwrap().port();
    let plain = format!("http://x.localhost:{port}");
    let token = "tok-never-in-clear-5521";

    // The cluster: refused at client creation, with and without plain http to other hosts allowed.
    for remote in ["false", "true"] {
        let mut c = Config::default();
        c.set("url", &plain).unwrap();
        c.set("auth.token", token).unwrap();
        c.set("http.allow_plain", "true").unwrap();
        c.set("http.allow_plain_remote", remote).unwrap();
        c.set("proxy.url", "none").unwrap();
        let e = Client::new(&c, None, None).err().expect("refused");
        assert_eq!(e.kind, ErrorKind::InsecureTransport, "{remote}: {e}");
        assert!(!e.to_string().contains(token), "{e}");
    }
    // The same cluster named in a connection string with a token.
    let mut c = Config::default();
    c.set("http.allow_plain", "true").unwrap();
    c.set("proxy.url", "none").unwrap();
    c.set(
        "connection_string",
        &format!("Data Source={plain};Fed=True;User Token={token}"),
    )
    .unwrap();
    let e = Client::new(&c, None, None).err().expect("refused");
    assert_eq!(e.kind, ErrorKind::InsecureTransport, "{e}");

    // The credential endpoints: refused when they are set.
    let mut c = Config::default();
    c.set("http.allow_plain", "true").unwrap();
    c.set("http.allow_plain_remote", "true").unwrap();
    for key in [
        "auth.authority_host",
        "auth.imds_endpoint",
        "auth.arc_endpoint",
    ] {
        let e = c.set(key, &format!("{plain}/token")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InsecureTransport, "{key}: {e}");
    }

    // Nothing connected: a connection would wait in the listen queue whether or not anyone accepted it.
    match spy.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("something connected to the loopback listener from {from}"),
        Err(e) => panic!("accept: {e}"),
    }
}
