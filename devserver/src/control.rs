//! `/_dev/...`: steering the server over HTTP, for tests that run it as a separate process.
//! No auth; plain-text errors. These paths never count as ingest requests.

use std::time::Duration;

use crate::faults::{self, Faults};
use crate::http::{Request, Response};
use crate::server::{Reply, Shared};

fn ok(text: &str) -> Reply {
    Reply::Send(Response::text(200, format!("{text}\n")))
}

fn refuse(status: u16, text: String) -> Reply {
    Reply::Send(Response::text(status, format!("{text}\n")))
}

pub(crate) fn handle(shared: &Shared, req: &Request) -> Reply {
    let body = String::from_utf8_lossy(&req.body);
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/_dev/fault") => {
            let parsed: Result<Vec<_>, String> = body
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(faults::parse_fault)
                .collect();
            match parsed {
                Ok(list) => {
                    let n = list.len();
                    for f in list {
                        shared.push_fault(f);
                    }
                    ok(&format!("queued {n} fault(s)"))
                }
                Err(e) => refuse(400, e),
            }
        }
        ("POST", "/_dev/random-faults") => {
            let seed = match req.query_param("seed") {
                Some(s) => match s.parse() {
                    Ok(n) => n,
                    Err(_) => return refuse(400, format!("bad seed {s:?}")),
                },
                None => shared.seed(),
            };
            match faults::parse_random_spec(&body) {
                Ok(random) => {
                    let n = random.len();
                    shared.set_random(Faults { seed, random });
                    ok(&format!("{n} random fault(s), seed {seed}"))
                }
                Err(e) => refuse(400, e),
            }
        }
        ("GET", "/_dev/records") => {
            let (Some(db), Some(table)) = (req.query_param("db"), req.query_param("table")) else {
                return refuse(400, "need ?db=D&table=T".into());
            };
            let mut out = Vec::new();
            for r in shared.records(&db, &table) {
                out.extend_from_slice(&r);
                out.push(b'\n');
            }
            Reply::Send(
                Response::new(200)
                    .header("Content-Type", "text/plain; charset=utf-8")
                    .body(out),
            )
        }
        ("GET", "/_dev/stats") => Reply::Send(Response::json(200, shared.stats().to_json())),
        ("GET", "/_dev/requests") => {
            let list: Vec<_> = shared
                .requests()
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "database": r.database, "table": r.table, "format": r.format, "mapping": r.mapping,
                        "client_request_id": r.client_request_id, "chunk_id": r.chunk_id,
                        "wire_bytes": r.wire_bytes,
                        "raw_bytes": r.raw_bytes, "records": r.records, "status": r.status,
                        "ingested": r.ingested, "gzip_ok": r.gzip_ok,
                    })
                })
                .collect();
            Reply::Send(Response::json(
                200,
                serde_json::Value::Array(list).to_string(),
            ))
        }
        ("GET", "/_dev/dm/stats") => match &shared.dm {
            Some(dm) => Reply::Send(Response::json(200, dm.stats().to_json())),
            None => refuse(404, "no DM (start with --azurite)".into()),
        },
        ("GET", "/_dev/dm/violations") => match &shared.dm {
            Some(dm) => Reply::Send(Response::json(
                200,
                serde_json::Value::from(dm.violations()).to_string(),
            )),
            None => refuse(404, "no DM (start with --azurite)".into()),
        },
        ("GET", "/_dev/dm/ingestions") => match &shared.dm {
            Some(dm) => {
                let list: Vec<_> = dm
                    .ingestions()
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": i.id, "database": i.database, "table": i.table, "format": i.format,
                            "blob": i.blob, "raw_size_declared": i.raw_size_declared,
                            "raw_size_actual": i.raw_size_actual, "records": i.records,
                            "outcome": i.outcome,
                        })
                    })
                    .collect();
                Reply::Send(Response::json(
                    200,
                    serde_json::Value::Array(list).to_string(),
                ))
            }
            None => refuse(404, "no DM (start with --azurite)".into()),
        },
        ("POST", "/_dev/dm/faults") => match &shared.dm {
            Some(dm) => match crate::dm::parse_faults(&body) {
                Ok(f) => {
                    let text = format!("{f:?}");
                    dm.set_faults(f);
                    ok(&text)
                }
                Err(e) => refuse(400, e),
            },
            None => refuse(404, "no DM (start with --azurite)".into()),
        },
        ("POST", "/_dev/dm/storage-pause") | ("POST", "/_dev/dm/storage-resume") => {
            match shared.dm.as_ref().and_then(|d| d.storage_pid()) {
                Some(pid) => {
                    let pause = req.path.ends_with("pause");
                    crate::azurite::signal_pid(pid, pause);
                    ok(if pause {
                        "storage paused"
                    } else {
                        "storage resumed"
                    })
                }
                None => refuse(
                    404,
                    "no storage process known (start with --azurite)".into(),
                ),
            }
        }
        ("POST", "/_dev/reset") => {
            shared.reset();
            ok("reset")
        }
        ("POST", "/_dev/down") => {
            let secs = req.query_param("secs").unwrap_or_default();
            match secs.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => {
                    shared.set_down(Duration::from_secs_f64(s));
                    ok(&format!("down for {s} s"))
                }
                _ => refuse(400, format!("need ?secs=N, got {secs:?}")),
            }
        }
        ("POST", "/_dev/shutdown") => {
            shared.request_shutdown();
            ok("shutting down")
        }
        _ => refuse(
            404,
            format!("no control endpoint {} {}", req.method, req.path),
        ),
    }
}
