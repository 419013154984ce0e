//! `POST /{tenant}/oauth2/v2.0/token`: the client-credentials grant of Microsoft Entra ID, with a
//! client secret, a certificate-signed client assertion, or a federated (workload identity) token.
//! Error codes and texts follow the AADSTS errors clients meet; those not marked in README.md as
//! verified are plausible, not copied from the service.

use crate::auth::{unix_now, AuthState, GrantKind};
use crate::http::{percent_decode, Request, Response};
use crate::jwt::{self, AssertionError};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A refusal: (status, `error`, AADSTS number, text).
struct Refusal(u16, &'static str, u32, String);

fn invalid_request(code: u32, text: impl Into<String>) -> Refusal {
    Refusal(400, "invalid_request", code, text.into())
}

fn invalid_client(code: u32, text: impl Into<String>) -> Refusal {
    Refusal(401, "invalid_client", code, text.into())
}

fn missing(param: &str) -> Refusal {
    invalid_request(
        900144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

/// `application/x-www-form-urlencoded` pairs; the first of a repeated name wins.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// `2024-01-31 12:00:00Z`, Entra ID's `timestamp`.
fn aad_timestamp() -> String {
    let t = crate::server::timestamp_now();
    format!("{}Z", t[..19].replace('T', " "))
}

pub(crate) fn handle(auth: &AuthState, req: &Request, tenant: &str) -> Response {
    let correlation = req
        .header("client-request-id")
        .map(str::to_string)
        .unwrap_or_else(|| auth.uuid());
    let resp = match grant(auth, req, tenant) {
        Ok(body) => Response::json(200, body),
        Err(Refusal(status, error, code, text)) => {
            auth.inner().stats.refused_token_requests += 1;
            let trace = auth.uuid();
            let ts = aad_timestamp();
            let body = serde_json::json!({
                "error": error,
                "error_description": format!(
                    "AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {ts}"
                ),
                "error_codes": [code],
                "timestamp": ts,
                "trace_id": trace,
                "correlation_id": correlation,
                "error_uri": format!("{}/error?code={code}", auth.server_url),
            });
            Response::json(status, body.to_string())
        }
    };
    resp.header("Cache-Control", "no-store, no-cache")
        .header("Pragma", "no-cache")
        .header("client-request-id", correlation)
}

fn grant(auth: &AuthState, req: &Request, tenant: &str) -> Result<String, Refusal> {
    if req.method != "POST" {
        return Err(invalid_request(
            900561,
            format!(
                "The endpoint only accepts POST, OPTIONS requests. Received a {} request.",
                req.method
            ),
        ));
    }
    let is_form = req
        .header("content-type")
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let form = if is_form {
        parse_form(&req.body)
    } else {
        Vec::new()
    };
    let param = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };

    let secret = param("client_secret");
    let assertion = param("client_assertion");
    let federated_client = assertion.and_then(|a| auth.inner().federated.get(a).cloned());
    {
        let mut inner = auth.inner();
        if let Some(a) = assertion {
            inner.last_assertion = Some(a.to_string());
        }
        match (secret, assertion, &federated_client) {
            (_, Some(_), Some(_)) => inner.stats.federated_requests += 1,
            (_, Some(_), None) => inner.stats.assertion_requests += 1,
            (Some(_), None, _) => inner.stats.secret_requests += 1,
            (None, None, _) => {}
        }
    }

    if tenant != auth.cfg.tenant {
        return Err(invalid_request(
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        ));
    }
    let grant_type = param("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(Refusal(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = param("client_id").ok_or_else(|| missing("client_id"))?;
    let (client_secret, client_cert) = {
        let inner = auth.inner();
        match inner.clients.get(client_id) {
            Some(c) => (c.secret.clone(), c.cert_der.clone()),
            None if federated_client.is_some() => (None, None),
            None => {
                return Err(Refusal(
                    400,
                    "unauthorized_client",
                    700016,
                    format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
                ))
            }
        }
    };
    let scope = param("scope").ok_or_else(|| missing("scope"))?;
    let want_scope = format!("{}/.default", auth.cfg.resource);
    if scope != want_scope {
        return Err(if scope.ends_with("/.default") {
            Refusal(
                400,
                "invalid_scope",
                500011,
                format!("The resource principal named {} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. (this server knows only {want_scope})", scope.trim_end_matches("/.default")),
            )
        } else {
            Refusal(
                400,
                "invalid_scope",
                1002012,
                format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
            )
        });
    }

    let kind = match (secret, assertion) {
        (Some(_), Some(_)) => {
            return Err(invalid_request(
                90014,
                "Send exactly one client credential: client_secret or client_assertion.",
            ))
        }
        (None, None) => {
            return Err(invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ))
        }
        (Some(s), None) => {
            if client_secret.as_deref() != Some(s) {
                return Err(invalid_client(
                    7000215,
                    format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
                ));
            }
            GrantKind::Secret
        }
        (None, Some(a)) => {
            match param("client_assertion_type") {
                None => return Err(missing("client_assertion_type")),
                Some(JWT_BEARER) => {}
                Some(other) => {
                    return Err(invalid_request(
                        50027,
                        format!("client_assertion_type '{other}' is not supported; use {JWT_BEARER}."),
                    ))
                }
            }
            match &federated_client {
                Some(owner) if owner == client_id => GrantKind::Federated,
                Some(_) => {
                    return Err(invalid_client(
                        700213,
                        format!("No matching federated identity record found for presented assertion subject for application '{client_id}'."),
                    ))
                }
                None => {
                    let Some(cert) = client_cert else {
                        return Err(invalid_client(
                            700027,
                            format!("Client assertion failed signature validation. (Reason - The key was not found.) No certificate is registered for application '{client_id}'."),
                        ));
                    };
                    check_assertion(auth, req, tenant, client_id, &cert, a)?;
                    GrantKind::Assertion
                }
            }
        }
    };

    let token = auth.issue(kind, client_id, &auth.cfg.resource);
    let secs = auth.lifetime_secs();
    let n = if auth.cfg.expires_in_as_string {
        format!("\"{secs}\"")
    } else {
        secs.to_string()
    };
    Ok(format!(
        r#"{{"token_type":"Bearer","expires_in":{n},"ext_expires_in":{n},"access_token":{}}}"#,
        serde_json::Value::from(token)
    ))
}

fn check_assertion(
    auth: &AuthState,
    req: &Request,
    tenant: &str,
    client_id: &str,
    cert: &[u8],
    assertion: &str,
) -> Result<(), Refusal> {
    // The endpoint URL as the client used it: the Host it sent, this server's own URL, and the
    // login endpoint the metadata advertises all name it.
    let scheme = if auth.server_url.starts_with("https:") {
        "https"
    } else {
        "http"
    };
    let path = format!("/{tenant}/oauth2/v2.0/token");
    let mut audiences = vec![format!("{}{path}", auth.server_url)];
    if let Some(host) = req.header("host") {
        audiences.push(format!("{scheme}://{host}{path}"));
    }
    if let crate::auth::MetadataMode::Serve {
        login_endpoint: Some(l),
    } = &auth.cfg.metadata
    {
        audiences.push(format!("{}{path}", l.trim_end_matches('/')));
    }
    let want = jwt::Expected {
        client_id,
        cert_der: cert,
        audiences: &audiences,
        now: unix_now(),
    };
    jwt::verify_assertion(assertion, &want).map(|_| ()).map_err(|e| match e {
        AssertionError::Malformed(m) => {
            invalid_request(50027, format!("JWT token is invalid or malformed: {m}."))
        }
        AssertionError::Algorithm(m) => invalid_client(5002738, format!("Invalid JWT token. {m}.")),
        AssertionError::UnknownKey(t) => invalid_client(
            700027,
            format!("Client assertion failed signature validation. (Reason - The key was not found., Thumbprint of key used by client: '{t}', Found key 'Start=..., End=...', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.)"),
        ),
        AssertionError::CertificateChain => invalid_client(
            700027,
            "Client assertion failed signature validation. (Reason - x5c does not hold the registered certificate.)",
        ),
        AssertionError::Audience(a) => invalid_client(
            700212,
            format!("The audience {a} of the client assertion is not the token endpoint; expected one of {audiences:?}."),
        ),
        AssertionError::Issuer(m) => invalid_client(
            700021,
            format!("Client assertion application identifier doesn't match 'client_id' parameter ({m}, client_id '{client_id}')."),
        ),
        AssertionError::MissingClaim(c) => {
            invalid_client(50027, format!("Invalid JWT token. The claim '{c}' is missing or empty."))
        }
        AssertionError::TimeRange(m) => invalid_client(
            700024,
            format!("Client assertion is not within its valid time range ({m})."),
        ),
        AssertionError::Signature => invalid_client(
            700027,
            "Client assertion failed signature validation. (Reason - The signature does not match the registered certificate.)",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form(b"a=1+2&scope=https%3A%2F%2Fx%2F.default&empty=&flag");
        assert_eq!(f[0], ("a".into(), "1 2".into()));
        assert_eq!(f[1].1, "https://x/.default");
        assert_eq!(f[2], ("empty".into(), "".into()));
        assert_eq!(f[3], ("flag".into(), "".into()));
    }

    #[test]
    fn timestamp_shape() {
        let t = aad_timestamp();
        assert_eq!(t.len(), "2024-01-31 12:00:00Z".len(), "{t}");
        assert_eq!(&t[10..11], " ");
    }
}
