//! Overview: applications → channels → groups, each group with its version
//! breakdown and rollout progress; halted groups first and in red.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use maud::html;

use super::auth::Session;
use super::view::{self, enc, Nav, NoticeQuery};
use super::{Dash, UiError};
use crate::store::dashboard::{self as queries, Tally};
use crate::AppState;

/// The overview uses the sampler's newest counts when they are this fresh
/// (one bucket read, however many machines); otherwise it counts live.
pub const SAMPLE_MAX_AGE_SECS: i64 = 180;

pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(dash): Extension<Arc<Dash>>,
    session: Session,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, UiError> {
    let started = Instant::now();
    let now = state.clock.now().timestamp();
    let store = &state.store;
    dash.ensure_schema(&state).await?;
    let (as_of, tallies) = match queries::latest_sample(store, now, SAMPLE_MAX_AGE_SECS).await? {
        Some((bucket, t)) => (Some(bucket), t),
        None => (None, queries::tally(&queries::counts_all(store).await?)),
    };
    let mut sections = Vec::new();
    for app in store.apps().await? {
        let channels = store.channels(&app.id).await?;
        let packages = store.packages(&app.id).await?;
        let mut groups = store.groups(&app.id).await?;
        // Halted groups first: they need someone.
        groups.sort_by_key(|g| (!g.halted, g.name.clone()));
        let empty = Tally::default();
        let section = html! {
            section.app {
                h2 { (app.name) " " small.mono { (app.id) } }
                h3 { "Channels" }
                table.channels {
                    thead { tr { th { "channel" } th { "version" } th { "architectures" } th { "moved" } } }
                    tbody {
                        @for c in &channels {
                            tr {
                                td { (c.name) }
                                td.mono { (c.version.as_deref().unwrap_or("—")) }
                                td {
                                    @let arches: BTreeSet<&str> = packages.iter()
                                        .filter(|p| Some(&p.version) == c.version.as_ref())
                                        .map(|p| p.arch.as_str()).collect();
                                    @if arches.is_empty() { "—" } @else { (arches.into_iter().collect::<Vec<_>>().join(", ")) }
                                }
                                td { (view::ago(now, c.updated_at)) }
                            }
                        }
                    }
                }
                p { a href={"/ui/apps/" (enc(&app.id)) "/packages"} { "Packages & channel history →" } }
                h3 { "Groups" }
                div.groups {
                    @for g in &groups {
                        @let t = tallies.get(&(app.id.clone(), g.name.clone())).unwrap_or(&empty);
                        @let target = channels.iter().find(|c| c.name == g.channel).and_then(|c| c.version.clone());
                        article.group.halted[g.halted] data-group=(g.name) {
                            h4 {
                                a href={"/ui/apps/" (enc(&app.id)) "/groups/" (enc(&g.name))} { (g.name) }
                                " " small { "→ channel " (g.channel) }
                            }
                            @if g.halted {
                                p.halt-banner role="alert" {
                                    strong { "⛔ HALTED" }
                                    " — " (g.halted_reason.as_deref().unwrap_or("no reason given"))
                                }
                            } @else if !g.updates_enabled {
                                p.paused-banner { strong { "Updates disabled" } " by policy" }
                            }
                            p.summary {
                                strong.total { (t.total) } " instances"
                                @if let Some(v) = &target {
                                    " · " strong.on-target { (t.version(v)) } " on " span.mono { (v) }
                                    @if t.total > 0 { " (" (format!("{:.1}", t.version(v) as f64 * 100.0 / t.total as f64)) "%)" }
                                } @else { " · channel has no version" }
                            }
                            h5 { "Versions" }
                            (view::version_bar(t))
                            h5 { "Rollout" }
                            (view::progress_bar(t))
                        }
                    }
                }
            }
        };
        sections.push(section);
    }
    let content = html! {
        h1 { "Overview" }
        p.hint {
            @match as_of {
                Some(b) => { "Counts as of the sample taken in the minute from " (view::time(b)) " (sampled every minute; group pages count live up to " (queries::LIVE_COUNT_MAX) " machines). " },
                None => { "Counts are live. " },
            }
            label { input #autorefresh type="checkbox"; " refresh every 30 s" }
        }
        @for s in sections { (s) }
    };
    Ok(view::timed(
        view::page(
            &session,
            Nav::Overview,
            "Overview",
            q.notice.as_deref(),
            content,
        ),
        started,
    ))
}
