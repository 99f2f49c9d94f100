//! Routes: Omaha, payloads, health, metrics, the admin API and its OpenAPI document.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::{error, warn};

use crate::omaha::OmahaError;
use crate::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    let omaha_limit = state.max_body_bytes;
    Router::new()
        .route(
            "/v1/update/",
            post(update).layer(DefaultBodyLimit::max(omaha_limit)),
        )
        .route(
            "/v1/update",
            post(update).layer(DefaultBodyLimit::max(omaha_limit)),
        )
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.metrics.inc(&state.metrics.requests);
    let ip = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| peer.ip().to_string());
    match crate::omaha::handle(&state, &body, Some(ip)).await {
        Ok(xml) => ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], xml).into_response(),
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

async fn payload(
    State(state): State<Arc<AppState>>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let pkg = match state.store.package(&id).await {
        Ok(Some(p)) if p.base_url.is_none() && p.file_name == file => p,
        Ok(_) => return (StatusCode::NOT_FOUND, "no such payload\n").into_response(),
        Err(e) => {
            error!(error = %e, "payload lookup failed");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    state.metrics.inc(&state.metrics.payload_requests);
    crate::payloads::serve(&state.data_dir, &pkg, &headers).await
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
