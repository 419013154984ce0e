//! Managed identity: the Azure VM Instance Metadata Service (`/metadata/identity/oauth2/token`)
//! and the Azure Arc agent's variant of it (`/arc/metadata/identity/oauth2/token`), which first
//! answers 401 naming a file only local administrators can read, and wants its contents back.
//!
//! Arc challenge files are single-use and expire after [`ARC_CHALLENGE_TTL`]; a used or expired
//! file is deleted.

use std::io::Write;
use std::time::Instant;

use crate::auth::{unix_now, AuthState, Challenge, GrantKind, ARC_CHALLENGE_TTL, MAX_CHALLENGES};
use crate::http::{Request, Response};

fn error(status: u16, error: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": error, "error_description": description});
    Response::json(status, body.to_string())
}

pub(crate) fn handle(auth: &AuthState, req: &Request, arc: bool) -> Response {
    if !arc {
        auth.inner().stats.imds_requests += 1;
    }
    if req.method != "GET" {
        return error(
            405,
            "invalid_request",
            &format!("Method {} is not allowed; use GET.", req.method),
        );
    }
    let metadata_ok = req
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !metadata_ok {
        return error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if arc {
        match req.header("authorization") {
            None => {
                auth.inner().stats.arc_challenges += 1;
                return challenge(auth);
            }
            Some(given) => {
                auth.inner().stats.arc_token_requests += 1;
                if !redeem(auth, given) {
                    return error(
                        401,
                        "unauthorized_client",
                        "The Authorization header does not hold the contents of a current challenge file: request a new challenge.",
                    );
                }
            }
        }
    }
    if req.query_param("api-version").is_none_or(|v| v.is_empty()) {
        return error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let resource = match req.query_param("resource") {
        Some(r) if !r.is_empty() => r,
        _ => {
            return error(
                400,
                "invalid_request",
                "Required audience parameter not specified",
            )
        }
    };
    if resource.trim_end_matches('/') != auth.cfg.resource.trim_end_matches('/') {
        return error(
            400,
            "invalid_resource",
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant named {}. (this server knows only {})",
                auth.cfg.tenant, auth.cfg.resource
            ),
        );
    }
    let system = auth.cfg.system_identity_client_id.clone();
    let client_id = match req.query_param("client_id").filter(|c| !c.is_empty()) {
        None => system,
        Some(c) if c == system || auth.inner().user_identities.contains(&c) => c,
        Some(_) => return error(400, "invalid_request", "Identity not found"),
    };
    let kind = if arc { GrantKind::Arc } else { GrantKind::Imds };
    let token = auth.issue(kind, &client_id, &resource);
    let secs = auth.lifetime_secs();
    let now = unix_now();
    let s = |v: String| serde_json::Value::from(v).to_string();
    Response::json(
        200,
        format!(
            r#"{{"access_token":{},"client_id":{},"expires_in":"{secs}","expires_on":"{}","ext_expires_in":"{secs}","not_before":"{now}","resource":{},"token_type":"Bearer"}}"#,
            s(token),
            s(client_id),
            now + secs as i64,
            s(resource),
        ),
    )
}

/// Write a fresh secret into a new 0600 file and answer 401 naming it.
fn challenge(auth: &AuthState) -> Response {
    let dir = match auth.key_dir() {
        Ok(d) => d,
        Err(e) => {
            return error(
                500,
                "server_error",
                &format!("cannot create the Arc key directory: {e}"),
            )
        }
    };
    let secret: String = auth
        .random_bytes(32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name: String = auth
        .random_bytes(8)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join(format!("{name}.key"));
    let written = (|| {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(&path)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        return error(
            500,
            "server_error",
            &format!("cannot write {}: {e}", path.display()),
        );
    }
    let realm = std::path::absolute(&path).unwrap_or(path.clone());
    {
        let mut inner = auth.inner();
        if inner.challenges.len() >= MAX_CHALLENGES {
            let oldest = inner
                .challenges
                .iter()
                .min_by_key(|(_, c)| c.created)
                .map(|(k, _)| k.clone());
            if let Some(c) = oldest.and_then(|k| inner.challenges.remove(&k)) {
                let _ = std::fs::remove_file(c.path);
            }
        }
        inner.challenges.insert(
            secret,
            Challenge {
                path,
                created: Instant::now(),
            },
        );
    }
    Response::new(401).header(
        "WWW-Authenticate",
        format!("Basic realm={}", realm.display()),
    )
}

/// Whether `Authorization` holds the contents of a current challenge file; uses it up.
fn redeem(auth: &AuthState, given: &str) -> bool {
    let Some((scheme, secret)) = given.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let mut inner = auth.inner();
    let now = Instant::now();
    let expired: Vec<String> = inner
        .challenges
        .iter()
        .filter(|(_, c)| now.duration_since(c.created) >= ARC_CHALLENGE_TTL)
        .map(|(k, _)| k.clone())
        .collect();
    for k in expired {
        if let Some(c) = inner.challenges.remove(&k) {
            let _ = std::fs::remove_file(c.path);
        }
    }
    match inner.challenges.remove(secret.trim()) {
        Some(c) => {
            let _ = std::fs::remove_file(c.path);
            true
        }
        None => false,
    }
}
