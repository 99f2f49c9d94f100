//! REST admin API (JSON) under `/api/v1`, bearer tokens with two roles:
//! admin (read/write) and viewer (read).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::store::{ExternalPackage, Group, InstanceFilter, StoreError};
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Admin,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown bearer token")]
    Unauthorized,
    #[error("this needs an admin token")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("storage: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Invalid(m) => ApiError::BadRequest(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::payloads::PublishError> for ApiError {
    fn from(e: crate::payloads::PublishError) -> Self {
        use crate::payloads::PublishError as P;
        match e {
            P::Store(s) => s.into(),
            P::UnknownApp(a) => ApiError::NotFound(format!("application {a}")),
            P::Empty => ApiError::BadRequest("empty payload".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut resp = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        resp
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The role a bearer token grants (tokens are compared in constant time).
pub fn role_of(state: &AppState, headers: &HeaderMap) -> Option<Role> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    if state
        .admin_tokens
        .iter()
        .any(|t| crate::dashboard::auth::same(t, token))
    {
        Some(Role::Admin)
    } else if state
        .viewer_tokens
        .iter()
        .any(|t| crate::dashboard::auth::same(t, token))
    {
        Some(Role::Viewer)
    } else {
        None
    }
}

fn need(state: &AppState, headers: &HeaderMap, role: Role) -> Result<Role, ApiError> {
    match role_of(state, headers) {
        None => Err(ApiError::Unauthorized),
        Some(Role::Viewer) if role == Role::Admin => Err(ApiError::Forbidden),
        Some(r) => Ok(r),
    }
}

fn now(state: &AppState) -> i64 {
    state.clock.now().timestamp()
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/apps", get(list_apps).post(create_app))
        .route("/api/v1/apps/{app}/channels", get(list_channels))
        .route("/api/v1/apps/{app}/channels/{name}", put(set_channel))
        .route("/api/v1/apps/{app}/channels/{name}/promote", post(promote))
        .route("/api/v1/apps/{app}/groups", get(list_groups))
        .route(
            "/api/v1/apps/{app}/groups/{name}",
            get(get_group).put(put_group),
        )
        .route("/api/v1/apps/{app}/groups/{name}/halt", post(halt_group))
        .route(
            "/api/v1/apps/{app}/groups/{name}/resume",
            post(resume_group),
        )
        .route("/api/v1/apps/{app}/groups/{name}/stats", get(group_stats))
        .route(
            "/api/v1/apps/{app}/packages",
            get(list_packages).post(register_package),
        )
        .route(
            "/api/v1/apps/{app}/packages/{version}/{arch}",
            get(get_package)
                .put(upload_package)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/apps/{app}/deltas", get(list_deltas))
        .route("/api/v1/apps/{app}/variants", get(list_variants))
        .route("/api/v1/apps/{app}/sync", get(list_sync))
        .route("/api/v1/apps/{app}/floors", get(list_floors))
        .route(
            "/api/v1/apps/{app}/floors/{version}",
            put(add_floor).delete(remove_floor),
        )
        .route("/api/v1/instances", get(list_instances))
        .route("/api/v1/apps/{app}/instances/{machine}", get(get_instance))
        .route("/api/v1/activity", get(activity))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

async fn list_apps(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
) -> ApiResult<Vec<crate::store::App>> {
    need(&s, &h, Role::Viewer)?;
    Ok(Json(s.store.apps().await?))
}

#[derive(Deserialize, Serialize)]
pub struct NewApp {
    pub id: String,
    pub name: String,
}

async fn create_app(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Json(app): Json<NewApp>,
) -> ApiResult<serde_json::Value> {
    need(&s, &h, Role::Admin)?;
    s.store.create_app(&app.id, &app.name, now(&s)).await?;
    Ok(Json(
        json!({ "id": fastpatch_omaha::normalize_appid(&app.id) }),
    ))
}

async fn list_channels(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Vec<crate::store::Channel>> {
    need(&s, &h, Role::Viewer)?;
    Ok(Json(s.store.channels(&app).await?))
}

#[derive(Deserialize, Serialize)]
pub struct SetChannel {
    pub version: String,
}

async fn set_channel(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, name)): Path<(String, String)>,
    Json(body): Json<SetChannel>,
) -> ApiResult<crate::store::Channel> {
    need(&s, &h, Role::Admin)?;
    s.store
        .set_channel(&app, &name, &body.version, now(&s))
        .await?;
    s.delta_wake.notify_one();
    s.store
        .channel(&app, &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("channel {name}")))
}

#[derive(Deserialize, Serialize)]
pub struct Promote {
    pub from: String,
}

async fn promote(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, to)): Path<(String, String)>,
    Json(body): Json<Promote>,
) -> ApiResult<serde_json::Value> {
    need(&s, &h, Role::Admin)?;
    let version = s.store.promote(&app, &body.from, &to, now(&s)).await?;
    s.delta_wake.notify_one();
    Ok(Json(json!({ "channel": to, "version": version })))
}

async fn list_groups(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Vec<Group>> {
    need(&s, &h, Role::Viewer)?;
    Ok(Json(s.store.groups(&app).await?))
}

async fn get_group(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Group> {
    need(&s, &h, Role::Viewer)?;
    s.store
        .group(&app, &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("group {name}")))
}

async fn put_group(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, name)): Path<(String, String)>,
    Json(mut g): Json<Group>,
) -> ApiResult<Group> {
    need(&s, &h, Role::Admin)?;
    g.app_id = app.clone();
    g.name = name.clone();
    Ok(Json(s.store.set_group_policy(&g, now(&s)).await?))
}

#[derive(Deserialize, Serialize, Default)]
pub struct Halt {
    pub reason: Option<String>,
}

async fn halt_group(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, name)): Path<(String, String)>,
    body: Option<Json<Halt>>,
) -> ApiResult<Group> {
    need(&s, &h, Role::Admin)?;
    let reason = body
        .and_then(|b| b.0.reason)
        .unwrap_or_else(|| "halted by an operator".into());
    s.store
        .set_halted(&app, &name, true, Some(&reason), now(&s))
        .await?;
    get_group(State(s), h, Path((app, name))).await
}

async fn resume_group(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Group> {
    need(&s, &h, Role::Admin)?;
    s.store
        .set_halted(&app, &name, false, None, now(&s))
        .await?;
    get_group(State(s), h, Path((app, name))).await
}

async fn group_stats(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    need(&s, &h, Role::Viewer)?;
    let statuses = s.store.status_counts(&app, &name).await?;
    let versions = s.store.version_counts(&app, &name).await?;
    let grants = s.store.grant_count(&app, &name).await?;
    Ok(Json(json!({
        "statuses": statuses.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "versions": versions.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "grants": grants,
    })))
}

async fn list_packages(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Vec<crate::store::PackageRow>> {
    need(&s, &h, Role::Viewer)?;
    Ok(Json(s.store.packages(&app).await?))
}

/// `GET /api/v1/apps/{app}/variants`: the packages' second payloads (same image, other
/// operations), with the bytes served.
async fn list_variants(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Vec<crate::store::VariantRow>> {
    need(&s, &h, Role::Viewer)?;
    Ok(Json(s.store.variants(&app).await?))
}

/// `GET /api/v1/apps/{app}/sync`: where the upstream syncer is for each channel and
/// architecture it mirrors (state, version, bytes downloaded, last message).
async fn list_sync(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Vec<crate::store::SyncRow>> {
    need(&s, &h, Role::Viewer)?;
    let app = fastpatch_omaha::normalize_appid(&app);
    Ok(Json(s.store.sync_statuses(&app).await?))
}

/// `GET /api/v1/apps/{app}/deltas`: every delta the server made, with how its
/// generation ended and the bytes served.
async fn list_deltas(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Vec<crate::store::DeltaRow>> {
    need(&s, &h, Role::Viewer)?;
    Ok(Json(s.store.deltas(&app).await?))
}

/// `POST /api/v1/apps/{app}/packages`: a package hosted elsewhere.
async fn register_package(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(app): Path<String>,
    Json(ext): Json<ExternalPackage>,
) -> ApiResult<serde_json::Value> {
    need(&s, &h, Role::Admin)?;
    let (package, files) = s.store.register_external(&app, &ext, now(&s)).await?;
    Ok(Json(json!({ "package": package, "extra_files": files })))
}

async fn get_package(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, version, arch)): Path<(String, String, String)>,
) -> ApiResult<serde_json::Value> {
    need(&s, &h, Role::Viewer)?;
    let arch = crate::store::normalize_arch(Some(&arch));
    let package = s
        .store
        .find_package(&fastpatch_omaha::normalize_appid(&app), &version, &arch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("package {version} ({arch})")))?;
    let files = s.store.package_files(&package.id).await?;
    Ok(Json(json!({ "package": package, "extra_files": files })))
}

#[derive(Deserialize)]
pub struct UploadQuery {
    pub file_name: Option<String>,
}

/// `PUT /api/v1/apps/{app}/packages/{version}/{arch}?file_name=…` with the payload as the body.
async fn upload_package(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, version, arch)): Path<(String, String, String)>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult<crate::store::PackageRow> {
    need(&s, &h, Role::Admin)?;
    let file_name = q.file_name.unwrap_or_else(|| "update.gz".into());
    if file_name.contains('/') || file_name.starts_with('.') || file_name.is_empty() {
        return Err(ApiError::BadRequest(
            "file_name must be a plain file name".into(),
        ));
    }
    let dir = crate::payloads::payload_dir(&s.data_dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let tmp = dir.join(format!(".upload-{}", uuid::Uuid::new_v4()));
    let result = async {
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
            f.write_all(&chunk)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        f.flush()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let publish = crate::payloads::Publish {
            app_id: &app,
            version: &version,
            arch: &arch,
            file: &tmp,
            file_name: Some(&file_name),
            base_url: None,
        };
        Ok::<_, ApiError>(crate::payloads::publish(&s.store, &s.data_dir, &publish, now(&s)).await?)
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    Ok(Json(result?))
}

async fn list_floors(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Vec<String>> {
    need(&s, &h, Role::Viewer)?;
    Ok(Json(s.store.floors(&app).await?))
}

async fn add_floor(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, version)): Path<(String, String)>,
) -> ApiResult<Vec<String>> {
    need(&s, &h, Role::Admin)?;
    s.store
        .add_floor(&app, &version, "by an operator", now(&s))
        .await?;
    Ok(Json(s.store.floors(&app).await?))
}

async fn remove_floor(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, version)): Path<(String, String)>,
) -> ApiResult<Vec<String>> {
    need(&s, &h, Role::Admin)?;
    s.store.remove_floor(&app, &version, now(&s)).await?;
    Ok(Json(s.store.floors(&app).await?))
}

async fn list_instances(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Query(f): Query<InstanceFilter>,
) -> ApiResult<serde_json::Value> {
    need(&s, &h, Role::Viewer)?;
    let rows = s.store.list_instances(&f, now(&s)).await?;
    let next = if rows.len() as i64 == f.limit.unwrap_or(100).clamp(1, 1000) {
        rows.last().map(|r| r.machine_id.clone())
    } else {
        None
    };
    Ok(Json(json!({ "instances": rows, "next_after": next })))
}

async fn get_instance(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path((app, machine)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    need(&s, &h, Role::Viewer)?;
    let inst = s
        .store
        .instance(&app, &machine)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("instance {machine}")))?;
    let history = s.store.history(&app, &machine, 100).await?;
    let events = s.store.events(&app, &machine, 100).await?;
    Ok(Json(
        json!({ "instance": inst, "history": history, "events": events }),
    ))
}

#[derive(Deserialize)]
pub struct ActivityQuery {
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

async fn activity(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Query(q): Query<ActivityQuery>,
) -> ApiResult<Vec<crate::store::ActivityRow>> {
    need(&s, &h, Role::Viewer)?;
    Ok(Json(
        s.store
            .activity(q.before, q.limit.unwrap_or(100).clamp(1, 1000))
            .await?,
    ))
}
