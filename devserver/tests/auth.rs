//! Authentication and connectivity endpoints over real loopback sockets: the Entra ID token
//! endpoint, tokens on ingest, IMDS, Azure Arc, auth metadata, and the CONNECT/forward proxy.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{connect, connect_tls, sdk_headers, tls_config, Conn, Resp};
use kusto_devserver::{
    b64, gzip::gzip, jwt, AuthConfig, ConnectProxy, GrantKind, MetadataMode, ProxyConfig, Server,
    ServerConfig, TEST_CLIENT_CERT_PEM, TEST_CLIENT_KEY_PKCS8_PEM,
};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};

const RESOURCE: &str = "https://kusto.kusto.windows.net";
const SCOPE: &str = "https://kusto.kusto.windows.net/.default";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn start_auth(auth: AuthConfig) -> Server {
    Server::start(ServerConfig {
        auth: Some(auth),
        ..ServerConfig::default()
    })
    .unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn token_request(s: &Server, pairs: &[(&str, &str)]) -> Resp {
    connect(s.addr())
        .request(
            "POST",
            "/test-tenant/oauth2/v2.0/token",
            &[(
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            form_encode(pairs).as_bytes(),
        )
        .unwrap()
}

fn secret_grant(s: &Server, id: &str, secret: &str) -> Resp {
    token_request(
        s,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", SCOPE),
        ],
    )
}

fn assertion_grant(s: &Server, id: &str, assertion: &str) -> Resp {
    token_request(
        s,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", SCOPE),
        ],
    )
}

fn cert_der() -> Vec<u8> {
    CertificateDer::from_pem_slice(TEST_CLIENT_CERT_PEM.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn sign(header: &Value, claims: &Value) -> String {
    let key = PrivatePkcs8KeyDer::from_pem_slice(TEST_CLIENT_KEY_PKCS8_PEM.as_bytes()).unwrap();
    let pair = RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()).unwrap();
    let input = format!(
        "{}.{}",
        b64::url_encode(header.to_string().as_bytes()),
        b64::url_encode(claims.to_string().as_bytes())
    );
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", b64::url_encode(&sig))
}

fn good_header() -> Value {
    json!({"alg": "RS256", "typ": "JWT", "x5t": jwt::thumbprint(&cert_der())})
}

fn good_claims(s: &Server, id: &str) -> Value {
    let t = now();
    json!({
        "aud": s.token_endpoint(), "iss": id, "sub": id, "jti": "3f6b1c8e-1d2a-4e5f-9a8b-7c6d5e4f3a2b",
        "nbf": t, "iat": t, "exp": t + 600,
    })
}

fn error_code(r: &Resp) -> (String, u64) {
    let j = r.json();
    (
        j["error"].as_str().unwrap().to_string(),
        j["error_codes"][0].as_u64().unwrap(),
    )
}

fn ingest_with(s: &Server, token: &str) -> Resp {
    let mut h = sdk_headers("KEC.auth;1");
    h.push(("Authorization".into(), format!("Bearer {token}")));
    connect(s.addr())
        .request(
            "POST",
            "/v1/rest/ingest/db/T?streamFormat=csv",
            &h,
            b"a,1\n",
        )
        .unwrap()
}

fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Resp {
    let h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    connect(addr).request("GET", target, &h, b"").unwrap()
}

#[test]
fn secret_grant_issues_a_bearer_token_and_a_wrong_secret_is_invalid_client() {
    let s = start_auth(AuthConfig::default());
    s.register_secret_client("app-1", "s3cret +/=");
    let ok = secret_grant(&s, "app-1", "s3cret +/=");
    assert_eq!(ok.status, 200, "{}", ok.text());
    let j = ok.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["expires_in"], 3600);
    assert_eq!(j["ext_expires_in"], 3600);
    let token = j["access_token"].as_str().unwrap();
    assert!(token.len() > 40);
    assert_eq!(
        j.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["access_token", "expires_in", "ext_expires_in", "token_type"]
    );

    let bad = secret_grant(&s, "app-1", "wrong");
    assert_eq!(bad.status, 401);
    let j = bad.json();
    assert_eq!(error_code(&bad), ("invalid_client".into(), 7000215));
    assert!(j["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS7000215: Invalid client secret provided."));
    for k in ["timestamp", "trace_id", "correlation_id"] {
        assert!(j[k].as_str().is_some_and(|v| !v.is_empty()), "{k} in {j}");
    }

    let st = s.auth_stats();
    assert_eq!((st.secret_requests, st.refused_token_requests), (2, 1));
    assert_eq!(st.issued(GrantKind::Secret), 1);
    assert_eq!(st.tokens[0].token, token);
    assert_eq!(st.tokens[0].client_id, "app-1");
}

#[test]
fn token_endpoint_refuses_unknown_tenant_client_scope_and_grant() {
    let s = start_auth(AuthConfig::default());
    s.register_secret_client("app-1", "x");
    let r = connect(s.addr())
        .request(
            "POST",
            "/other-tenant/oauth2/v2.0/token",
            &[(
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            b"grant_type=client_credentials&client_id=app-1&client_secret=x",
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), ("invalid_request".into(), 90002));

    let r = secret_grant(&s, "nobody", "x");
    assert_eq!(error_code(&r), ("unauthorized_client".into(), 700016));

    let base = [
        ("grant_type", "client_credentials"),
        ("client_id", "app-1"),
        ("client_secret", "x"),
    ];
    let r = token_request(&s, &[&base[..], &[("scope", RESOURCE)]].concat());
    assert_eq!(error_code(&r), ("invalid_scope".into(), 1002012));
    let r = token_request(
        &s,
        &[&base[..], &[("scope", "https://other.example/.default")]].concat(),
    );
    assert_eq!(error_code(&r), ("invalid_scope".into(), 500011));
    let r = token_request(&s, &base);
    assert_eq!(error_code(&r), ("invalid_request".into(), 900144));
    let r = token_request(
        &s,
        &[
            ("grant_type", "password"),
            ("client_id", "app-1"),
            ("scope", SCOPE),
        ],
    );
    assert_eq!(error_code(&r), ("unsupported_grant_type".into(), 70003));
    let r = token_request(
        &s,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("scope", SCOPE),
        ],
    );
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), ("invalid_client".into(), 7000218));
}

#[test]
fn token_endpoint_can_send_expires_in_as_a_string() {
    let s = start_auth(AuthConfig {
        expires_in_as_string: true,
        token_lifetime: Duration::from_secs(1800),
        ..AuthConfig::default()
    });
    s.register_secret_client("app", "pw");
    let j = secret_grant(&s, "app", "pw").json();
    assert_eq!(j["expires_in"], "1800");
    assert_eq!(j["ext_expires_in"], "1800");
}

#[test]
fn certificate_assertion_is_accepted_and_kept_for_inspection() {
    let s = start_auth(AuthConfig::default());
    s.register_cert_client("cert-app", TEST_CLIENT_CERT_PEM);
    let a = sign(&good_header(), &good_claims(&s, "cert-app"));
    let r = assertion_grant(&s, "cert-app", &a);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["access_token"].as_str().is_some());
    assert_eq!(s.last_client_assertion().as_deref(), Some(a.as_str()));

    // With x5c, and the endpoint named by the Host the client sent (localhost, not 127.0.0.1).
    let mut h = good_header();
    h["x5c"] = json!([b64::encode(&cert_der())]);
    let mut c = good_claims(&s, "cert-app");
    let host = format!("localhost:{}", s.addr().port());
    c["aud"] = json!(format!("http://{host}/test-tenant/oauth2/v2.0/token"));
    let body = form_encode(&[
        ("grant_type", "client_credentials"),
        ("client_id", "cert-app"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", &sign(&h, &c)),
        ("scope", SCOPE),
    ]);
    let mut conn = connect(s.addr());
    conn.send_raw(
        format!(
            "POST /test-tenant/oauth2/v2.0/token HTTP/1.1\r\nHost: {host}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let r = conn.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let st = s.auth_stats();
    assert_eq!(
        (st.assertion_requests, st.issued(GrantKind::Assertion)),
        (2, 2)
    );
}

#[test]
fn assertions_with_bad_signature_audience_times_or_thumbprint_are_refused() {
    let s = start_auth(AuthConfig::default());
    s.register_cert_client("cert-app", TEST_CLIENT_CERT_PEM);
    let refused = |a: &str, want: u64| {
        let r = assertion_grant(&s, "cert-app", a);
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(
            error_code(&r),
            ("invalid_client".into(), want),
            "{}",
            r.text()
        );
    };

    let good = sign(&good_header(), &good_claims(&s, "cert-app"));
    // Bad signature: the same header and claims, one signature byte changed.
    let (input, sig) = good.rsplit_once('.').unwrap();
    let mut raw = b64::url_decode(sig).unwrap();
    raw[10] ^= 1;
    refused(&format!("{input}.{}", b64::url_encode(&raw)), 700027);
    // Claims changed after signing.
    let (h, _) = input.split_once('.').unwrap();
    let mut c = good_claims(&s, "cert-app");
    c["exp"] = json!(now() + 900);
    let forged = format!("{h}.{}.{sig}", b64::url_encode(c.to_string().as_bytes()));
    refused(&forged, 700027);

    let mut c = good_claims(&s, "cert-app");
    c["aud"] = json!("https://login.microsoftonline.com/test-tenant/oauth2/v2.0/token");
    refused(&sign(&good_header(), &c), 700212);

    let mut c = good_claims(&s, "cert-app");
    c["exp"] = json!(now() - 5);
    refused(&sign(&good_header(), &c), 700024);
    let mut c = good_claims(&s, "cert-app");
    c["nbf"] = json!(now() + 600);
    c["exp"] = json!(now() + 900);
    refused(&sign(&good_header(), &c), 700024);
    let mut c = good_claims(&s, "cert-app");
    c["exp"] = json!(now() + 7200);
    refused(&sign(&good_header(), &c), 700024);

    let mut h = good_header();
    h["x5t"] = json!(jwt::thumbprint(b"some other certificate"));
    refused(&sign(&h, &good_claims(&s, "cert-app")), 700027);

    let mut c = good_claims(&s, "cert-app");
    c["iss"] = json!("someone-else");
    refused(&sign(&good_header(), &c), 700021);
    let mut c = good_claims(&s, "cert-app");
    c.as_object_mut().unwrap().remove("jti");
    refused(&sign(&good_header(), &c), 50027);
    let mut h = good_header();
    h["alg"] = json!("HS256");
    refused(&sign(&h, &good_claims(&s, "cert-app")), 5002738);

    let r = assertion_grant(&s, "cert-app", "not-a-jwt");
    assert_eq!(error_code(&r), ("invalid_request".into(), 50027));
    assert_eq!(s.auth_stats().issued(GrantKind::Assertion), 0);
}

#[test]
fn federated_token_is_accepted_for_its_client_only() {
    let s = start_auth(AuthConfig::default());
    let fed = s.issue_federated_token("wi-app");
    assert_eq!(fed.split('.').count(), 3);
    let r = assertion_grant(&s, "wi-app", &fed);
    assert_eq!(r.status, 200, "{}", r.text());
    s.register_secret_client("other-app", "x");
    let r = assertion_grant(&s, "other-app", &fed);
    assert_eq!(error_code(&r), ("invalid_client".into(), 700213));
    let st = s.auth_stats();
    assert_eq!(
        (st.federated_requests, st.issued(GrantKind::Federated)),
        (2, 1)
    );
    assert_eq!(s.last_client_assertion(), Some(fed));
}

#[test]
fn issued_tokens_are_accepted_on_ingest_until_they_expire() {
    let s = Server::start(ServerConfig {
        token: Some("static-token".into()),
        auth: Some(AuthConfig {
            token_lifetime: Duration::from_secs(2),
            ..AuthConfig::default()
        }),
        ..ServerConfig::default()
    })
    .unwrap();
    s.register_secret_client("app", "pw");
    let j = secret_grant(&s, "app", "pw").json();
    assert_eq!(j["expires_in"], 2);
    let token = j["access_token"].as_str().unwrap().to_string();
    assert_eq!(ingest_with(&s, &token).status, 200);
    assert_eq!(ingest_with(&s, "static-token").status, 200);
    let r = ingest_with(&s, "made-up");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    std::thread::sleep(Duration::from_millis(2100));
    let r = ingest_with(&s, &token);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "Unauthorized");
    assert_eq!(s.auth_stats().expired_token_rejections, 1);

    // A fresh token works, until every token is expired at once.
    let fresh = secret_grant(&s, "app", "pw").json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ingest_with(&s, &fresh).status, 200);
    s.expire_all_tokens();
    assert_eq!(ingest_with(&s, &fresh).status, 401);
    assert_eq!(ingest_with(&s, "static-token").status, 200);
    let st = s.auth_stats();
    assert_eq!(
        (st.expired_token_rejections, st.invalid_token_rejections),
        (2, 1)
    );
    assert_eq!(s.stats().ingested_requests, 4);
}

#[test]
fn without_auth_config_nothing_changes() {
    let s = Server::start(ServerConfig::default()).unwrap();
    s.register_secret_client("app", "pw");
    assert_eq!(secret_grant(&s, "app", "pw").status, 404);
    let r = get(s.addr(), "/v1/rest/auth/metadata", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "NotFound");
    let mut c = connect(s.addr());
    let r = c.ingest("db", "T", "csv", "KEC.noauth;1", b"a\n").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn imds_needs_the_metadata_header_and_answers_numbers_as_strings() {
    let s = start_auth(AuthConfig::default());
    let q = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fkusto.kusto.windows.net";
    let r = get(s.addr(), q, &[]);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#
    );

    let r = get(s.addr(), q, &[("Metadata", "true")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    for k in ["expires_in", "expires_on", "ext_expires_in", "not_before"] {
        assert!(j[k].is_string(), "{k} must be a string: {j}");
    }
    assert_eq!(j["expires_in"], "3600");
    let on: i64 = j["expires_on"].as_str().unwrap().parse().unwrap();
    assert!((on - now() - 3600).abs() <= 2);
    assert_eq!(j["resource"], RESOURCE);
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["client_id"], s.system_identity_client_id().as_str());
    let token = j["access_token"].as_str().unwrap().to_string();
    assert_eq!(ingest_with(&s, &token).status, 200);

    let r = get(
        s.addr(),
        &format!("{q}&client_id=uami-1"),
        &[("Metadata", "true")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error_description"], "Identity not found");
    s.register_user_assigned_identity("uami-1");
    let r = get(
        s.addr(),
        &format!("{q}&client_id=uami-1"),
        &[("Metadata", "true")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["client_id"], "uami-1");

    let r = get(
        s.addr(),
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fother",
        &[("Metadata", "true")],
    );
    assert_eq!(r.json()["error"], "invalid_resource");
    let st = s.auth_stats();
    assert_eq!((st.imds_requests, st.issued(GrantKind::Imds)), (5, 2));
}

#[test]
fn arc_challenge_file_is_exchanged_for_a_token_once() {
    let dir = std::env::temp_dir().join(format!("devserver-arc-test-{}", std::process::id()));
    let s = start_auth(AuthConfig {
        arc_key_dir: Some(dir.clone()),
        ..AuthConfig::default()
    });
    let q = "/arc/metadata/identity/oauth2/token?api-version=2020-06-01&resource=https%3A%2F%2Fkusto.kusto.windows.net";
    assert_eq!(get(s.addr(), q, &[]).status, 400, "Metadata header needed");

    let r = get(s.addr(), q, &[("Metadata", "true")]);
    assert_eq!(r.status, 401);
    let realm = r
        .header("www-authenticate")
        .unwrap()
        .strip_prefix("Basic realm=")
        .unwrap()
        .to_string();
    let path = std::path::PathBuf::from(&realm);
    assert!(path.is_absolute() && path.starts_with(&dir), "{realm}");
    assert_eq!(path.extension().unwrap(), "key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let secret = std::fs::read_to_string(&path).unwrap();

    let wrong = get(
        s.addr(),
        q,
        &[
            ("Metadata", "true"),
            ("Authorization", "Basic not-the-secret"),
        ],
    );
    assert_eq!(wrong.status, 401);

    let auth = format!("Basic {secret}");
    let r = get(
        s.addr(),
        q,
        &[("Metadata", "true"), ("Authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["expires_in"], "3600");
    assert!(j["expires_on"].is_string() && j["not_before"].is_string());
    assert_eq!(j["resource"], RESOURCE);
    assert_eq!(
        ingest_with(&s, j["access_token"].as_str().unwrap()).status,
        200
    );
    assert!(!path.exists(), "a used challenge file is deleted");
    let again = get(
        s.addr(),
        q,
        &[("Metadata", "true"), ("Authorization", &auth)],
    );
    assert_eq!(again.status, 401, "challenge files are single-use");

    let st = s.auth_stats();
    assert_eq!((st.arc_challenges, st.arc_token_requests), (1, 3));
    assert_eq!(st.issued(GrantKind::Arc), 1);
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn auth_metadata_is_served_or_404_and_counted() {
    let s = start_auth(AuthConfig::default());
    let r = get(s.addr(), "/v1/rest/auth/metadata", &[]);
    assert_eq!(r.status, 200);
    let want = format!(
        concat!(
            r#"{{"AzureAD":{{"LoginEndpoint":"{u}","LoginMfaRequired":false,"#,
            r#""KustoClientAppId":"db662dc1-0cfe-4e1c-a843-19a68e65be58","#,
            r#""KustoClientRedirectUri":"https://microsoft/kustoclient","#,
            r#""KustoServiceResourceId":"https://kusto.kusto.windows.net","#,
            r#""FirstPartyAuthorityUrl":"{u}/f8cdef31-a31e-4b4a-93e4-5f571e91255a"}},"dSTS":{{}}}}"#
        ),
        u = s.url()
    );
    assert_eq!(r.text(), want);
    get(s.addr(), "/v1/rest/auth/metadata", &[]);
    assert_eq!(s.auth_stats().metadata_fetches, 2);

    let s = start_auth(AuthConfig {
        metadata: MetadataMode::Serve {
            login_endpoint: Some("https://login.example".into()),
        },
        ..AuthConfig::default()
    });
    let j = get(s.addr(), "/v1/rest/auth/metadata", &[]).json();
    assert_eq!(j["AzureAD"]["LoginEndpoint"], "https://login.example");

    let s = start_auth(AuthConfig {
        metadata: MetadataMode::NotFound,
        ..AuthConfig::default()
    });
    assert_eq!(get(s.addr(), "/v1/rest/auth/metadata", &[]).status, 404);
    assert_eq!(s.auth_stats().metadata_fetches, 1);
}

/// Send `CONNECT target` on a fresh connection to the proxy; the status line and the stream.
fn connect_via(
    proxy: &ConnectProxy,
    target: &str,
    auth: Option<(&str, &str)>,
) -> (String, TcpStream) {
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((u, p)) = auth {
        req.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            b64::encode(format!("{u}:{p}").as_bytes())
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // Byte by byte, so nothing of the tunnel is read here.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    (String::from_utf8(head).unwrap(), s)
}

#[test]
fn connect_proxy_tunnels_tls_to_the_server_with_credentials() {
    let s = Server::start(ServerConfig {
        tls: true,
        auth: Some(AuthConfig::default()),
        ..ServerConfig::default()
    })
    .unwrap();
    s.register_secret_client("app", "pw");
    let p = ConnectProxy::start(ProxyConfig {
        credentials: Some(("user".into(), "p@ss".into())),
        ..ProxyConfig::default()
    })
    .unwrap();
    assert!(p.url().starts_with("http://127.0.0.1:"));
    let target = format!("localhost:{}", s.addr().port());

    let (head, _) = connect_via(&p, &target, None);
    assert!(head.starts_with("HTTP/1.1 407 "), "{head}");
    assert!(head.contains("Proxy-Authenticate: Basic realm=\"kusto-edge test proxy\""));
    let (head, _) = connect_via(&p, &target, Some(("user", "wrong")));
    assert!(head.starts_with("HTTP/1.1 407 "), "{head}");

    let (head, stream) = connect_via(&p, &target, Some(("user", "p@ss")));
    assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
    let cfg = tls_config(s.ca_pem().as_deref());
    let tls =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut c = Conn {
        r: std::io::BufReader::new(Box::new(rustls::StreamOwned::new(tls, stream))),
    };
    // Token and ingest, both through the tunnel, on one TLS connection.
    let r = c
        .request(
            "POST",
            "/test-tenant/oauth2/v2.0/token",
            &[(
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            form_encode(&[
                ("grant_type", "client_credentials"),
                ("client_id", "app"),
                ("client_secret", "pw"),
                ("scope", SCOPE),
            ])
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let mut h = sdk_headers("KEC.proxy;1");
    h.push(("Authorization".into(), format!("Bearer {token}")));
    h.push(("Content-Encoding".into(), "gzip".into()));
    let r = c
        .request(
            "POST",
            "/v1/rest/ingest/db/T?streamFormat=csv",
            &h,
            &gzip(b"x,1\ny,2\n"),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.records("db", "T").len(), 2);
    assert_eq!(p.tunnels(), 1);
    assert_eq!(p.targets(), vec![target]);
    assert_eq!(p.auth_failures(), 2);
    // Not via the proxy: the TLS server still works directly.
    let mut direct = connect_tls(s.addr(), tls_config(s.ca_pem().as_deref()), "localhost");
    assert_eq!(
        direct
            .request("GET", "/v1/rest/auth/metadata", &[], b"")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn connect_proxy_refuses_non_loopback_targets_without_connecting() {
    let p = ConnectProxy::start(ProxyConfig::default()).unwrap();
    for target in [
        "10.0.0.1:443",
        "example.com:443",
        "localhost.example.com:443",
    ] {
        let (head, _) = connect_via(&p, target, None);
        assert!(head.starts_with("HTTP/1.1 403 "), "{target}: {head}");
    }
    assert_eq!(p.tunnels(), 0);
    assert!(p.targets().is_empty(), "nothing was connected");
    assert_eq!(p.refused_targets().len(), 3);
}

#[test]
fn proxy_forwards_plain_http_requests_with_absolute_uris() {
    let s = Server::start(ServerConfig::default()).unwrap();
    let p = ConnectProxy::start(ProxyConfig {
        credentials: Some(("u".into(), "p".into())),
        ..ProxyConfig::default()
    })
    .unwrap();
    let port = s.addr().port();
    let uri = format!("http://127.0.0.1:{port}/v1/rest/ingest/db/T?streamFormat=csv");
    let mut h = sdk_headers("KEC.forward;1");
    let r = connect(p.addr())
        .request("POST", &uri, &h, b"a\nb\n")
        .unwrap();
    assert_eq!(r.status, 407);

    h.push((
        "Proxy-Authorization".into(),
        format!("Basic {}", b64::encode(b"u:p")),
    ));
    let r = connect(p.addr())
        .request("POST", &uri, &h, b"a\nb\n")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.records("db", "T"), vec![b"a".to_vec(), b"b".to_vec()]);
    let log = s.requests();
    assert!(
        !log[0]
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization")),
        "credentials for the proxy are not passed on"
    );
    assert_eq!(p.forwarded(), 1);
    assert_eq!(p.targets(), vec![format!("127.0.0.1:{port}")]);

    let r = connect(p.addr())
        .request("GET", "http://10.0.0.1/x", &h, b"")
        .unwrap();
    assert_eq!(r.status, 403);
}
