//! The server → client document: `<response>` with `<daystart>` and one `<app>` per requested app.

use crate::xml::{parse_tree, Element, Writer};
use crate::{Limits, ParseError, PROTOCOL_VERSION};

/// A status attribute value (`app@status`, `updatecheck@status`, `ping@status`, `event@status`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    NoUpdate,
    /// Omaha's own: the app id is not known.
    ErrorUnknownApplication,
    ErrorInvalidAppId,
    ErrorInternal,
    // Nebraska's statuses, kept so that fastpatch can answer like Nebraska does.
    ErrorNoPackageFound,
    ErrorUnknownApplicationOrGroup,
    ErrorMaxUpdatesPerPeriodLimitReached,
    ErrorMaxConcurrentUpdatesLimitReached,
    ErrorMaxTimedOutUpdatesLimitReached,
    ErrorUpdatesDisabled,
    ErrorUpdateInProgressOnInstance,
    /// Any other value, kept verbatim.
    Other(String),
}

impl Status {
    pub fn as_str(&self) -> &str {
        match self {
            Status::Ok => "ok",
            Status::NoUpdate => "noupdate",
            Status::ErrorUnknownApplication => "error-unknownApplication",
            Status::ErrorInvalidAppId => "error-invalidAppId",
            Status::ErrorInternal => "error-internal",
            Status::ErrorNoPackageFound => "error-noPackageFound",
            Status::ErrorUnknownApplicationOrGroup => "error-unknownApplicationOrGroup",
            Status::ErrorMaxUpdatesPerPeriodLimitReached => "error-maxUpdatesPerPeriodLimitReached",
            Status::ErrorMaxConcurrentUpdatesLimitReached => {
                "error-maxConcurrentUpdatesLimitReached"
            }
            Status::ErrorMaxTimedOutUpdatesLimitReached => "error-maxTimedOutUpdatesLimitReached",
            Status::ErrorUpdatesDisabled => "error-updatesDisabled",
            Status::ErrorUpdateInProgressOnInstance => "error-updateInProgressOnInstance",
            Status::Other(s) => s,
        }
    }

    /// Case-sensitive, like update_engine's comparison.
    pub fn parse(s: &str) -> Status {
        match s {
            "ok" => Status::Ok,
            "noupdate" => Status::NoUpdate,
            "error-unknownApplication" => Status::ErrorUnknownApplication,
            "error-invalidAppId" => Status::ErrorInvalidAppId,
            "error-internal" => Status::ErrorInternal,
            "error-noPackageFound" => Status::ErrorNoPackageFound,
            "error-unknownApplicationOrGroup" => Status::ErrorUnknownApplicationOrGroup,
            "error-maxUpdatesPerPeriodLimitReached" => Status::ErrorMaxUpdatesPerPeriodLimitReached,
            "error-maxConcurrentUpdatesLimitReached" => {
                Status::ErrorMaxConcurrentUpdatesLimitReached
            }
            "error-maxTimedOutUpdatesLimitReached" => Status::ErrorMaxTimedOutUpdatesLimitReached,
            "error-updatesDisabled" => Status::ErrorUpdatesDisabled,
            "error-updateInProgressOnInstance" => Status::ErrorUpdateInProgressOnInstance,
            other => Status::Other(other.to_owned()),
        }
    }

    pub fn is_error(&self) -> bool {
        self.as_str().starts_with("error-")
    }

    /// Nebraska's answers that hold an update back for now: a rollout limit, updates disabled
    /// for the group, no package on the channel, an update already in progress. Nothing is
    /// wrong with the client; it asks again at its regular time. Every other `error-*` status
    /// means the request or the server is broken (update_engine: OmahaResponseInvalid).
    pub fn is_rollout_hold(&self) -> bool {
        matches!(
            self,
            Status::ErrorNoPackageFound
                | Status::ErrorMaxUpdatesPerPeriodLimitReached
                | Status::ErrorMaxConcurrentUpdatesLimitReached
                | Status::ErrorMaxTimedOutUpdatesLimitReached
                | Status::ErrorUpdatesDisabled
                | Status::ErrorUpdateInProgressOnInstance
        )
    }
}

/// `<response protocol="3.0" server="...">`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub protocol: String,
    pub server: Option<String>,
    pub daystart: Option<DayStart>,
    pub apps: Vec<ResponseApp>,
}

/// `<daystart elapsed_seconds elapsed_days>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DayStart {
    pub elapsed_seconds: u64,
    pub elapsed_days: Option<u64>,
}

/// `<app appid status>` inside a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseApp {
    pub appid: String,
    pub status: Status,
    /// `<ping status>`, present when the request had a ping.
    pub ping: Option<Status>,
    pub update_check: Option<UpdateCheckResponse>,
    /// One `<event status>` per event in the request.
    pub events: Vec<Status>,
}

/// `<updatecheck status PollInterval>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateCheckResponse {
    pub status: Status,
    /// Seconds; update_engine honours it when present.
    pub poll_interval: Option<u64>,
    /// `<urls><url codebase/></urls>`: tried in order, each + package name.
    pub urls: Vec<String>,
    pub manifest: Option<Manifest>,
}

/// `<manifest version>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    pub packages: Vec<Package>,
    pub actions: Vec<Action>,
}

/// `<package name hash hash_sha256 size required>`. The first package is the
/// payload; any further ones are a package's extra files (Nebraska's model:
/// same codebase, `required="false"`, with `hash_sha256`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// Base64 SHA-1 (Nebraska sends it; update_engine ignores it).
    pub hash: Option<String>,
    /// SHA-256 of an extra file (`hash_sha256`): hex, as Nebraska sends it and Flatcar's
    /// ue-rs reads it. Read it with [`Package::sha256`], which also takes base64.
    pub hash_sha256: Option<String>,
    /// The raw `size` attribute; [`crate::UpdateOffer`] checks it.
    pub size: String,
    pub required: Option<bool>,
}

/// `<action event ...>`; the `postinstall` action carries the payload's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Action {
    pub event: String,
    /// Base64 SHA-256 of the payload.
    pub sha256: Option<String>,
    pub disable_payload_backoff: Option<bool>,
    pub max_failure_count_per_url: Option<u32>,
    pub is_delta_payload: Option<bool>,
    /// Other attributes in document order.
    pub extra: Vec<(String, String)>,
}

const ACTION_ATTRS: &[&str] = &[
    "event",
    "sha256",
    "DisablePayloadBackoff",
    "MaxFailureCountPerUrl",
    "IsDeltaPayload",
];

impl ResponseApp {
    /// An app answer with `status="ok"` and no children yet.
    pub fn ok(appid: impl Into<String>) -> Self {
        ResponseApp {
            appid: appid.into(),
            status: Status::Ok,
            ping: None,
            update_check: None,
            events: Vec::new(),
        }
    }

    /// An app-level error (e.g. unknown application), nothing inside.
    pub fn error(appid: impl Into<String>, status: Status) -> Self {
        ResponseApp {
            status,
            ..Self::ok(appid)
        }
    }
}

impl UpdateCheckResponse {
    pub fn no_update() -> Self {
        UpdateCheckResponse {
            status: Status::NoUpdate,
            poll_interval: None,
            urls: Vec::new(),
            manifest: None,
        }
    }

    /// An update offer in the exact shape Nebraska sends and update_engine reads.
    pub fn update(
        codebases: Vec<String>,
        version: impl Into<String>,
        package_name: impl Into<String>,
        size: u64,
        sha1_b64: Option<String>,
        sha256_b64: impl Into<String>,
    ) -> Self {
        UpdateCheckResponse {
            status: Status::Ok,
            poll_interval: None,
            urls: codebases,
            manifest: Some(Manifest {
                version: version.into(),
                packages: vec![Package {
                    name: package_name.into(),
                    hash: sha1_b64,
                    hash_sha256: None,
                    size: size.to_string(),
                    required: Some(true),
                }],
                actions: vec![Action {
                    event: "postinstall".into(),
                    sha256: Some(sha256_b64.into()),
                    disable_payload_backoff: Some(true),
                    ..Action::default()
                }],
            }),
        }
    }
}

impl UpdateCheckResponse {
    /// Marks the offered payload as a delta the way update_engine reads it:
    /// `IsDeltaPayload="true"` on the postinstall action.
    pub fn as_delta(mut self) -> Self {
        if let Some(m) = self.manifest.as_mut() {
            for a in m.actions.iter_mut().filter(|a| a.event == "postinstall") {
                a.is_delta_payload = Some(true);
            }
        }
        self
    }

    /// Adds an extra file to an update's manifest (after the payload, not required), with
    /// `hash` in base64 and `hash_sha256` in hex, as Nebraska lists a Flatcar extension.
    pub fn with_extra_file(
        mut self,
        name: impl Into<String>,
        size: u64,
        sha1_b64: impl Into<String>,
        sha256: &[u8; 32],
    ) -> Self {
        if let Some(m) = self.manifest.as_mut() {
            m.packages.push(Package {
                name: name.into(),
                hash: Some(sha1_b64.into()),
                hash_sha256: Some(crate::offer::encode_hex(sha256)),
                size: size.to_string(),
                required: Some(false),
            });
        }
        self
    }
}

fn bool_attr(el: &Element, name: &'static str) -> Result<Option<bool>, ParseError> {
    match el.attr(name) {
        None => Ok(None),
        Some("true") | Some("True") | Some("1") => Ok(Some(true)),
        Some("false") | Some("False") | Some("0") => Ok(Some(false)),
        Some(other) => Err(ParseError::InvalidAttribute {
            element: leak_name(&el.name),
            attribute: name,
            value: other.to_owned(),
        }),
    }
}

fn num_attr<T: std::str::FromStr>(
    el: &Element,
    name: &'static str,
) -> Result<Option<T>, ParseError> {
    match el.attr(name) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ParseError::InvalidAttribute {
                element: leak_name(&el.name),
                attribute: name,
                value: raw.to_owned(),
            }),
    }
}

/// Maps the element names we validate to static strings for error values.
fn leak_name(name: &str) -> &'static str {
    match name {
        "action" => "action",
        "updatecheck" => "updatecheck",
        "package" => "package",
        "daystart" => "daystart",
        _ => "element",
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl Response {
    /// A response holding `apps`, with `daystart elapsed_seconds`.
    pub fn new(server: impl Into<String>, elapsed_seconds: u64, apps: Vec<ResponseApp>) -> Self {
        Response {
            protocol: PROTOCOL_VERSION.to_owned(),
            server: Some(server.into()),
            daystart: Some(DayStart {
                elapsed_seconds,
                elapsed_days: None,
            }),
            apps,
        }
    }

    pub fn parse(input: &[u8]) -> Result<Response, ParseError> {
        Self::parse_with_limits(input, &Limits::default())
    }

    pub fn parse_with_limits(input: &[u8], limits: &Limits) -> Result<Response, ParseError> {
        let root = parse_tree(input, limits)?;
        if root.name != "response" {
            return Err(ParseError::UnexpectedRoot(root.name.into_owned()));
        }
        let protocol = root.attr("protocol").ok_or(ParseError::MissingAttribute {
            element: "response",
            attribute: "protocol",
        })?;
        if protocol != PROTOCOL_VERSION {
            return Err(ParseError::UnsupportedProtocol(protocol.to_owned()));
        }
        let daystart = match root.child("daystart") {
            None => None,
            Some(d) => Some(DayStart {
                elapsed_seconds: num_attr(d, "elapsed_seconds")?.unwrap_or(0),
                elapsed_days: num_attr(d, "elapsed_days")?,
            }),
        };
        let mut apps = Vec::new();
        for app in root.children_named("app") {
            if apps.len() >= limits.max_apps {
                return Err(ParseError::LimitExceeded("too many apps"));
            }
            apps.push(parse_app(app)?);
        }
        Ok(Response {
            protocol: protocol.to_owned(),
            server: root.attr_owned("server"),
            daystart,
            apps,
        })
    }

    pub fn to_xml(&self) -> String {
        let mut w = Writer::new();
        w.open("response")
            .attr("protocol", &self.protocol)
            .opt_attr("server", self.server.as_deref());
        if let Some(d) = &self.daystart {
            w.open("daystart")
                .attr("elapsed_seconds", &d.elapsed_seconds.to_string());
            if let Some(days) = d.elapsed_days {
                w.attr("elapsed_days", &days.to_string());
            }
            w.close();
        }
        for app in &self.apps {
            write_app(&mut w, app);
        }
        w.finish()
    }

    /// The answer for `appid` (braces and case ignored).
    pub fn app(&self, appid: &str) -> Option<&ResponseApp> {
        let wanted = crate::normalize_appid(appid);
        self.apps
            .iter()
            .find(|a| crate::normalize_appid(&a.appid) == wanted)
    }
}

fn write_app(w: &mut Writer, app: &ResponseApp) {
    w.open("app")
        .attr("appid", &app.appid)
        .attr("status", app.status.as_str());
    if let Some(ping) = &app.ping {
        w.open("ping").attr("status", ping.as_str()).close();
    }
    if let Some(uc) = &app.update_check {
        w.open("updatecheck").attr("status", uc.status.as_str());
        if let Some(p) = uc.poll_interval {
            w.attr("PollInterval", &p.to_string());
        }
        if !uc.urls.is_empty() {
            w.open("urls");
            for url in &uc.urls {
                w.open("url").attr("codebase", url).close();
            }
            w.close();
        }
        if let Some(m) = &uc.manifest {
            w.open("manifest").attr("version", &m.version);
            w.open("packages");
            for p in &m.packages {
                w.open("package")
                    .attr("name", &p.name)
                    .opt_attr("hash", p.hash.as_deref())
                    .opt_attr("hash_sha256", p.hash_sha256.as_deref())
                    .attr("size", &p.size)
                    .opt_attr("required", p.required.map(bool_str))
                    .close();
            }
            w.close();
            w.open("actions");
            for a in &m.actions {
                w.open("action")
                    .attr("event", &a.event)
                    .opt_attr("sha256", a.sha256.as_deref())
                    .opt_attr(
                        "DisablePayloadBackoff",
                        a.disable_payload_backoff.map(bool_str),
                    );
                if let Some(n) = a.max_failure_count_per_url {
                    w.attr("MaxFailureCountPerUrl", &n.to_string());
                }
                w.opt_attr("IsDeltaPayload", a.is_delta_payload.map(bool_str))
                    .attrs(&a.extra)
                    .close();
            }
            w.close();
            w.close();
        }
        w.close();
    }
    for ev in &app.events {
        w.open("event").attr("status", ev.as_str()).close();
    }
    w.close();
}

fn parse_app(app: &Element) -> Result<ResponseApp, ParseError> {
    let appid = app.attr("appid").ok_or(ParseError::MissingAttribute {
        element: "app",
        attribute: "appid",
    })?;
    let status = app.attr("status").ok_or(ParseError::MissingAttribute {
        element: "app",
        attribute: "status",
    })?;
    let update_check = match app.child("updatecheck") {
        None => None,
        Some(uc) => Some(parse_update_check(uc)?),
    };
    Ok(ResponseApp {
        appid: appid.to_owned(),
        status: Status::parse(status),
        ping: app
            .child("ping")
            .map(|p| Status::parse(p.attr("status").unwrap_or(""))),
        update_check,
        events: app
            .children_named("event")
            .map(|e| Status::parse(e.attr("status").unwrap_or("")))
            .collect(),
    })
}

fn parse_update_check(uc: &Element) -> Result<UpdateCheckResponse, ParseError> {
    let status = uc.attr("status").ok_or(ParseError::MissingAttribute {
        element: "updatecheck",
        attribute: "status",
    })?;
    let urls = uc
        .child("urls")
        .map(|urls| {
            urls.children_named("url")
                .filter_map(|u| u.attr_owned("codebase"))
                .collect()
        })
        .unwrap_or_default();
    let manifest = match uc.child("manifest") {
        None => None,
        Some(m) => Some(parse_manifest(m)?),
    };
    Ok(UpdateCheckResponse {
        status: Status::parse(status),
        poll_interval: num_attr(uc, "PollInterval")?,
        urls,
        manifest,
    })
}

fn parse_manifest(m: &Element) -> Result<Manifest, ParseError> {
    let version = m.attr("version").ok_or(ParseError::MissingAttribute {
        element: "manifest",
        attribute: "version",
    })?;
    let mut packages = Vec::new();
    if let Some(pkgs) = m.child("packages") {
        for p in pkgs.children_named("package") {
            packages.push(Package {
                name: p.attr_owned("name").unwrap_or_default(),
                hash: p.attr_owned("hash"),
                hash_sha256: p.attr_owned("hash_sha256"),
                size: p.attr_owned("size").unwrap_or_default(),
                required: bool_attr(p, "required")?,
            });
        }
    }
    let mut actions = Vec::new();
    if let Some(acts) = m.child("actions") {
        for a in acts.children_named("action") {
            actions.push(Action {
                event: a.attr_owned("event").unwrap_or_default(),
                sha256: a.attr_owned("sha256"),
                disable_payload_backoff: bool_attr(a, "DisablePayloadBackoff")?,
                max_failure_count_per_url: num_attr(a, "MaxFailureCountPerUrl")?,
                is_delta_payload: bool_attr(a, "IsDeltaPayload")?,
                extra: a.extra_attrs(ACTION_ATTRS),
            });
        }
    }
    Ok(Manifest {
        version: version.to_owned(),
        packages,
        actions,
    })
}
