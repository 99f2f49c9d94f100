//! Instances: a filtered list with keyset pages, and one machine's page.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::auth::Session;
use super::charts::STATUS_ORDER;
use super::view::{self, enc, Nav};
use super::{words, UiError};
use crate::store::InstanceFilter;
use crate::AppState;

/// Rows per page.
pub const PAGE: i64 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub app: Option<String>,
    pub group: Option<String>,
    pub status: Option<String>,
    pub version: Option<String>,
    pub silent_days: Option<String>,
    /// Machine id, alias or IP (exact).
    pub q: Option<String>,
    pub after: Option<String>,
}

fn given(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl ListQuery {
    /// The query string for these filters (without the cursor).
    fn query_string(&self, app: &str) -> String {
        let mut parts = vec![format!("app={}", enc(app))];
        for (k, v) in [
            ("group", &self.group),
            ("status", &self.status),
            ("version", &self.version),
            ("silent_days", &self.silent_days),
            ("q", &self.q),
        ] {
            if let Some(v) = given(v) {
                parts.push(format!("{k}={}", enc(&v)));
            }
        }
        parts.join("&")
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Result<Response, UiError> {
    let started = Instant::now();
    let now = state.clock.now().timestamp();
    let store = &state.store;
    let apps = store.apps().await?;
    let app = match given(&q.app) {
        Some(a) => a,
        None => apps
            .first()
            .map(|a| a.id.clone())
            .ok_or_else(|| UiError::NotFound("no applications yet".into()))?,
    };
    let silent_days = match given(&q.silent_days) {
        None => None,
        Some(s) => Some(s.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
            UiError::BadRequest(format!(
                "silent for more than {s:?} days: not a number of days"
            ))
        })?),
    };
    let status = given(&q.status)
        .map(|s| s.parse::<crate::policy::InstanceStatus>())
        .transpose()
        .map_err(|e| UiError::BadRequest(e.to_string()))?;
    let filter = InstanceFilter {
        app_id: Some(app.clone()),
        group: given(&q.group),
        status,
        version: given(&q.version),
        silent_for_secs: silent_days.map(|d| d * 86400),
        search: given(&q.q),
        after: given(&q.after),
        limit: Some(PAGE + 1),
    };
    let mut rows = store.list_instances(&filter, now).await?;
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    let groups = store.groups(&app).await?;
    let qs = q.query_string(&app);
    let sel = |a: &Option<String>, v: &str| given(a).as_deref() == Some(v);

    let content = html! {
        h1 { "Instances" }
        form.filters method="get" action="/ui/instances" {
            @if apps.len() > 1 {
                label { "App " select name="app" { @for a in &apps { option value=(a.id) selected[a.id == app] { (a.name) } } } }
            } @else { input type="hidden" name="app" value=(app); }
            label { "Search " input #search type="search" name="q" value=(given(&q.q).unwrap_or_default()) placeholder="machine id, alias or IP"; }
            label { "Group " select name="group" {
                option value="" { "any" }
                @for g in &groups { option value=(g.name) selected[sel(&q.group, &g.name)] { (g.name) } }
            } }
            label { "Status " select name="status" {
                option value="" { "any" }
                @for s in STATUS_ORDER { option value=(s) selected[sel(&q.status, s)] { (s) } }
            } }
            label { "Version " input name="version" value=(given(&q.version).unwrap_or_default()) size="12"; }
            label { "Silent for more than " input name="silent_days" value=(given(&q.silent_days).unwrap_or_default()) size="3" inputmode="numeric"; " days" }
            button type="submit" { "Filter" }
            " " a href="/ui/instances" { "clear" }
        }
        @if rows.is_empty() {
            p.empty #no-instances { "No instance matches." }
        } @else {
            table.data #instances {
                thead { tr { th { "machine id" } th { "alias" } th { "IP" } th { "group" } th { "version" } th { "status" } th { "last check-in" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td.mono { a href={"/ui/apps/" (enc(&r.app_id)) "/instances/" (enc(&r.machine_id))} { (r.machine_id) } }
                            td.alias { (r.alias.as_deref().unwrap_or("")) }
                            td.mono { (r.ip.as_deref().unwrap_or("")) }
                            td { (r.group_name) }
                            td.mono { (r.version) }
                            td { (view::status_badge(r.status.as_str())) }
                            td title=(chrono::DateTime::from_timestamp(r.last_check_at, 0).unwrap_or_default().to_rfc3339()) { (view::ago(now, r.last_check_at)) }
                        }
                    }
                }
            }
        }
        nav.pages {
            @if given(&q.after).is_some() { a href={"/ui/instances?" (qs)} { "← first page" } " " }
            @if more {
                @if let Some(last) = rows.last() {
                    a #next rel="next" href={"/ui/instances?" (qs) "&after=" (enc(&last.machine_id))} { "next page →" }
                }
            }
        }
    };
    Ok(view::timed(
        view::page(&session, Nav::Instances, "Instances", None, content),
        started,
    ))
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((app, machine)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let started = Instant::now();
    let now = state.clock.now().timestamp();
    let store = &state.store;
    let inst = store
        .instance(&app, &machine)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("no instance {machine}")))?;
    let history = store.history(&app, &machine, 100).await?;
    let events = store.events(&app, &machine, 100).await?;
    let content = html! {
        p.crumbs { a href="/ui/instances" { "Instances" } " › " (inst.machine_id) }
        h1 { "Instance " span.mono { (inst.machine_id) } }
        dl.instance {
            dt { "Alias" } dd #alias { (inst.alias.as_deref().unwrap_or("—")) }
            dt { "IP" } dd.mono { (inst.ip.as_deref().unwrap_or("—")) }
            dt { "Group" } dd { a href={"/ui/apps/" (enc(&app)) "/groups/" (enc(&inst.group_name))} { (inst.group_name) } }
            dt { "Version" } dd.mono { (inst.version) " (" (inst.arch) ")" }
            dt { "Status" } dd { (view::status_badge(inst.status.as_str())) " " (words::status(inst.status.as_str())) }
            @if let Some(t) = &inst.target_version { dt { "Offered" } dd.mono { (t) } }
            @if let Some(c) = inst.last_error_code { dt { "Last error" } dd.error { (c) ": " (words::error_code(c)) } }
            dt { "Last check-in" } dd { (view::time(inst.last_check_at)) " (" (view::ago(now, inst.last_check_at)) ")" }
            dt { "First seen" } dd { (view::time(inst.created_at)) }
        }
        h2 { "Status history" }
        table.data #history {
            thead { tr { th { "time" } th { "status" } th { "version" } th { "target" } } }
            tbody {
                @for h in &history {
                    tr { td { (view::time(h.at)) } td { (view::status_badge(h.status.as_str())) } td.mono { (h.version) } td.mono { (h.target_version.as_deref().unwrap_or("")) } }
                }
            }
        }
        h2 { "Events" }
        @if events.is_empty() { p.hint { "No events reported." } }
        table.data #events {
            thead { tr { th { "time" } th { "event" } th { "error" } th { "version" } } }
            tbody {
                @for e in &events {
                    tr.failed[e.event_result == 0] {
                        td { (view::time(e.at)) }
                        td { (words::event(e.event_type, e.event_result)) " " small.mono { "(" (e.event_type) "/" (e.event_result) ")" } }
                        td { @if let Some(c) = e.error_code { @if c != 0 || e.event_result == 0 { (c) ": " (words::error_code(c)) } } }
                        td.mono { (e.version) @if let Some(p) = &e.previous_version { " (from " (p) ")" } }
                    }
                }
            }
        }
    };
    Ok(view::timed(
        view::page(
            &session,
            Nav::Instances,
            &format!("Instance {machine}"),
            None,
            content,
        ),
        started,
    ))
}
