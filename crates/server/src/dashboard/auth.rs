//! Login with an API bearer token, opaque server-side sessions, CSRF tokens.
//!
//! A login checks the token with the REST API's own check and creates a session: the cookie
//! holds a random id (HttpOnly, SameSite=Strict, Secure over https), the database keeps only
//! its SHA-256, the SHA-256 of the token and the expiry (12 h), so sessions work on every
//! server process sharing the database, a stolen cookie dies at logout or expiry, and
//! removing a token from the server ends its sessions. Each request's role comes from
//! [`crate::api::role_of`] for the session's token. A `Bearer` header works too (scripts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use hmac::{Hmac, KeyInit, Mac};
use maud::html;
use serde::Deserialize;
use sha2::Sha256;

use super::view;
use crate::api::Role;
use crate::AppState;

pub const COOKIE: &str = "fastpatch_session";
/// How long a session lasts (also the cookie's Max-Age).
pub const SESSION_SECS: i64 = 12 * 3600;

/// A logged-in user: their token, role and CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub role: Role,
    pub csrf: String,
    /// The cookie's session id; `None` for a request with a `Bearer` header.
    pub id: Option<String>,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The CSRF token for a session: HMAC-SHA256 keyed with the session's secret (its random
/// id, or the bearer token), so it cannot be computed without it and needs no server state.
pub fn csrf_token(secret: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(b"fastpatch-dashboard-csrf-v1");
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time string comparison (tokens, CSRF tokens): the time depends only on the
/// lengths, never on where the first difference is.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A new random session id (256 bits, hex).
fn new_session_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The session id from a `Cookie` header value, if it has the shape of one.
pub fn session_id_from_cookie(cookie_header: &str) -> Option<String> {
    cookie_header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// Which role the API gives `token`: the very same function the API uses.
pub fn role_for_token(state: &AppState, token: &str) -> Option<Role> {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
    );
    crate::api::role_of(state, &h)
}

fn bearer_token(h: &HeaderMap) -> Option<String> {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

fn cookie_session_id(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session_id_from_cookie)
}

/// The configured token (admin or viewer) whose SHA-256 is `hash`.
fn token_with_hash(state: &AppState, hash: &str) -> Option<String> {
    state
        .admin_tokens
        .iter()
        .chain(&state.viewer_tokens)
        .find(|t| same(&sha256_hex(t), hash))
        .cloned()
}

/// The session a request carries: a `Bearer` token, or a live session cookie whose token is
/// still configured.
async fn session_of(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Session>, crate::store::StoreError> {
    if let Some(token) = bearer_token(headers) {
        return Ok(role_for_token(state, &token).map(|role| Session {
            csrf: csrf_token(&token),
            token,
            role,
            id: None,
        }));
    }
    let Some(id) = cookie_session_id(headers) else {
        return Ok(None);
    };
    let now = state.clock.now().timestamp();
    let Some(token_hash) = state.store.session_token(&sha256_hex(&id), now).await? else {
        return Ok(None);
    };
    Ok(token_with_hash(state, &token_hash).and_then(|token| {
        role_for_token(state, &token).map(|role| Session {
            token,
            role,
            csrf: csrf_token(&id),
            id: Some(id),
        })
    }))
}

impl FromRequestParts<Arc<AppState>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match session_of(state, &parts.headers).await {
            Ok(Some(session)) => Ok(session),
            Ok(None) if parts.method == axum::http::Method::GET => {
                Err(Redirect::to("/ui/login").into_response())
            }
            Ok(None) => Err(view::message_page(
                StatusCode::UNAUTHORIZED,
                "Not logged in",
                "Your session is missing, has ended, or its token is no longer accepted. Log in again.",
            )),
            Err(e) => {
                tracing::error!(error = %e, "reading the dashboard session failed");
                Err(view::message_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Database unavailable",
                    "The session could not be read. Try again shortly.",
                ))
            }
        }
    }
}

/// The refusal for a form post whose CSRF token is not this session's (None: fine).
pub fn check_csrf(session: &Session, sent: &str) -> Option<Response> {
    if same(&session.csrf, sent) {
        None
    } else {
        Some(view::message_page(
            StatusCode::FORBIDDEN,
            "Form expired",
            "The form did not carry this session's CSRF token. Reload the page and try again.",
        ))
    }
}

pub async fn login_page() -> Response {
    login_form(StatusCode::OK, None)
}

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let body = html! {
        main.login {
            h1 { "fastpatch" }
            p { "Log in with an API token (admin or viewer), as given to " code { "fastpatch-server --admin-token / --viewer-token" } "." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/ui/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Log in" }
            }
        }
    };
    (status, view::bare("Log in", body)).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let ip = crate::http::client_ip(peer.ip(), &headers, &state.trusted_proxies);
    let now = Instant::now();
    if let Some(wait) = state.login_throttle.must_wait(ip, now) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::warn!(%ip, "dashboard login refused unread: too many wrong tokens, {secs} s to wait");
        let mut resp = login_form(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many wrong tokens from this address. Try again in {secs} s."
            )),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let token = f.token.trim();
    if role_for_token(&state, token).is_none() {
        let count = state.login_throttle.failed(ip, now);
        tracing::warn!(%ip, "dashboard login with a token this server does not accept ({count} in a row)");
        return login_form(
            StatusCode::UNAUTHORIZED,
            Some("That token is not accepted by this server."),
        );
    }
    state.login_throttle.succeeded(ip);
    let id = new_session_id();
    let now = state.clock.now().timestamp();
    if let Err(e) = state
        .store
        .create_session(
            &sha256_hex(&id),
            &sha256_hex(token),
            now,
            now + SESSION_SECS,
        )
        .await
    {
        tracing::error!(error = %e, "storing a dashboard session failed");
        return login_form(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("The session could not be stored. Try again shortly."),
        );
    }
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}");
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            let mut resp = Redirect::to("/ui/").into_response();
            resp.headers_mut().insert(header::SET_COOKIE, v);
            *resp.status_mut() = StatusCode::SEE_OTHER;
            resp
        }
        Err(_) => login_form(StatusCode::BAD_REQUEST, Some("That token cannot be used.")),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

pub async fn logout(
    State(state): State<Arc<AppState>>,
    session: Session,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = check_csrf(&session, &f.csrf) {
        return r;
    }
    // The session ends on the server, not only in this browser.
    if let Some(id) = &session.id {
        if let Err(e) = state.store.delete_session(&sha256_hex(id)).await {
            tracing::error!(error = %e, "ending a dashboard session failed");
            return view::message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                "The session could not be ended. Try again shortly.",
            );
        }
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "fastpatch_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trip_and_garbage() {
        let id = new_session_id();
        assert_eq!(id.len(), 64);
        assert_ne!(id, new_session_id());
        let header = format!("a=b; {COOKIE}={id}; c=d");
        assert_eq!(
            session_id_from_cookie(&header).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(session_id_from_cookie("a=b"), None);
        assert_eq!(session_id_from_cookie(&format!("{COOKIE}=zz")), None);
        assert_eq!(session_id_from_cookie(&format!("{COOKIE}=")), None);
        // The old cookie (the token in hex) is not a session.
        let old = format!("{COOKIE}={}", hex::encode("admin-token"));
        assert_eq!(session_id_from_cookie(&old), None);
    }

    #[test]
    fn csrf_depends_on_the_token() {
        let a = csrf_token("admin-token");
        assert_eq!(a, csrf_token("admin-token"));
        assert_ne!(a, csrf_token("viewer-token"));
        assert_eq!(a.len(), 64);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &a[1..]));
    }
}
