//! Every dashboard write is a call into the REST API's own router, carrying
//! the session's bearer token: the same handlers, validation, permission
//! checks and activity entries as `curl -H "Authorization: Bearer …"`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use tower::ServiceExt;

use super::auth::Session;
use super::view;
use crate::AppState;

/// The API's answer: status and its `error` text when it failed.
pub struct Outcome {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    fn error_text(&self) -> String {
        self.body
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the API answered {}", self.status))
    }

    /// On success: 303 to `back` with a notice. On failure: the API's refusal as a page,
    /// with the API's own status (403 for a viewer).
    pub fn respond(self, back: &str, notice: &str) -> Response {
        if self.ok() {
            let sep = if back.contains('?') { '&' } else { '?' };
            let to = format!("{back}{sep}notice={}", view::enc(notice));
            let mut r = Redirect::to(&to).into_response();
            *r.status_mut() = StatusCode::SEE_OTHER;
            return r;
        }
        let title = match self.status {
            StatusCode::FORBIDDEN => "Refused: this needs an admin",
            StatusCode::UNAUTHORIZED => "Refused: not logged in",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Not accepted",
            _ => "The server could not do that",
        };
        view::message_page(self.status, title, &self.error_text())
    }
}

/// Calls `method path` on the API with `body` (JSON unless `content_type` says otherwise).
pub async fn call(
    state: &Arc<AppState>,
    session: &Session,
    method: Method,
    path: &str,
    body: Body,
    content_type: &str,
) -> Outcome {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", session.token))
        .header(header::CONTENT_TYPE, content_type)
        .body(body);
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                status: StatusCode::BAD_REQUEST,
                body: serde_json::json!({ "error": format!("bad request: {e}") }),
            }
        }
    };
    let api = crate::api::router().with_state(state.clone());
    let resp = match api.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Outcome { status, body }
}

/// JSON convenience wrapper.
pub async fn call_json(
    state: &Arc<AppState>,
    session: &Session,
    method: Method,
    path: &str,
    json: &serde_json::Value,
) -> Outcome {
    call(
        state,
        session,
        method,
        path,
        Body::from(json.to_string()),
        "application/json",
    )
    .await
}
