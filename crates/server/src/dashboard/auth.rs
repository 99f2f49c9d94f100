//! Login with an API bearer token, the session cookie, CSRF tokens.
//!
//! The cookie holds the token itself (hex, HttpOnly, SameSite=Strict), so a
//! session is valid exactly as long as the token is configured on the server,
//! on every server process, with no session table. Each request's role comes
//! from [`crate::api::role_of`], the REST API's own check.

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

/// A logged-in user: their token, role and CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub role: Role,
    pub csrf: String,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The CSRF token for a session: HMAC-SHA256 keyed with the session's token,
/// so it cannot be computed without the token and needs no server state.
pub fn csrf_token(token: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes())
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

/// The session token from a `Cookie` header value, if any.
pub fn token_from_cookie(cookie_header: &str) -> Option<String> {
    cookie_header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .and_then(|(_, v)| hex::decode(v.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|t| !t.is_empty())
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

fn token_from_headers(h: &HeaderMap) -> Option<String> {
    if let Some(t) = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_owned());
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(token_from_cookie)
}

impl FromRequestParts<Arc<AppState>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = token_from_headers(&parts.headers);
        match token
            .as_deref()
            .and_then(|t| role_for_token(state, t).map(|r| (t, r)))
        {
            Some((t, role)) => Ok(Session {
                token: t.to_owned(),
                role,
                csrf: csrf_token(t),
            }),
            None if parts.method == axum::http::Method::GET => {
                Err(Redirect::to("/ui/login").into_response())
            }
            None => Err(view::message_page(
                StatusCode::UNAUTHORIZED,
                "Not logged in",
                "Your session is missing or its token is no longer accepted. Log in again.",
            )),
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
    let secure = if state.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{secure}",
        hex::encode(token.as_bytes())
    );
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

pub async fn logout(session: Session, Form(f): Form<CsrfForm>) -> Response {
    if let Some(r) = check_csrf(&session, &f.csrf) {
        return r;
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
        let header = format!("a=b; {COOKIE}={}; c=d", hex::encode("tok en"));
        assert_eq!(token_from_cookie(&header).as_deref(), Some("tok en"));
        assert_eq!(token_from_cookie("a=b"), None);
        assert_eq!(token_from_cookie(&format!("{COOKIE}=zz")), None);
        assert_eq!(token_from_cookie(&format!("{COOKIE}=")), None);
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
