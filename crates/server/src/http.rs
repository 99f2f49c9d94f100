//! Routes: Omaha, payloads, health, metrics, the admin API and its OpenAPI document.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::{FutureExt, StreamExt};
use ipnet::IpNet;
use tracing::{error, warn};

use crate::omaha::OmahaError;
use crate::AppState;

/// The Omaha endpoint's paths, with and without the slash: routed here, and served before the
/// router by `crate::front`.
pub const OMAHA_PATHS: [&str; 2] = ["/v1/update/", "/v1/update"];

pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for path in OMAHA_PATHS {
        // The cap is enforced by `read_omaha_body`, which drains an oversized
        // body before answering 413 (a bare limit would cut the upload off).
        router = router.route(path, post(update).layer(DefaultBodyLimit::disable()));
    }
    router
        .route("/v1/payloads/{id}/{file}", get(payload))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::api::router())
        .merge(crate::dashboard::router(&state))
        .with_state(state)
}

async fn update(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    omaha_update(&state, peer, req).await
}

/// One Omaha request from `peer`: the body read within its limits, answered or refused.
/// Served before the router for `POST /v1/update/` (`crate::front`), and by the router's
/// route for the same path.
pub(crate) async fn omaha_update(
    state: &AppState,
    peer: SocketAddr,
    req: axum::extract::Request,
) -> Response {
    state.metrics.inc(&state.metrics.requests);
    // The whole request, not a `HeaderMap` extractor: that one clones the headers.
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let body = match read_omaha_body(body, headers, state.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            state.metrics.inc(&state.metrics.bad_requests);
            warn!(error = %e, "Omaha request body refused");
            return e.into_response();
        }
    };
    let ip = ip_text(client_ip(peer.ip(), headers, &state.trusted_proxies));
    match crate::omaha::handle(state, &body, Some(ip)).await {
        Ok(xml) => {
            let mut resp = Response::new(Body::from(xml));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/xml; charset=utf-8"),
            );
            resp
        }
        Err(OmahaError::BadRequest(e)) => {
            state.metrics.inc(&state.metrics.bad_requests);
            warn!(error = %e, "malformed Omaha request");
            (StatusCode::BAD_REQUEST, format!("bad Omaha request: {e}\n")).into_response()
        }
        Err(OmahaError::Store(e)) => {
            state.metrics.inc(&state.metrics.internal_errors);
            error!(error = %e, "Omaha request failed");
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable\n").into_response()
        }
    }
}

/// How much of an oversized Omaha body is read and thrown away so the client
/// finishes its upload and reads the 413; beyond this the connection is closed.
pub const MAX_DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// A whole Omaha body must arrive within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body over {limit} bytes")]
    TooLarge {
        limit: usize,
        /// All of it was read: the connection can stay open.
        drained: bool,
    },
    #[error("body not received within {0:?}")]
    Timeout(Duration),
    #[error("reading the body: {0}")]
    Read(String),
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let (status, close) = match &self {
            BodyError::TooLarge { drained, .. } => (StatusCode::PAYLOAD_TOO_LARGE, !drained),
            BodyError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, true),
            BodyError::Read(_) => (StatusCode::BAD_REQUEST, true),
        };
        let mut resp = (status, format!("{self}\n")).into_response();
        if close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Reads at most `limit` bytes of body. A longer body (announced or not) is
/// drained up to [`MAX_DRAIN_BYTES`] and refused with `TooLarge`.
pub async fn read_omaha_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64 + MAX_DRAIN_BYTES) {
        return Err(BodyError::TooLarge {
            limit,
            drained: false,
        });
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut first: Option<Bytes> = None;
        let mut buf: Vec<u8> = Vec::new();
        let mut total: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            total += chunk.len() as u64;
            if total > limit as u64 + MAX_DRAIN_BYTES {
                return Err(BodyError::TooLarge {
                    limit,
                    drained: false,
                });
            }
            if total > limit as u64 {
                // Keep reading (and dropping) so the client can finish its upload.
                first = None;
                buf = Vec::new();
                continue;
            }
            // The usual case is one chunk: keep it without copying.
            match first.take() {
                None if buf.is_empty() => first = Some(chunk),
                None => buf.extend_from_slice(&chunk),
                Some(f) => {
                    buf.extend_from_slice(&f);
                    buf.extend_from_slice(&chunk);
                }
            }
        }
        if total > limit as u64 {
            return Err(BodyError::TooLarge {
                limit,
                drained: true,
            });
        }
        Ok(first.unwrap_or_else(|| Bytes::from(buf)))
    };
    let mut read = std::pin::pin!(read);
    // A check-in's body has usually arrived with its headers: no timer for that one.
    if let Some(done) = (&mut read).now_or_never() {
        return done;
    }
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyError::Timeout(BODY_TIMEOUT)))
}

async fn payload(
    State(state): State<Arc<AppState>>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such payload\n").into_response();
    let unavailable = |e: crate::store::StoreError| {
        error!(error = %e, "payload lookup failed");
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    };
    // A full package, one of its other payloads, or a delta (the extra files listed next to
    // any of them are the package's).
    let (pkg, own) = match hosted_payload(&state.store, &id).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(e) => return unavailable(e),
    };
    let response = if own.file_name == file {
        let path = crate::payloads::payload_dir(&state.data_dir).join(&id);
        crate::payloads::serve_file(&path, own.size, &own.sha256_b64, &headers).await
    } else {
        // One of the package's extra files?
        let extra = match state.store.package_files(&pkg.id).await {
            Ok(files) => files.into_iter().find(|f| f.name == file),
            Err(e) => return unavailable(e),
        };
        let Some(f) = extra else {
            return not_found();
        };
        state.metrics.inc(&state.metrics.payload_requests);
        let path = crate::payloads::extra_file_path(&state.data_dir, &pkg.id, &f.name);
        return crate::payloads::serve_file(&path, f.size, &f.sha256_b64, &headers).await;
    };
    state.metrics.inc(&state.metrics.payload_requests);
    if response.status().is_success() {
        let sent = response
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = sent {
            state.served.add(&id, n);
        }
    }
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match sqlx::query_scalar::<_, i64>("SELECT 1")
        .fetch_one(state.store.pool())
        .await
    {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.render(&state.store).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// The address an instance is recorded with. `X-Forwarded-For` counts only when the peer is
/// one of the configured proxies: then the nearest address in the header that is not itself
/// a trusted proxy (read from the right, as each proxy appends the address it saw). From
/// anyone else the header is ignored, so a machine cannot record someone else's address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut nearest = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // A malformed entry: nothing left of it can be trusted.
            break;
        };
        nearest = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    nearest
}

/// An address as text, as `Display` writes it; an IPv4 address without `core::fmt`, which
/// costs about 1 % of an update check's CPU.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

/// The file a payload id names (`/v1/payloads/{id}/{file_name}`).
struct OwnFile {
    file_name: String,
    size: i64,
    sha256_b64: String,
}

/// The package behind a hosted payload id and that payload's own file: the package's
/// payload, a variant's, or a ready delta's. `None`: nothing hosted here has this id.
async fn hosted_payload(
    store: &crate::store::Store,
    id: &str,
) -> Result<Option<(crate::store::PackageRow, OwnFile)>, crate::store::StoreError> {
    if let Some(p) = store.package(id).await? {
        let own = OwnFile {
            file_name: p.file_name.clone(),
            size: p.size,
            sha256_b64: p.sha256_b64.clone(),
        };
        return Ok(p.base_url.is_none().then_some((p, own)));
    }
    let (package_id, own) = if let Some(v) = store.variant(id).await? {
        let own = OwnFile {
            file_name: v.file_name,
            size: v.size,
            sha256_b64: v.sha256_b64,
        };
        (v.package_id, own)
    } else {
        match store.delta(id).await? {
            Some(d) if d.state == crate::store::DeltaState::Ready => {
                let own = OwnFile {
                    file_name: d.file_name,
                    size: d.size,
                    sha256_b64: d.sha256_b64,
                };
                (d.package_id, own)
            }
            _ => return Ok(None),
        }
    };
    Ok(store.package(&package_id).await?.map(|p| (p, own)))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn ip_text_writes_what_display_writes() {
        for a in 0..=255u8 {
            for b in [0u8, 1, 9, 10, 99, 100, 199, 200, 255] {
                let ip = IpAddr::V4(Ipv4Addr::new(a, b, 255 - a, b.wrapping_mul(a)));
                assert_eq!(super::ip_text(ip), ip.to_string());
            }
        }
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x42));
        assert_eq!(super::ip_text(v6), "fd00::42");
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(super::ip_text(mapped), "::ffff:10.0.0.1");
    }
}
