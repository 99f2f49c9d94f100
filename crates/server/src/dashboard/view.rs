//! Page layout and small shared pieces of markup.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::auth::Session;
use crate::api::Role;

/// Characters left alone in a path segment or query value.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Which top-level section a page belongs to (highlighted in the nav).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Instances,
    Activity,
    Packages,
}

fn head(title: &str) -> Markup {
    html! {
        (DOCTYPE)
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · fastpatch" }
        link rel="stylesheet" href="/ui/assets/app.css";
        script src="/ui/assets/app.js" defer {}
    }
}

/// A page without navigation (login, errors before login).
pub fn bare(title: &str, body: Markup) -> Response {
    let markup = html! {
        html lang="en" {
            head { (head(title)) }
            body { (body) }
        }
    };
    html_response(markup)
}

pub fn html_response(m: Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        m.into_string(),
    )
        .into_response()
}

/// The full page: navigation, role badge, optional notice, content.
pub fn page(
    session: &Session,
    nav: Nav,
    title: &str,
    notice: Option<&str>,
    content: Markup,
) -> Response {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
    };
    let markup = html! {
        html lang="en" {
            head { (head(title)) }
            body {
                header.top {
                    a.brand href="/ui/" { "fastpatch" }
                    nav {
                        (item(Nav::Overview, "/ui/", "Overview"))
                        (item(Nav::Instances, "/ui/instances", "Instances"))
                        (item(Nav::Activity, "/ui/activity", "Activity"))
                        (item(Nav::Packages, "/ui/packages", "Packages & channels"))
                    }
                    span.who {
                        @match session.role {
                            Role::Admin => span.role.admin { "admin" },
                            Role::Viewer => span.role.viewer title="read-only: no write controls" { "viewer (read-only)" },
                        }
                        form.inline method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some(n) = notice { p.notice role="status" { (n) } }
                    (content)
                }
            }
        }
    };
    html_response(markup)
}

/// A page with a heading and a sentence (errors, refusals).
pub fn message_page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = html! {
        main.message {
            h1 { (title) }
            p.error role="alert" { (text) }
            p { a href="/ui/" { "Back to the overview" } }
        }
    };
    (status, bare(title, body)).into_response()
}

/// `2026-03-04 12:00:05 UTC`, machine-readable inside `<time>` (JS shows local time).
pub fn time(ts: i64) -> Markup {
    let dt = chrono::DateTime::from_timestamp(ts, 0).unwrap_or_default();
    html! {
        time datetime=(dt.to_rfc3339()) { (dt.format("%Y-%m-%d %H:%M:%S UTC")) }
    }
}

/// "3 min ago", "2 d ago".
pub fn ago(now: i64, ts: i64) -> String {
    let d = (now - ts).max(0);
    match d {
        0..=59 => format!("{d} s ago"),
        60..=3599 => format!("{} min ago", d / 60),
        3600..=86399 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86400),
    }
}

/// A hidden CSRF field for forms.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A status as a badge: the word is always shown, colour only repeats it.
pub fn status_badge(status: &str) -> Markup {
    html! { span class={"badge st-" (status)} { (status) } }
}

/// Horizontal stacked bar, each segment labelled in text (not by colour alone).
pub fn stacked_bar(label: &str, parts: &[(String, i64, String)]) -> Markup {
    let total: i64 = parts.iter().map(|p| p.1).sum();
    html! {
        div.bar role="img" aria-label=(label) {
            @for (i, (name, n, class)) in parts.iter().enumerate() {
                @if *n > 0 && total > 0 {
                    @let pct = (*n as f64) * 100.0 / (total as f64);
                    span class={"seg " (class) " pat" (i % 6)} style={"width:" (format!("{pct:.3}")) "%"}
                        title={(name) ": " (n) " (" (format!("{pct:.1}")) "%)"} {}
                }
            }
        }
        ul.legend {
            @for (i, (name, n, class)) in parts.iter().enumerate() {
                @if *n > 0 {
                    li {
                        span class={"swatch " (class) " pat" (i % 6)} {}
                        (name) ": " strong { (n) }
                        @if total > 0 { " (" (format!("{:.1}", (*n as f64) * 100.0 / (total as f64))) "%)" }
                    }
                }
            }
        }
    }
}

/// Adds `Server-Timing: app;dur=<ms>` (what scripts/bench-dashboard reads).
pub fn timed(mut resp: Response, started: std::time::Instant) -> Response {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

/// `?notice=…` shown after a redirect.
#[derive(Debug, Default, serde::Deserialize)]
pub struct NoticeQuery {
    pub notice: Option<String>,
}

/// The rollout statuses in the order a progress bar shows them, with labels.
pub const PROGRESS: [(&str, &str); 7] = [
    ("complete", "complete"),
    ("installed", "installed"),
    ("downloading", "downloading"),
    ("downloaded", "downloaded"),
    ("granted", "granted"),
    ("error", "failed"),
    ("on-hold", "on hold"),
];

/// Rollout progress of a tally as a labelled bar (undefined = not started).
pub fn progress_bar(t: &crate::store::dashboard::Tally) -> Markup {
    let mut parts: Vec<(String, i64, String)> = PROGRESS
        .iter()
        .map(|(s, label)| ((*label).to_owned(), t.status(s), format!("st-{s}")))
        .collect();
    parts.push((
        "not started".into(),
        t.status("undefined"),
        "st-undefined".into(),
    ));
    stacked_bar("rollout progress by status", &parts)
}

/// Versions of a tally as a labelled bar, newest first.
pub fn version_bar(t: &crate::store::dashboard::Tally) -> Markup {
    let mut versions: Vec<(&String, &i64)> = t.by_version.iter().collect();
    versions.sort_by(|a, b| crate::version::compare(b.0, a.0));
    let parts: Vec<(String, i64, String)> = versions
        .into_iter()
        .enumerate()
        .map(|(i, (v, n))| (v.clone(), *n, format!("vc{}", i % 8)))
        .collect();
    stacked_bar("instances by version", &parts)
}
