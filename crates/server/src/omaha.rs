//! The Omaha v3 endpoint: parse, record, decide, answer. Every `<app>` in a
//! request gets an answer, known or not.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Timelike, Utc};
use fastpatch_omaha::{
    normalize_appid, Limits, ParseError, PayloadOps, Request, RequestApp, Response, ResponseApp,
    Status, UpdateCheckResponse,
};
use tracing::{debug, info, warn};

use crate::policy::{self, Decision, GroupCounts, InstanceStatus};
use crate::store::{
    AppConfig, CheckIn, DeltaRow, GrantOutcome, GrantRequest, InstanceRow, PackageFile, PackageRow,
    StoreError, VariantRow,
};
use crate::variants::{self, Chosen};
use crate::AppState;

/// The group a machine lands in when it sends no track.
pub const DEFAULT_TRACK: &str = "stable";

#[derive(Debug, thiserror::Error)]
pub enum OmahaError {
    #[error("bad request: {0}")]
    BadRequest(#[from] ParseError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Answers one request body; `ip` is the peer address for the instance record.
pub async fn handle(
    state: &AppState,
    body: &[u8],
    ip: Option<String>,
) -> Result<String, OmahaError> {
    let limits = Limits {
        max_bytes: state.max_body_bytes,
        ..Limits::default()
    };
    let req = Request::parse_with_limits(body, &limits)?;
    let now = state.clock.now();
    let mut apps = Vec::with_capacity(req.apps.len());
    for app in &req.apps {
        apps.push(answer_app(state, app, ip.as_deref(), now).await?);
    }
    let elapsed = u64::from(now.num_seconds_from_midnight());
    Ok(Response::new("fastpatch", elapsed, apps).to_xml())
}

async fn answer_app(
    state: &AppState,
    app: &RequestApp<'_>,
    ip: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ResponseApp, OmahaError> {
    let app_id = normalize_appid(&app.appid);
    let m = &state.metrics;
    let Some(config) = state.store.app_config(&app_id).await? else {
        m.inc(&m.unknown_app);
        return Ok(ResponseApp::error(
            app.appid.clone(),
            Status::ErrorUnknownApplication,
        ));
    };
    let track = app
        .track
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_TRACK);
    let Some(group) = config.groups.iter().find(|g| g.name == track) else {
        m.inc(&m.unknown_group);
        return Ok(ResponseApp::error(
            app.appid.clone(),
            Status::ErrorUnknownApplicationOrGroup,
        ));
    };
    let mut answer = ResponseApp::ok(app.appid.clone());
    if app.ping.is_some() {
        answer.ping = Some(Status::Ok);
    }
    let machine_id = app
        .machine_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let Some(machine_id) = machine_id else {
        // Nothing to track and nothing to count a grant against: events are
        // acknowledged, updates are not offered.
        answer.events = vec![Status::Ok; app.events.len()];
        if app.update_check.is_some() {
            answer.update_check = Some(UpdateCheckResponse::no_update());
        }
        return Ok(answer);
    };
    let version = app
        .version
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("0.0.0");
    let arch = crate::store::normalize_arch(app.board.as_deref());
    let ts = now.timestamp();
    let checkin = CheckIn {
        app_id: &app_id,
        machine_id,
        alias: app.machine_alias.as_deref().filter(|a| !a.is_empty()),
        ip,
        version,
        arch: &arch,
        group: &group.name,
    };
    let before = state.store.check_in(&checkin, ts).await?;
    let mut inst = instance_after_check_in(before, &checkin, ts);
    for ev in &app.events {
        apply_event(state, &config, group, &mut inst, ev, ts).await?;
        answer.events.push(Status::Ok);
    }

    if app.update_check.is_some() {
        m.inc(&m.update_checks);
        let client = Client {
            app,
            applies: OnceLock::new(),
        };
        answer.update_check =
            Some(update_check(state, &config, group, &inst, &arch, &client, now).await?);
    }
    Ok(answer)
}

/// The machine's row as this check-in leaves it: the stored one with the reported version and
/// group, or a new one.
fn instance_after_check_in(
    before: Option<Arc<InstanceRow>>,
    c: &CheckIn<'_>,
    ts: i64,
) -> Arc<InstanceRow> {
    match before {
        Some(mut row) => {
            // Equal when the check-in matched the cached row: the row is shared, not copied.
            if row.version != c.version {
                c.version.clone_into(&mut Arc::make_mut(&mut row).version);
            }
            if row.group_name != c.group {
                c.group.clone_into(&mut Arc::make_mut(&mut row).group_name);
            }
            row
        }
        None => Arc::new(InstanceRow {
            app_id: c.app_id.to_owned(),
            machine_id: c.machine_id.to_owned(),
            alias: c.alias.map(str::to_owned),
            ip: c.ip.map(str::to_owned),
            version: c.version.to_owned(),
            arch: c.arch.to_owned(),
            group_name: c.group.to_owned(),
            status: InstanceStatus::Undefined,
            target_version: None,
            granted_at: None,
            status_at: ts,
            last_check_at: ts,
            created_at: ts,
            last_error_code: None,
        }),
    }
}

/// One reported event: recorded, the machine's status moved, the rollout finished when this
/// was its last machine, and the group halted when safe mode says so.
async fn apply_event(
    state: &AppState,
    config: &AppConfig,
    group: &crate::store::Group,
    inst: &mut Arc<InstanceRow>,
    ev: &fastpatch_omaha::Event,
    ts: i64,
) -> Result<(), OmahaError> {
    let m = &state.metrics;
    m.inc(&m.events);
    state.store.record_event(inst, ev, ts).await?;
    let kind = ev.kind();
    if let Some(status) = policy::status_after_event(kind) {
        let code = ev.error_code.map(|c| i64::from(c.0));
        state.store.set_status(inst, status, code, ts).await?;
        Arc::make_mut(inst).status = status;
        if status == InstanceStatus::Error {
            m.inc(&m.update_failures);
        }
        if status == InstanceStatus::Complete {
            finish_rollout_if_done(state, config, group, inst, ts).await?;
        }
    }
    if policy::event_halts_group(&group.policy(), kind) && inst.target_version.is_some() {
        let machine_id = &inst.machine_id;
        let what = match kind {
            fastpatch_omaha::EventKind::RolledBack => {
                format!("{machine_id} rolled back (error code 44)")
            }
            _ => format!(
                "{machine_id} reported error code {}",
                ev.error_code.map(|c| c.base()).unwrap_or(0)
            ),
        };
        if state
            .store
            .halt_for_failure(&inst.app_id, &group.name, &what, ts)
            .await?
        {
            m.inc(&m.halts);
            warn!(app = %inst.app_id, group = %group.name, reason = %what, "safe mode halted the group");
        }
    }
    Ok(())
}

/// A machine completed its update: when it was on the channel's version and no machine of the
/// group is left on another, the rollout is recorded as finished.
async fn finish_rollout_if_done(
    state: &AppState,
    config: &AppConfig,
    group: &crate::store::Group,
    inst: &InstanceRow,
    ts: i64,
) -> Result<(), OmahaError> {
    let channel_version = config
        .channels
        .iter()
        .find(|c| c.name == group.channel)
        .and_then(|c| c.version.as_deref());
    if channel_version == Some(inst.version.as_str())
        && state
            .store
            .finish_rollout_if_done(&inst.app_id, &group.name, &inst.version, ts)
            .await?
    {
        info!(app = %inst.app_id, group = %group.name, version = %inst.version, "rollout finished");
    }
    Ok(())
}

/// What the client said it can apply.
struct Client<'r> {
    app: &'r RequestApp<'r>,
    /// [`RequestApp::applies`], read when an offer needs it (most checks end in no update).
    applies: OnceLock<PayloadOps>,
}

impl Client<'_> {
    /// The payload operations it applies.
    fn applies(&self) -> &PayloadOps {
        self.applies.get_or_init(|| self.app.applies())
    }
}

async fn update_check(
    state: &AppState,
    config: &AppConfig,
    group: &crate::store::Group,
    inst: &InstanceRow,
    arch: &str,
    client: &Client<'_>,
    now: DateTime<Utc>,
) -> Result<UpdateCheckResponse, OmahaError> {
    let store = &state.store;
    let m = &state.metrics;
    let channel_version = config
        .channels
        .iter()
        .find(|c| c.name == group.channel)
        .and_then(|c| c.version.clone());
    let floors = config.floors.as_slice();
    let packages: Vec<&PackageRow> = config.packages.iter().filter(|p| p.arch == arch).collect();
    let has_package = |v: &str| packages.iter().any(|p| p.version == v);
    let view = inst.view();
    let policy = group.policy();
    // A first decision without counts filters out everything a lock cannot change.
    let pre = policy::decide(&policy::CheckContext {
        now,
        machine_id: &inst.machine_id,
        current_version: &inst.version,
        instance: Some(&view),
        policy: &policy,
        channel_version: channel_version.as_deref(),
        floors,
        has_package: &has_package,
        counts: GroupCounts::default(),
    });
    // A client that applies none of the version's payloads gets a clear error before a grant
    // is spent on it: a grant it cannot use would hold a safe-mode group until the timeout.
    if let Decision::Offer { version, .. } = &pre {
        if let Some(pkg) = packages.iter().find(|p| &p.version == version) {
            if variants::choose(pkg, &config.variants, client.applies()).is_none() {
                return Ok(no_readable_payload(state, inst, pkg, client.applies()));
            }
        }
    }
    let outcome = match pre {
        Decision::NoUpdate(r) => GrantOutcome::NoUpdate(r),
        Decision::Hold { version, reason } => GrantOutcome::Hold { version, reason },
        Decision::Offer {
            version,
            new_grant: false,
        } => GrantOutcome::Offer {
            version,
            new_grant: false,
        },
        Decision::Offer {
            new_grant: true, ..
        } => {
            store
                .grant(&GrantRequest {
                    app_id: &inst.app_id,
                    group: &group.name,
                    machine_id: &inst.machine_id,
                    current_version: &inst.version,
                    instance: Some(&view),
                    channel_version: channel_version.as_deref(),
                    floors,
                    has_package: &has_package,
                    now,
                })
                .await?
        }
    };
    debug!(machine = %inst.machine_id, ?outcome, "update check");
    match outcome {
        GrantOutcome::Offer { version, new_grant } => {
            let Some(pkg) = packages.iter().find(|p| p.version == version) else {
                m.inc(&m.no_update);
                return Ok(UpdateCheckResponse::no_update());
            };
            let Some(chosen) = variants::choose(pkg, &config.variants, client.applies()) else {
                return Ok(no_readable_payload(state, inst, pkg, client.applies()));
            };
            if new_grant {
                m.inc(&m.grants);
                info!(machine = %inst.machine_id, group = %group.name, %version, "update granted");
            }
            m.inc(&m.offers);
            let files = config
                .extra_files
                .get(&pkg.id)
                .map_or(&[][..], Vec::as_slice);
            // A delta only to a client that applies them and runs its source version.
            let delta_fits =
                client.app.accepts_delta() && client.applies().covers(&variants::delta_ops());
            let delta = config
                .deltas
                .iter()
                .find(|d| delta_fits && d.package_id == pkg.id && d.source_version == inst.version);
            if let Some(d) = delta {
                m.inc(&m.delta_offers);
                debug!(machine = %inst.machine_id, from = %d.source_version, %version, bytes = d.size, "offering a delta");
                return Ok(offer_delta(state, d, files));
            }
            Ok(match chosen {
                Chosen::Package(pkg) => offer(state, pkg, files),
                Chosen::Variant(v) => offer_variant(state, pkg, v, files),
            })
        }
        GrantOutcome::Hold { reason, .. } => {
            m.inc(&m.holds);
            // Keep in-progress and error states visible; on-hold is for idle machines.
            if !view.status.in_progress() && view.status != InstanceStatus::Error {
                store
                    .set_status(inst, InstanceStatus::OnHold, None, now.timestamp())
                    .await?;
            }
            debug!(machine = %inst.machine_id, ?reason, "update held");
            Ok(UpdateCheckResponse::no_update())
        }
        GrantOutcome::HaltedByTimeout { machine_id } => {
            m.inc(&m.halts);
            warn!(group = %group.name, stuck = %machine_id, "safe mode halted the group after a timeout");
            Ok(UpdateCheckResponse::no_update())
        }
        GrantOutcome::NoUpdate(_) => {
            m.inc(&m.no_update);
            Ok(UpdateCheckResponse::no_update())
        }
    }
}

/// The answer when no payload of `pkg`'s version uses only operations the client applies:
/// `error-noPackageFound`, never bytes it would fail on.
fn no_readable_payload(
    state: &AppState,
    inst: &InstanceRow,
    pkg: &PackageRow,
    applies: &PayloadOps,
) -> UpdateCheckResponse {
    let m = &state.metrics;
    m.inc(&m.no_readable_payload);
    warn!(machine = %inst.machine_id, version = %pkg.version, needs = %pkg.payload_ops.as_deref().unwrap_or_default(), %applies, "no payload of the version uses only operations this client applies; publish a Flatcar-compatible one too (`fastpatch-server publish IMAGE --signing-key KEY`)");
    UpdateCheckResponse {
        status: Status::ErrorNoPackageFound,
        ..UpdateCheckResponse::no_update()
    }
}

/// The update element for a delta: hosted here, its extra files (its target
/// package's) under the same codebase, marked `IsDeltaPayload="true"`.
pub fn offer_delta(state: &AppState, d: &DeltaRow, files: &[PackageFile]) -> UpdateCheckResponse {
    let payload = Payload {
        file_name: &d.file_name,
        size: d.size,
        sha1_b64: &d.sha1_b64,
        sha256_b64: &d.sha256_b64,
    };
    update_element(hosted_codebase(state, &d.id), &d.version, payload, files).as_delta()
}

/// The update element for a package's other payload (hosted here; the package's extra files
/// under the same codebase).
pub fn offer_variant(
    state: &AppState,
    pkg: &PackageRow,
    v: &VariantRow,
    files: &[PackageFile],
) -> UpdateCheckResponse {
    let payload = Payload {
        file_name: &v.file_name,
        size: v.size,
        sha1_b64: &v.sha1_b64,
        sha256_b64: &v.sha256_b64,
    };
    update_element(hosted_codebase(state, &v.id), &pkg.version, payload, files)
}

/// The update element for a package: our payload URL unless it lives
/// elsewhere, then the package's extra files (same codebase).
pub fn offer(state: &AppState, pkg: &PackageRow, files: &[PackageFile]) -> UpdateCheckResponse {
    let codebase = match &pkg.base_url {
        Some(url) => url.clone(),
        None => hosted_codebase(state, &pkg.id),
    };
    let payload = Payload {
        file_name: &pkg.file_name,
        size: pkg.size,
        sha1_b64: &pkg.sha1_b64,
        sha256_b64: &pkg.sha256_b64,
    };
    update_element(codebase, &pkg.version, payload, files)
}

/// One payload file as the manifest lists it.
struct Payload<'a> {
    file_name: &'a str,
    size: i64,
    sha1_b64: &'a str,
    sha256_b64: &'a str,
}

fn hosted_codebase(state: &AppState, id: &str) -> String {
    format!(
        "{}/v1/payloads/{id}/",
        state.public_url.trim_end_matches('/')
    )
}

fn update_element(
    codebase: String,
    version: &str,
    p: Payload<'_>,
    files: &[PackageFile],
) -> UpdateCheckResponse {
    let mut update = UpdateCheckResponse::update(
        vec![codebase],
        version.to_owned(),
        p.file_name.to_owned(),
        p.size.max(0) as u64,
        Some(p.sha1_b64.to_owned()),
        p.sha256_b64.to_owned(),
    );
    for f in files {
        update = update.with_extra_file(
            f.name.clone(),
            f.size.max(0) as u64,
            f.sha1_b64.clone(),
            // Stored as base64 after a check, so it decodes.
            &fastpatch_omaha::decode_digest::<32>(&f.sha256_b64).unwrap_or_default(),
        );
    }
    update
}
