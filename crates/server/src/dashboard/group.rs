//! Group page: live counts, version/status charts over 1h/1d/7d/30d, policy
//! (an edit form for admins), pause/resume, the halt reason.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::Response;
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;

use super::apicall;
use super::auth::{check_csrf, Session};
use super::charts::{self, ChartData};
use super::rollup::Range;
use super::view::{self, enc, Nav};
use super::{Dash, UiError};
use crate::store::dashboard as queries;
use crate::store::{hhmm, Group, DAYS};
use crate::AppState;

#[derive(Debug, Default, Deserialize)]
pub struct GroupQuery {
    pub range: Option<String>,
    pub notice: Option<String>,
}

fn group_url(app: &str, group: &str) -> String {
    format!("/ui/apps/{}/groups/{}", enc(app), enc(group))
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(dash): Extension<Arc<Dash>>,
    session: Session,
    Path((app, name)): Path<(String, String)>,
    Query(q): Query<GroupQuery>,
) -> Result<Response, UiError> {
    let started = Instant::now();
    dash.ensure_schema(&state).await?;
    let now = state.clock.now().timestamp();
    let store = &state.store;
    let range = q
        .range
        .as_deref()
        .and_then(Range::parse)
        .unwrap_or(Range::Day);
    let g = store
        .group(&app, &name)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("no group {name} in application {app}")))?;
    let (tally, as_of) = queries::group_tally(
        store,
        &app,
        &name,
        now,
        super::overview::SAMPLE_MAX_AGE_SECS,
    )
    .await?;
    let channel = store.channel(&app, &g.channel).await?;
    let target = channel.as_ref().and_then(|c| c.version.clone());
    let samples =
        queries::samples(store, &app, &name, range.res(), now - range.span_secs()).await?;
    let activity = store.group_activity(&app, &name, 10).await?;
    let versions = ChartData::from_samples(&samples, "v", range.res());
    let statuses = ChartData::from_samples(&samples, "s", range.res());
    let base = group_url(&app, &name);
    let instances_url = format!("/ui/instances?app={}&group={}", enc(&app), enc(&name));

    let content = html! {
        p.crumbs { a href="/ui/" { "Overview" } " › " (app) " › group" }
        h1 { "Group " span #group-name { (g.name) } }
        @if g.halted {
            div.halt-banner #halted role="alert" {
                p { strong { "⛔ HALTED" } " — no machine in this group is offered an update." }
                p { "Reason: " strong #halt-reason { (g.halted_reason.as_deref().unwrap_or("no reason given")) } }
                @if let Some(at) = g.halted_at { p { "Since " (view::time(at)) " (" (view::ago(now, at)) ")" } }
            }
        } @else {
            p.running-banner #running { "▶ Rollout running" @if !g.updates_enabled { " — but updates are disabled by policy" } }
        }
        @if session.is_admin() {
            div.actions {
                @if g.halted {
                    form method="post" action={(base) "/resume"} {
                        (view::csrf(&session))
                        button #resume type="submit" { "Resume rollout" }
                    }
                } @else {
                    form method="post" action={(base) "/pause"} data-confirm="Pause (halt) the rollout of this group?" {
                        (view::csrf(&session))
                        label { "Reason " input name="reason" placeholder="paused from the dashboard"; }
                        button #pause.danger type="submit" { "Pause rollout" }
                    }
                }
            }
        }
        p {
            "Channel " strong { (g.channel) } " → "
            strong.mono #target { (target.as_deref().unwrap_or("no version")) }
        }
        section.counts {
            h2 { "Now" }
            @if let Some(b) = as_of {
                p.hint #counts-as-of { "Counted in the minute from " (view::time(b)) " (groups over " (queries::LIVE_COUNT_MAX) " machines are counted by the sampler once a minute)." }
            }
            p.summary { strong #total { (tally.total) } " instances"
                @if let Some(v) = &target { ", " strong #on-target { (tally.version(v)) } " on " (v) } }
            div.two {
                div {
                    h3 { "By status" }
                    (view::progress_bar(&tally))
                    table.data #status-counts {
                        thead { tr { th { "status" } th { "machines" } th { "meaning" } } }
                        tbody {
                            @for s in charts::STATUS_ORDER {
                                tr id={"count-" (s)} {
                                    td { a href={(instances_url) "&status=" (enc(s))} { (view::status_badge(s)) } }
                                    td.num { (tally.status(s)) }
                                    td { (super::words::status(s)) }
                                }
                            }
                        }
                    }
                }
                div {
                    h3 { "By version" }
                    (view::version_bar(&tally))
                    table.data #version-counts {
                        thead { tr { th { "version" } th { "machines" } } }
                        tbody {
                            @for (v, n) in &tally.by_version {
                                tr { td.mono { a href={(instances_url) "&version=" (enc(v))} { (v) } } td.num { (n) } }
                            }
                        }
                    }
                }
            }
            p { a href=(instances_url) { "All instances of this group →" } }
        }
        section.history {
            h2 { "Over time" }
            nav.ranges aria-label="chart range" {
                @for r in Range::ALL {
                    a href={(base) "?range=" (r.as_str())} aria-current=[(r == range).then_some("true")] { (r.as_str()) }
                }
            }
            div.two {
                (charts::render("versions", &format!("Versions over the last {}", range.as_str()), &versions, range, now))
                (charts::render("statuses", &format!("Statuses over the last {}", range.as_str()), &statuses, range, now))
            }
        }
        section.policy {
            h2 { "Policy" }
            @if session.is_admin() { (policy_form(&session, &base, &g)) } @else { (policy_view(&g)) }
        }
        section {
            h2 { "Recent activity" }
            (activity_list(&activity))
        }
    };
    Ok(view::timed(
        view::page(
            &session,
            Nav::Overview,
            &format!("Group {name}"),
            q.notice.as_deref(),
            content,
        ),
        started,
    ))
}

pub fn activity_list(rows: &[crate::store::ActivityRow]) -> Markup {
    html! {
        @if rows.is_empty() { p.hint { "Nothing yet." } }
        ul.activity {
            @for a in rows {
                li class={"act-" (a.kind)} { (view::time(a.at)) " " span.kind { (a.kind.replace('_', " ")) } " — " (a.message) }
            }
        }
    }
}

fn opt(n: Option<i64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

fn policy_view(g: &Group) -> Markup {
    html! {
        dl.policy {
            dt { "Updates enabled" } dd { (if g.updates_enabled { "yes" } else { "no" }) }
            dt { "Safe mode" } dd { (if g.safe_mode { "on: one at a time until the first succeeds; a failure halts" } else { "off" }) }
            dt { "Max updates per period" } dd { (g.max_updates_per_period.map(|n| format!("{n} per {} s", g.period_secs)).unwrap_or_else(|| "unlimited".into())) }
            dt { "Max concurrent" } dd { (g.max_concurrent.map(|n| n.to_string()).unwrap_or_else(|| "unlimited".into())) }
            dt { "Update timeout" } dd { (g.update_timeout_secs) " s" }
            dt { "Office hours" } dd {
                @if g.office_hours { (g.office_window()) } @else { "any time" }
            }
            dt { "Staged rollout" } dd { @if g.rollout_duration_secs > 0 { "over " (g.rollout_duration_secs) " s" } @else { "everyone at once" } }
        }
    }
}

fn policy_form(session: &Session, base: &str, g: &Group) -> Markup {
    html! {
        form.policy method="post" action={(base) "/policy"} {
            (view::csrf(session))
            label { "Channel " input name="channel" value=(g.channel) required; }
            label { input type="checkbox" name="updates_enabled" checked[g.updates_enabled]; " updates enabled" }
            label { input type="checkbox" name="safe_mode" checked[g.safe_mode]; " safe mode (one at a time until the first succeeds; a failure halts)" }
            label { "Max updates per period (empty = unlimited) " input name="max_updates_per_period" inputmode="numeric" value=(opt(g.max_updates_per_period)); }
            label { "Period (s) " input name="period_secs" inputmode="numeric" value=(g.period_secs) required; }
            label { "Max concurrent (empty = unlimited) " input name="max_concurrent" inputmode="numeric" value=(opt(g.max_concurrent)); }
            label { "Update timeout (s) " input name="update_timeout_secs" inputmode="numeric" value=(g.update_timeout_secs) required; }
            fieldset {
                legend { label { input type="checkbox" name="office_hours" checked[g.office_hours]; " only in office hours" } }
                @for (i, d) in DAYS.iter().enumerate() {
                    label.day { input type="checkbox" name=(d) checked[g.office_days & (1 << i) != 0]; " " (d) }
                }
                label { "from " input name="start" value=(hhmm(g.office_start_minute)) pattern="[0-9]{1,2}:[0-9]{2}" size="5"; }
                label { "to " input name="end" value=(hhmm(g.office_end_minute)) pattern="[0-9]{1,2}:[0-9]{2}" size="5"; }
                label { "time zone " input name="office_tz" value=(g.office_tz); }
            }
            label { "Staged rollout over (s, 0 = everyone at once) " input name="rollout_duration_secs" inputmode="numeric" value=(g.rollout_duration_secs); }
            button type="submit" { "Save policy" }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PauseForm {
    csrf: String,
    reason: Option<String>,
}

pub async fn pause(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((app, name)): Path<(String, String)>,
    Form(f): Form<PauseForm>,
) -> Response {
    if let Some(r) = check_csrf(&session, &f.csrf) {
        return r;
    }
    let reason = f
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "paused from the dashboard".into());
    apicall::call_json(
        &state,
        &session,
        Method::POST,
        &format!("/api/v1/apps/{}/groups/{}/halt", enc(&app), enc(&name)),
        &serde_json::json!({ "reason": reason }),
    )
    .await
    .respond(&group_url(&app, &name), "Rollout paused.")
}

pub async fn resume(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((app, name)): Path<(String, String)>,
    Form(f): Form<super::auth::CsrfForm>,
) -> Response {
    if let Some(r) = check_csrf(&session, &f.csrf) {
        return r;
    }
    apicall::call_json(
        &state,
        &session,
        Method::POST,
        &format!("/api/v1/apps/{}/groups/{}/resume", enc(&app), enc(&name)),
        &serde_json::Value::Null,
    )
    .await
    .respond(&group_url(&app, &name), "Rollout resumed.")
}

#[derive(Debug, Default, Deserialize)]
pub struct PolicyForm {
    csrf: String,
    channel: String,
    updates_enabled: Option<String>,
    safe_mode: Option<String>,
    max_updates_per_period: Option<String>,
    period_secs: String,
    max_concurrent: Option<String>,
    update_timeout_secs: String,
    office_hours: Option<String>,
    mon: Option<String>,
    tue: Option<String>,
    wed: Option<String>,
    thu: Option<String>,
    fri: Option<String>,
    sat: Option<String>,
    sun: Option<String>,
    start: String,
    end: String,
    office_tz: String,
    rollout_duration_secs: String,
}

/// The form applied to the current group (pure; errors are shown to the user).
pub fn apply_policy(mut g: Group, f: &PolicyForm) -> Result<Group, String> {
    let int = |field: &str, s: &str| -> Result<i64, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("{field}: {s:?} is not a whole number"))
    };
    let limit = |field: &str, s: &Option<String>| -> Result<Option<i64>, String> {
        match s.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => int(field, v).map(Some),
        }
    };
    g.channel = f.channel.trim().to_owned();
    g.updates_enabled = f.updates_enabled.is_some();
    g.safe_mode = f.safe_mode.is_some();
    g.max_updates_per_period = limit("max updates per period", &f.max_updates_per_period)?;
    g.period_secs = int("period", &f.period_secs)?;
    g.max_concurrent = limit("max concurrent", &f.max_concurrent)?;
    g.update_timeout_secs = int("update timeout", &f.update_timeout_secs)?;
    g.office_hours = f.office_hours.is_some();
    g.office_days = [&f.mon, &f.tue, &f.wed, &f.thu, &f.fri, &f.sat, &f.sun]
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_some())
        .fold(0, |m, (i, _)| m | (1 << i));
    let (start, end) = crate::cli::parse_hours(&format!("{}-{}", f.start.trim(), f.end.trim()))
        .map_err(|e| format!("office hours: {e}"))?;
    g.office_start_minute = start;
    g.office_end_minute = end;
    g.office_tz = f.office_tz.trim().to_owned();
    g.rollout_duration_secs = int("staged rollout", &f.rollout_duration_secs)?;
    Ok(g)
}

pub async fn policy(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((app, name)): Path<(String, String)>,
    Form(f): Form<PolicyForm>,
) -> Result<Response, UiError> {
    if let Some(r) = check_csrf(&session, &f.csrf) {
        return Ok(r);
    }
    let g = state
        .store
        .group(&app, &name)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("no group {name}")))?;
    let g = apply_policy(g, &f).map_err(UiError::BadRequest)?;
    let json = serde_json::to_value(&g).map_err(|e| UiError::BadRequest(e.to_string()))?;
    Ok(apicall::call_json(
        &state,
        &session,
        Method::PUT,
        &format!("/api/v1/apps/{}/groups/{}", enc(&app), enc(&name)),
        &json,
    )
    .await
    .respond(&group_url(&app, &name), "Policy saved."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> PolicyForm {
        PolicyForm {
            channel: "beta".into(),
            updates_enabled: Some("on".into()),
            period_secs: "3600".into(),
            update_timeout_secs: "600".into(),
            max_concurrent: Some(" 5 ".into()),
            max_updates_per_period: Some(String::new()),
            mon: Some("on".into()),
            fri: Some("on".into()),
            start: "08:30".into(),
            end: "17:00".into(),
            office_tz: "Europe/Berlin".into(),
            rollout_duration_secs: "0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn form_becomes_policy() {
        let g = apply_policy(Group::new("a", "g", "stable"), &form()).expect("valid");
        assert_eq!(g.channel, "beta");
        assert!(g.updates_enabled && !g.safe_mode && !g.office_hours);
        assert_eq!(g.max_concurrent, Some(5));
        assert_eq!(g.max_updates_per_period, None);
        assert_eq!(g.office_days, 0b10001);
        assert_eq!((g.office_start_minute, g.office_end_minute), (510, 1020));
    }

    #[test]
    fn bad_numbers_are_named() {
        let mut f = form();
        f.period_secs = "an hour".into();
        let e = apply_policy(Group::new("a", "g", "stable"), &f).expect_err("invalid");
        assert!(e.contains("period"), "{e}");
        let mut f = form();
        f.end = "25:00".into();
        assert!(apply_policy(Group::new("a", "g", "stable"), &f).is_err());
    }
}
