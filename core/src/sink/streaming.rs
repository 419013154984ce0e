//! Streaming ingestion: `POST /v1/rest/ingest/{db}/{table}?streamFormat=..`, a gzip body, the Kusto headers, and
//! the answer classified by [`crate::response::classify`]. A 401 with a refreshable token source gets one fresh
//! token and one more request, at once; every other retry is the core's.

use std::sync::Arc;

use crate::auth::{SecretString, TokenCache};
use crate::config::Config;
use crate::config::RESPONSE_BODY_BYTES;
use crate::error::{Error, ErrorKind};
use crate::network::network_failure;
use crate::response::{classify, Failure, FailureClass, Reply};
use crate::spool::DestKey;
use crate::transport::{Method, Request, Transport};
use crate::wire::{self, ClusterUrl, Format};

use super::{Attempt, ChunkRef, SendIo, Sent, Sink, SinkId, SinkTarget};

/// The streaming-ingest protocol over one transport and token cache.
pub struct StreamingSink {
    cluster: ClusterUrl,
    transport: Transport,
    auth: Option<Arc<TokenCache>>,
    operation: &'static str,
    app: String,
    user: String,
    client_version: String,
}

impl StreamingSink {
    /// A sink for the cluster of `cfg`.
    pub fn new(
        cfg: &Config,
        cluster: ClusterUrl,
        transport: Transport,
        auth: Option<Arc<TokenCache>>,
    ) -> StreamingSink {
        StreamingSink {
            cluster,
            transport,
            auth,
            operation: "executeStreamingIngest",
            app: cfg.app.clone(),
            user: cfg.user.clone(),
            client_version: wire::client_version(&cfg.app, cfg.app_version.as_deref()),
        }
    }

    /// Request ids as the SDKs' managed client names its streaming attempts.
    pub fn managed(mut self) -> StreamingSink {
        self.operation = "executeManagedStreamingIngest";
        self
    }

    /// The `Authorization` value for the next request, from the token cache (refreshed ahead of expiry, or now
    /// after a 401). Built inside a zeroed-on-drop string so no copy of the token lingers in freed memory.
    // A failure is a fixed-size value on purpose: handling one must not allocate.
    #[allow(clippy::result_large_err)]
    fn bearer(
        &self,
        force_refresh: bool,
        warn: &dyn Fn(&str),
    ) -> Result<Option<SecretString>, Failure> {
        let Some(cache) = &self.auth else {
            return Ok(None);
        };
        let token = cache
            .get(self.transport.agent(), force_refresh)
            .map_err(|e| {
                let mut f = Failure::network(&format!(
                    "no token from {}: {}",
                    cache.source_name(),
                    e.message
                ));
                if e.kind == ErrorKind::AuthRefused || e.kind == ErrorKind::ConfigInvalidValue {
                    f.class = FailureClass::Auth;
                }
                f
            })?;
        if let Some(w) = cache.take_warning() {
            warn(&format!(
                "token refresh failed, the current token is still valid: {}",
                w.message
            ));
        }
        let mut header = SecretString::new(String::with_capacity(7 + token.expose().len()));
        header.push_str("Bearer ");
        header.push_str(token.expose());
        Ok(Some(header))
    }

    fn request(
        &self,
        target: &SinkTarget,
        chunk: &ChunkRef<'_>,
        attempt: u32,
        token: Option<&SecretString>,
        io: &mut SendIo<'_>,
    ) -> Reply {
        let request_id = wire::request_id_for(self.operation, chunk.id, attempt);
        let mut headers: heapless::Vec<(&'static str, &str), 10> = heapless::Vec::new();
        let _ = headers.push(("x-ms-client-request-id", &request_id));
        let _ = headers.push(("x-ms-version", wire::API_VERSION));
        let _ = headers.push(("x-ms-app", &self.app));
        let _ = headers.push(("x-ms-user", &self.user));
        let _ = headers.push(("x-ms-client-version", &self.client_version));
        let _ = headers.push(("Accept", "application/json"));
        if chunk.gzip {
            let _ = headers.push(("Content-Encoding", "gzip"));
        }
        if let Some(tok) = token {
            let _ = headers.push(("Authorization", tok.expose()));
        }
        let timeout = io
            .hard_deadline
            .map(|d| d.saturating_duration_since(io.clock.now()));
        let req = Request {
            method: Method::Post,
            url: &target.url,
            headers: &headers,
            body: chunk.payload,
            response_headers: &[],
            timeout,
        };
        let limit = io.body.len().min(RESPONSE_BODY_BYTES);
        match self.transport.send(&req, &mut io.body[..limit]) {
            Ok(r) => classify(
                r.status,
                r.retry_after.as_deref(),
                &io.body[..r.body_len],
                io.clock.wall(),
                io.scratch,
            ),
            Err(e) => Reply::Failed(network_failure(&e, self.transport.route())),
        }
    }
}

impl Sink for StreamingSink {
    fn id(&self) -> SinkId {
        SinkId::Streaming
    }

    fn max_raw_len(&self) -> usize {
        crate::config::MAX_REQUEST_RAW_BYTES
    }

    fn target(&self, key: &DestKey) -> Result<SinkTarget, Error> {
        let format = Format::parse(&key.format)?;
        Ok(SinkTarget {
            url: wire::ingest_url(
                &self.cluster,
                &key.database,
                &key.table,
                format,
                key.mapping.as_deref(),
            ),
            label: format!("{}.{}", key.database, key.table),
            format,
            dest: key.clone(),
        })
    }

    fn send(&self, target: &SinkTarget, chunk: &ChunkRef<'_>, io: &mut SendIo<'_>) -> Sent {
        let mut requests = 0u32;
        let mut force_refresh = false;
        loop {
            let token = match self.bearer(force_refresh, io.warn) {
                Ok(t) => t,
                Err(f) => {
                    return Sent {
                        attempt: Attempt::Failed(f),
                        requests,
                    }
                }
            };
            let reply = self.request(
                target,
                chunk,
                chunk.attempt.saturating_add(requests),
                token.as_ref(),
                io,
            );
            requests += 1;
            let f = match reply {
                Reply::Acknowledged { consumed } => {
                    return Sent {
                        attempt: Attempt::Acknowledged {
                            status: 200,
                            consumed,
                        },
                        requests,
                    }
                }
                Reply::Failed(f) => f,
            };
            // An expired or revoked token: one fresh token and one more try, at once.
            let can_refresh = self.auth.as_ref().is_some_and(|a| a.can_refresh());
            if f.status == 401 && can_refresh && !force_refresh && io.clock.now() < io.deadline {
                force_refresh = true;
                (io.warn)(&format!(
                    "{}: 401 from the service; fetching a new token",
                    target.label
                ));
                continue;
            }
            return Sent {
                attempt: Attempt::Failed(f),
                requests,
            };
        }
    }
}
