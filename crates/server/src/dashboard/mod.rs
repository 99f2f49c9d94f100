//! The web dashboard under `/ui/`: server-rendered HTML (maud), a little
//! progressive JavaScript, SVG charts drawn on the server.
//!
//! Reads go straight to the store (indexed queries in [`queries`]); every
//! write is forwarded to the REST API's own handlers ([`apicall`]) with the
//! session's bearer token, so the UI can never do what the API would refuse.
//! Sessions are stateless: the cookie carries the API token (HttpOnly,
//! SameSite=Strict) and form posts carry a CSRF token derived from it.

mod apicall;
pub mod auth;
mod catalog;
pub mod charts;
mod group;
mod instances;
mod overview;
pub mod rollup;
mod view;
pub mod words;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::AppState;

/// Per-server dashboard state: whether our tables exist yet.
#[derive(Default)]
pub struct Dash {
    schema: tokio::sync::OnceCell<()>,
}

impl Dash {
    /// Creates the dashboard's tables and indexes once per process (idempotent DDL).
    pub async fn ensure_schema(&self, state: &AppState) -> Result<(), crate::store::StoreError> {
        self.schema
            .get_or_try_init(|| crate::store::dashboard::ensure_schema(&state.store))
            .await
            .map(|_| ())
    }
}

/// The dashboard's routes. Starts the chart sampler on the current Tokio runtime.
pub fn router(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let dash = Arc::new(Dash::default());
    rollup::spawn_sampler(state, dash.clone());
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview::page))
        .route("/ui/login", get(auth::login_page).post(auth::login))
        .route("/ui/logout", post(auth::logout))
        .route("/ui/assets/app.css", get(css))
        .route("/ui/assets/app.js", get(js))
        .route("/ui/apps/{app}/groups/{group}", get(group::page))
        .route("/ui/apps/{app}/groups/{group}/pause", post(group::pause))
        .route("/ui/apps/{app}/groups/{group}/resume", post(group::resume))
        .route("/ui/apps/{app}/groups/{group}/policy", post(group::policy))
        .route("/ui/instances", get(instances::list))
        .route("/ui/apps/{app}/instances/{machine}", get(instances::page))
        .route("/ui/activity", get(catalog::activity))
        .route("/ui/packages", get(catalog::default_packages))
        .route("/ui/apps/{app}/packages", get(catalog::page))
        .route(
            "/ui/apps/{app}/packages/upload",
            post(catalog::publish).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/ui/apps/{app}/channels/{name}/set",
            post(catalog::set_channel),
        )
        .route(
            "/ui/apps/{app}/channels/{name}/promote",
            get(catalog::promote_confirm).post(catalog::promote),
        )
        .layer(Extension(dash))
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("../../assets/app.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("../../assets/app.js"),
    )
        .into_response()
}

/// A failure shown to the user as a page (never a bare 500 with no words).
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the database failed: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Store(e) => {
                tracing::error!(error = %e, "dashboard query failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        view::message_page(status, "Something went wrong", &self.to_string())
    }
}

pub type UiResult = Result<Response, UiError>;
