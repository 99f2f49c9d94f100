//! Packages and channels (publish, move, promote with a confirmation,
//! channel history) and the activity feed.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::apicall;
use super::auth::{check_csrf, Session};
use super::group::activity_list;
use super::view::{self, enc, Nav, NoticeQuery};
use super::UiError;
use crate::AppState;

fn packages_url(app: &str) -> String {
    format!("/ui/apps/{}/packages", enc(app))
}

/// `/ui/packages`: the first application's page.
pub async fn default_packages(
    State(state): State<Arc<AppState>>,
    _session: Session,
) -> Result<Response, UiError> {
    let apps = state.store.apps().await?;
    let app = apps
        .first()
        .ok_or_else(|| UiError::NotFound("no applications yet".into()))?;
    Ok(Redirect::to(&packages_url(&app.id)).into_response())
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(app): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, UiError> {
    let started = Instant::now();
    let now = state.clock.now().timestamp();
    let store = &state.store;
    if !store.app_exists(&app).await? {
        return Err(UiError::NotFound(format!("no application {app}")));
    }
    let channels = store.channels(&app).await?;
    let mut packages = store.packages(&app).await?;
    packages
        .sort_by(|a, b| crate::version::compare(&b.version, &a.version).then(a.arch.cmp(&b.arch)));
    let deltas = store.deltas(&app).await?;
    let variants = store.variants(&app).await?;
    let sync = store.sync_statuses(&app).await?;
    let served: std::collections::HashMap<String, i64> = store
        .package_served_bytes(&app)
        .await?
        .into_iter()
        .collect();
    // A package's payload and its second payloads (same image, other operations).
    let served_full = |id: &str| {
        served.get(id).copied().unwrap_or(0)
            + variants
                .iter()
                .filter(|v| v.package_id == id)
                .map(|v| v.served_bytes)
                .sum::<i64>()
    };
    let served_delta = |id: &str| -> i64 {
        deltas
            .iter()
            .filter(|d| d.package_id == id)
            .map(|d| d.served_bytes)
            .sum()
    };
    let mut histories = Vec::new();
    for c in &channels {
        histories.push(store.channel_history(&app, &c.name, 10).await?);
    }
    let base = packages_url(&app);
    let content = html! {
        h1 { "Packages & channels" }
        h2 { "Channels" }
        table.data #channels {
            thead { tr { th { "channel" } th { "version" } th { "moved" } th { "history (newest first)" } @if session.is_admin() { th { "actions" } } } }
            tbody {
                @for (c, hist) in channels.iter().zip(&histories) {
                    tr id={"channel-" (c.name)} {
                        td { (c.name) }
                        td.mono { (c.version.as_deref().unwrap_or("—")) }
                        td { (view::ago(now, c.updated_at)) }
                        td { ul.history { @for (v, at) in hist { li { span.mono { (v) } " " (view::time(*at)) } } } }
                        @if session.is_admin() {
                            td {
                                form.inline method="post" action={"/ui/apps/" (enc(&app)) "/channels/" (enc(&c.name)) "/set"} {
                                    (view::csrf(&session))
                                    select name="version" aria-label={"version for " (c.name)} {
                                        @for p in &packages { option value=(p.version) selected[Some(&p.version) == c.version.as_ref()] { (p.version) " " (p.arch) } }
                                    }
                                    button type="submit" { "Point here" }
                                }
                                @for other in channels.iter().filter(|o| o.name != c.name && o.version.is_some()) {
                                    " " a.button href={"/ui/apps/" (enc(&app)) "/channels/" (enc(&c.name)) "/promote?from=" (enc(&other.name))} { "Promote from " (other.name) "…" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Upstream sync" }
        @if sync.is_empty() {
            p.hint { "Not mirroring an upstream server. " code { "fastpatch-server sync" } " (once) or " code { "serve --sync-upstream URL" } " (in the background) mirrors Flatcar's channels, or another server's." }
        } @else {
            table.data #sync {
                thead { tr { th { "channel" } th { "arch" } th { "state" } th { "version" } th { "progress" } th { "updated" } th { "message" } } }
                tbody {
                    @for r in &sync {
                        tr id={"sync-" (r.channel) "-" (r.arch)} {
                            td { (r.channel) } td { (r.arch) }
                            td.state { (r.state().map_or_else(|| r.state.clone(), |st| st.to_string())) }
                            td.mono { (r.version.as_deref().unwrap_or("—")) }
                            td {
                                @if r.total_bytes > 0 {
                                    progress value=(r.done_bytes) max=(r.total_bytes) {}
                                    " " (crate::sync::human_bytes(r.done_bytes.max(0) as u64)) " of " (crate::sync::human_bytes(r.total_bytes as u64))
                                } @else { "—" }
                            }
                            td { (view::ago(now, r.updated_at)) }
                            td { (r.message) }
                        }
                    }
                }
            }
        }
        h2 { "Packages" }
        table.data #packages {
            thead { tr { th { "version" } th { "arch" } th { "file" } th { "size" } th { "SHA-256 (base64)" } th { "hosted" } th { "operations (who can apply it)" } th { "published" } th { "served full" } th { "served as deltas" } } }
            tbody {
                @for p in &packages {
                    tr id={"package-" (p.version) "-" (p.arch)} {
                        td.mono { (p.version) } td { (p.arch) } td.mono { (p.file_name) } td.num { (p.size) }
                        td.mono.hash { (p.sha256_b64) }
                        td { @if let Some(u) = &p.base_url { (u) } @else { "here" } }
                        td.ops {
                            span.mono { (p.payload_ops.as_deref().unwrap_or("not known: offered to every client")) }
                            @for v in variants.iter().filter(|v| v.package_id == p.id) {
                                br; "also " span.mono { (v.payload_ops) } " (" (v.size) " bytes)"
                            }
                        }
                        td { (view::time(p.created_at)) }
                        td.num.served-full { (served_full(&p.id)) }
                        td.num.served-delta { (served_delta(&p.id)) }
                    }
                }
            }
        }
        h2 { "Delta payloads" }
        @if deltas.is_empty() {
            p.hint { "None yet. A server started with --delta-signing-key makes them when a channel moves, from the versions the channel offered before." }
        } @else {
            table.data #deltas {
                thead { tr { th { "from" } th { "to" } th { "arch" } th { "state" } th { "size" } th { "of full" } th { "served" } th { "made" } th { "note" } } }
                tbody {
                    @for d in &deltas {
                        @let full = packages.iter().find(|p| p.id == d.package_id).map_or(0, |p| p.size);
                        tr id={"delta-" (d.source_version) "-" (d.version) "-" (d.arch)} {
                            td.mono { (d.source_version) } td.mono { (d.version) } td { (d.arch) }
                            td { (d.state.as_str()) }
                            td.num { (d.size) }
                            td.num { @if d.state == crate::store::DeltaState::Ready && full > 0 { (format!("{:.1} %", 100.0 * d.size as f64 / full as f64)) } @else { "—" } }
                            td.num { (d.served_bytes) }
                            td { (view::time(d.created_at)) }
                            td { (d.note.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        @if session.is_admin() {
            h2 { "Publish a payload" }
            form.publish method="post" action={(base) "/upload"} enctype="multipart/form-data" {
                input type="hidden" name="csrf" value=(session.csrf);
                label { "Version " input name="version" required placeholder="3602.2.0"; }
                label { "Arch " select name="arch" { option { "amd64" } option { "arm64" } } }
                label { "Payload file " input type="file" name="file" required; }
                button type="submit" { "Publish" }
            }
        }
    };
    Ok(view::timed(
        view::page(
            &session,
            Nav::Packages,
            "Packages & channels",
            q.notice.as_deref(),
            content,
        ),
        started,
    ))
}

/// Multipart upload, saved to a temp file, then PUT to the API as the body.
pub async fn publish(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(app): Path<String>,
    mut mp: Multipart,
) -> Result<Response, UiError> {
    let dir = crate::payloads::payload_dir(&state.data_dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| UiError::BadRequest(format!("payload directory: {e}")))?;
    let tmp = dir.join(format!(".dashboard-upload-{}", uuid::Uuid::new_v4()));
    let result = async {
        let (mut csrf, mut version, mut arch, mut file_name) = (None, None, None, None);
        while let Some(mut field) = mp
            .next_field()
            .await
            .map_err(|e| UiError::BadRequest(format!("upload: {e}")))?
        {
            match field.name().unwrap_or("") {
                "file" => {
                    file_name = field.file_name().map(str::to_owned);
                    let mut f = tokio::fs::File::create(&tmp)
                        .await
                        .map_err(|e| UiError::BadRequest(format!("temp file: {e}")))?;
                    while let Some(chunk) = field
                        .chunk()
                        .await
                        .map_err(|e| UiError::BadRequest(format!("upload interrupted: {e}")))?
                    {
                        f.write_all(&chunk)
                            .await
                            .map_err(|e| UiError::BadRequest(format!("temp file: {e}")))?;
                    }
                    f.flush()
                        .await
                        .map_err(|e| UiError::BadRequest(format!("temp file: {e}")))?;
                }
                name => {
                    let name = name.to_owned();
                    let text = field
                        .text()
                        .await
                        .map_err(|e| UiError::BadRequest(format!("upload: {e}")))?;
                    match name.as_str() {
                        "csrf" => csrf = Some(text),
                        "version" => version = Some(text.trim().to_owned()),
                        "arch" => arch = Some(text.trim().to_owned()),
                        _ => {}
                    }
                }
            }
        }
        if let Some(r) = check_csrf(&session, csrf.as_deref().unwrap_or("")) {
            return Ok(r);
        }
        let version = version
            .filter(|v| !v.is_empty())
            .ok_or_else(|| UiError::BadRequest("a version is required".into()))?;
        let arch = arch.unwrap_or_else(|| crate::store::DEFAULT_ARCH.into());
        let file_name = file_name
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "update.gz".into());
        let file = tokio::fs::File::open(&tmp)
            .await
            .map_err(|_| UiError::BadRequest("no payload file was sent".into()))?;
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
        let path = format!(
            "/api/v1/apps/{}/packages/{}/{}?file_name={}",
            enc(&app),
            enc(&version),
            enc(&arch),
            enc(&file_name)
        );
        Ok(apicall::call(
            &state,
            &session,
            Method::PUT,
            &path,
            body,
            "application/octet-stream",
        )
        .await
        .respond(
            &packages_url(&app),
            &format!("Published {version} ({arch})."),
        ))
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    result
}

#[derive(Debug, Deserialize)]
pub struct SetChannelForm {
    csrf: String,
    version: String,
}

pub async fn set_channel(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((app, name)): Path<(String, String)>,
    Form(f): Form<SetChannelForm>,
) -> Response {
    if let Some(r) = check_csrf(&session, &f.csrf) {
        return r;
    }
    apicall::call_json(
        &state,
        &session,
        Method::PUT,
        &format!("/api/v1/apps/{}/channels/{}", enc(&app), enc(&name)),
        &serde_json::json!({ "version": f.version }),
    )
    .await
    .respond(
        &packages_url(&app),
        &format!("Channel {name} now points at {}.", f.version),
    )
}

#[derive(Debug, Deserialize)]
pub struct PromoteQuery {
    from: String,
}

/// The confirmation step: what will change, and a button to do it.
pub async fn promote_confirm(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((app, to)): Path<(String, String)>,
    Query(q): Query<PromoteQuery>,
) -> Result<Response, UiError> {
    let store = &state.store;
    let from = store
        .channel(&app, &q.from)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("no channel {}", q.from)))?;
    let current = store.channel(&app, &to).await?.and_then(|c| c.version);
    let version = from
        .version
        .ok_or_else(|| UiError::BadRequest(format!("channel {} has no version", q.from)))?;
    let pkgs: Vec<_> = store
        .packages(&app)
        .await?
        .into_iter()
        .filter(|p| p.version == version)
        .collect();
    let groups: Vec<_> = store
        .groups(&app)
        .await?
        .into_iter()
        .filter(|g| g.channel == to)
        .map(|g| g.name)
        .collect();
    let content = html! {
        h1 { "Promote " (q.from) " → " (to) "?" }
        p { "Channel " strong { (to) } " moves from " strong.mono { (current.as_deref().unwrap_or("no version")) }
            " to " strong.mono #promote-version { (version) } ", the same packages bit for bit:" }
        ul { @for p in &pkgs { li.mono { (p.arch) " " (p.file_name) " sha256 " (p.sha256_b64) } } }
        p { "Groups following " (to) " start a new rollout: "
            @if groups.is_empty() { "none." } @else { strong { (groups.join(", ")) } "." } }
        @if session.is_admin() {
            form method="post" action={"/ui/apps/" (enc(&app)) "/channels/" (enc(&to)) "/promote"} {
                (view::csrf(&session))
                input type="hidden" name="from" value=(q.from);
                button.danger #confirm-promote type="submit" { "Yes, promote " (version) " to " (to) }
                " " a href=(packages_url(&app)) { "Cancel" }
            }
        } @else {
            p.hint { "Only an admin can promote." }
        }
    };
    Ok(view::page(
        &session,
        Nav::Packages,
        "Promote",
        None,
        content,
    ))
}

#[derive(Debug, Deserialize)]
pub struct PromoteForm {
    csrf: String,
    from: String,
}

pub async fn promote(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((app, to)): Path<(String, String)>,
    Form(f): Form<PromoteForm>,
) -> Response {
    if let Some(r) = check_csrf(&session, &f.csrf) {
        return r;
    }
    let out = apicall::call_json(
        &state,
        &session,
        Method::POST,
        &format!("/api/v1/apps/{}/channels/{}/promote", enc(&app), enc(&to)),
        &serde_json::json!({ "from": f.from }),
    )
    .await;
    let version = out
        .body
        .get("version")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    out.respond(
        &packages_url(&app),
        &format!("Promoted {version} from {} to {to}.", f.from),
    )
}

#[derive(Debug, Deserialize)]
pub struct ActivityQuery {
    before: Option<i64>,
}

pub async fn activity(
    State(state): State<Arc<AppState>>,
    session: Session,
    Query(q): Query<ActivityQuery>,
) -> Result<Response, UiError> {
    const LIMIT: i64 = 50;
    let rows = state.store.activity(q.before, LIMIT).await?;
    let content = html! {
        h1 { "Activity" }
        (activity_list(&rows))
        nav.pages {
            @if q.before.is_some() { a href="/ui/activity" { "← newest" } " " }
            @if rows.len() as i64 == LIMIT {
                @if let Some(last) = rows.last() { a rel="next" href={"/ui/activity?before=" (last.id)} { "older →" } }
            }
        }
    };
    Ok(view::page(
        &session,
        Nav::Activity,
        "Activity",
        None,
        content,
    ))
}
