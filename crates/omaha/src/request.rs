//! The client → server document: `<request>` with `<os>` and one or more `<app>`s.

use std::borrow::Cow;

use crate::event::{event_result, event_type, ErrorCode, EventKind};
use crate::xml::{checked_text, parse_checked, Element, Writer};
use crate::{Limits, ParseError, PROTOCOL_VERSION};

mod fast;

/// A request's text: borrowed from the body it was parsed from (a server answers without
/// copying a string), or owned (a client builds its request). `"x".into()` and
/// `String::into()` both give one.
pub type Text<'a> = Cow<'a, str>;

/// `<request protocol="3.0" ...>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request<'a> {
    /// Always "3.0" after a successful parse.
    pub protocol: Text<'a>,
    /// `version`, e.g. "update_engine-0.4.10".
    pub version: Option<Text<'a>>,
    /// `updaterversion`.
    pub updater_version: Option<Text<'a>>,
    /// `installsource`: "scheduler" or "ondemandupdate".
    pub install_source: Option<Text<'a>>,
    /// `ismachine`.
    pub is_machine: Option<Text<'a>>,
    pub os: Option<Os<'a>>,
    pub apps: Vec<RequestApp<'a>>,
    /// Attributes of `<request>` not modelled above, in document order.
    pub extra: Vec<(Text<'a>, Text<'a>)>,
}

/// `<os version platform sp arch>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Os<'a> {
    pub version: Option<Text<'a>>,
    pub platform: Option<Text<'a>>,
    pub sp: Option<Text<'a>>,
    pub arch: Option<Text<'a>>,
}

/// `<app ...>` inside a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestApp<'a> {
    /// As sent; may carry braces. Compare with [`normalize_appid`].
    pub appid: Text<'a>,
    pub version: Option<Text<'a>>,
    /// The group (update.conf GROUP=).
    pub track: Option<Text<'a>>,
    pub bootid: Option<Text<'a>>,
    pub oem: Option<Text<'a>>,
    pub oem_version: Option<Text<'a>>,
    pub aleph_version: Option<Text<'a>>,
    pub machine_id: Option<Text<'a>>,
    pub machine_alias: Option<Text<'a>>,
    pub lang: Option<Text<'a>>,
    /// e.g. "amd64-usr", "arm64-usr".
    pub board: Option<Text<'a>>,
    pub hardware_class: Option<Text<'a>>,
    pub delta_okay: Option<Text<'a>>,
    /// [`crate::PAYLOAD_OPS_ATTR`]: the payload operations the client applies (fastpatch's
    /// engine sends it; stock Flatcar does not). Read it with [`RequestApp::applies`].
    pub payload_ops: Option<Text<'a>>,
    pub ping: Option<Ping<'a>>,
    pub update_check: Option<UpdateCheck<'a>>,
    pub events: Vec<Event>,
    /// Attributes of `<app>` not modelled above, in document order.
    pub extra: Vec<(Text<'a>, Text<'a>)>,
}

/// `<ping active="1" a r>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ping<'a> {
    pub active: Option<Text<'a>>,
    pub a: Option<Text<'a>>,
    pub r: Option<Text<'a>>,
}

/// `<updatecheck>`; Flatcar sends it without attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateCheck<'a> {
    pub target_version_prefix: Option<Text<'a>>,
}

/// `<event eventtype eventresult errorcode previousversion>`. The engine persists the events
/// the server has not acknowledged in this form (`result` is the persisted name of
/// `event_result`, which every engine version reads).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub event_type: u32,
    #[serde(rename = "result")]
    pub event_result: u32,
    pub error_code: Option<ErrorCode>,
    /// Set (possibly empty) on 3/2 "update complete" events.
    pub previous_version: Option<String>,
}

impl Event {
    pub fn new(event_type: u32, event_result: u32) -> Self {
        Event {
            event_type,
            event_result,
            error_code: None,
            previous_version: None,
        }
    }
    /// 13/1
    pub fn download_started() -> Self {
        Self::new(event_type::UPDATE_DOWNLOAD_STARTED, event_result::SUCCESS)
    }
    /// 14/1
    pub fn download_finished() -> Self {
        Self::new(event_type::UPDATE_DOWNLOAD_FINISHED, event_result::SUCCESS)
    }
    /// 3/1: the update is applied to the passive slot.
    pub fn installed() -> Self {
        Self::new(event_type::UPDATE_COMPLETE, event_result::SUCCESS)
    }
    /// 3/2 with previousversion: first check after booting the new version.
    pub fn update_complete(previous_version: impl Into<String>) -> Self {
        Event {
            previous_version: Some(previous_version.into()),
            ..Self::new(event_type::UPDATE_COMPLETE, event_result::SUCCESS_REBOOT)
        }
    }
    /// 3/0 with an error code (flags included).
    pub fn error(code: ErrorCode) -> Self {
        Event {
            error_code: Some(code),
            ..Self::new(event_type::UPDATE_COMPLETE, event_result::ERROR)
        }
    }
    /// 3/0 errorcode 44: `failed_version` did not boot; the machine is back on the old one
    /// (`previousversion` names the version that failed).
    pub fn rolled_back(failed_version: impl Into<String>) -> Self {
        Event {
            previous_version: Some(failed_version.into()),
            ..Self::error(ErrorCode::ROLLED_BACK)
        }
    }

    /// 3/0 errorcode 15: the boot chooser refused `failed_version`'s slot (its seal or its
    /// dm-verity data did not verify), so it never ran; the machine is on the old version
    /// (`previousversion` names the refused version).
    pub fn slot_refused(failed_version: impl Into<String>) -> Self {
        Event {
            previous_version: Some(failed_version.into()),
            ..Self::error(ErrorCode::NEW_ROOTFS_VERIFICATION_ERROR)
        }
    }

    pub fn kind(&self) -> EventKind {
        match (self.event_type, self.event_result) {
            (_, event_result::ERROR) => {
                let code = self.error_code.unwrap_or(ErrorCode(0));
                if code.is_rolled_back() {
                    EventKind::RolledBack
                } else {
                    EventKind::Error(code)
                }
            }
            (_, event_result::UPDATE_DEFERRED) => EventKind::Deferred,
            (event_type::UPDATE_DOWNLOAD_STARTED, event_result::SUCCESS) => {
                EventKind::DownloadStarted
            }
            (event_type::UPDATE_DOWNLOAD_FINISHED, event_result::SUCCESS) => EventKind::Downloaded,
            (event_type::UPDATE_COMPLETE, event_result::SUCCESS) => EventKind::Installed,
            (event_type::UPDATE_COMPLETE, event_result::SUCCESS_REBOOT) => {
                EventKind::UpdateComplete
            }
            (t, r) => EventKind::Other {
                event_type: t,
                event_result: r,
            },
        }
    }
}

/// Strips surrounding braces and lower-cases, so `{E96281A6-...}` and
/// `e96281a6-...` name the same application.
pub fn normalize_appid(appid: &str) -> String {
    let trimmed = appid.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(trimmed);
    inner.to_ascii_lowercase()
}

impl RequestApp<'_> {
    /// The client can apply delta payloads (`delta_okay="true"`; stock Flatcar
    /// sends "false").
    pub fn accepts_delta(&self) -> bool {
        self.delta_okay.as_deref().map(str::trim) == Some("true")
    }

    /// The payload operations the client applies: what it announces, or what every Flatcar
    /// client applies when it announces nothing.
    pub fn applies(&self) -> crate::PayloadOps {
        match self.payload_ops.as_deref() {
            Some(list) => crate::PayloadOps::parse(list),
            None => crate::PayloadOps::stock_flatcar(),
        }
    }
}

impl<'a> Request<'a> {
    /// Parses a request with [`Limits::default`]; its text borrows from `input`.
    pub fn parse(input: &'a [u8]) -> Result<Request<'a>, ParseError> {
        Self::parse_with_limits(input, &Limits::default())
    }

    pub fn parse_with_limits(input: &'a [u8], limits: &Limits) -> Result<Request<'a>, ParseError> {
        let text = checked_text(input, limits)?;
        match fast::parse(text, limits) {
            Some(req) => Ok(req),
            None => from_tree(text, limits),
        }
    }

    /// Serialises the request the way update_engine lays it out.
    pub fn to_xml(&self) -> String {
        let mut w = Writer::new();
        w.open("request")
            .attr("protocol", &self.protocol)
            .opt_attr("version", self.version.as_deref())
            .opt_attr("updaterversion", self.updater_version.as_deref())
            .opt_attr("installsource", self.install_source.as_deref())
            .opt_attr("ismachine", self.is_machine.as_deref())
            .attrs(&self.extra);
        if let Some(os) = &self.os {
            w.open("os")
                .opt_attr("version", os.version.as_deref())
                .opt_attr("platform", os.platform.as_deref())
                .opt_attr("sp", os.sp.as_deref())
                .opt_attr("arch", os.arch.as_deref())
                .close();
        }
        for app in &self.apps {
            w.open("app")
                .attr("appid", &app.appid)
                .opt_attr("version", app.version.as_deref())
                .opt_attr("track", app.track.as_deref())
                .opt_attr("bootid", app.bootid.as_deref())
                .opt_attr("oem", app.oem.as_deref())
                .opt_attr("oemversion", app.oem_version.as_deref())
                .opt_attr("alephversion", app.aleph_version.as_deref())
                .opt_attr("machineid", app.machine_id.as_deref())
                .opt_attr("machinealias", app.machine_alias.as_deref())
                .opt_attr("lang", app.lang.as_deref())
                .opt_attr("board", app.board.as_deref())
                .opt_attr("hardware_class", app.hardware_class.as_deref())
                .opt_attr("delta_okay", app.delta_okay.as_deref())
                .opt_attr(crate::PAYLOAD_OPS_ATTR, app.payload_ops.as_deref())
                .attrs(&app.extra);
            if let Some(ping) = &app.ping {
                w.open("ping")
                    .opt_attr("active", ping.active.as_deref())
                    .opt_attr("a", ping.a.as_deref())
                    .opt_attr("r", ping.r.as_deref())
                    .close();
            }
            if let Some(uc) = &app.update_check {
                w.open("updatecheck")
                    .opt_attr("targetversionprefix", uc.target_version_prefix.as_deref())
                    .close();
            }
            for ev in &app.events {
                w.open("event")
                    .attr("eventtype", &ev.event_type.to_string())
                    .attr("eventresult", &ev.event_result.to_string());
                if let Some(code) = ev.error_code {
                    w.attr("errorcode", &code.to_wire());
                }
                w.opt_attr("previousversion", ev.previous_version.as_deref())
                    .close();
            }
            w.close();
        }
        w.finish()
    }
}

/// Whether the direct path accepts `input`, and if so whether its request equals the one
/// built from the element tree (for the fuzz target; `None` when it declines).
#[doc(hidden)]
pub fn fast_request_agrees(input: &[u8], limits: &Limits) -> Option<bool> {
    let text = checked_text(input, limits).ok()?;
    let fast = fast::parse(text, limits)?;
    Some(from_tree(text, limits).as_ref() == Ok(&fast))
}

/// The request from the element tree: every document the direct path declines.
fn from_tree<'a>(text: &'a str, limits: &Limits) -> Result<Request<'a>, ParseError> {
    let mut root = parse_checked(text, limits)?;
    if root.name != "request" {
        return Err(ParseError::UnexpectedRoot(root.name.into_owned()));
    }
    let mut req = Request::default();
    let mut protocol = None;
    for (key, value) in root.attrs.drain(..) {
        request_attr(&mut req, &mut protocol, key, value);
    }
    let protocol = protocol.ok_or(ParseError::MissingAttribute {
        element: "request",
        attribute: "protocol",
    })?;
    if protocol != PROTOCOL_VERSION {
        return Err(ParseError::UnsupportedProtocol(protocol.into_owned()));
    }
    req.protocol = protocol;
    req.os = root.child_mut("os").map(|os| from_attrs(os, os_attr));
    for app in root.children.iter_mut().filter(|c| c.name == "app") {
        if req.apps.len() >= limits.max_apps {
            return Err(ParseError::LimitExceeded("too many apps"));
        }
        req.apps.push(parse_app(app, limits)?);
    }
    Ok(req)
}

/// A value built from an element's attributes alone (`set` places each one), moving them out.
fn from_attrs<'a, T: Default>(el: &mut Element<'a>, set: impl Fn(&mut T, &str, Text<'a>)) -> T {
    let mut out = T::default();
    for (key, value) in el.attrs.drain(..) {
        set(&mut out, &key, value);
    }
    out
}

/// Puts one `<request>` attribute where it belongs (`protocol` into `protocol`, unknown ones
/// into `extra`, in document order). Both parse paths use it.
fn request_attr<'a>(
    out: &mut Request<'a>,
    protocol: &mut Option<Text<'a>>,
    key: Text<'a>,
    value: Text<'a>,
) {
    let slot = match key.as_ref() {
        "protocol" => protocol,
        "version" => &mut out.version,
        "updaterversion" => &mut out.updater_version,
        "installsource" => &mut out.install_source,
        "ismachine" => &mut out.is_machine,
        _ => {
            out.extra.push((key, value));
            return;
        }
    };
    *slot = Some(value);
}

/// One `<os>` attribute; others are dropped.
fn os_attr<'a>(out: &mut Os<'a>, key: &str, value: Text<'a>) {
    let slot = match key {
        "version" => &mut out.version,
        "platform" => &mut out.platform,
        "sp" => &mut out.sp,
        "arch" => &mut out.arch,
        _ => return,
    };
    *slot = Some(value);
}

/// One `<ping>` attribute; others are dropped.
fn ping_attr<'a>(out: &mut Ping<'a>, key: &str, value: Text<'a>) {
    let slot = match key {
        "active" => &mut out.active,
        "a" => &mut out.a,
        "r" => &mut out.r,
        _ => return,
    };
    *slot = Some(value);
}

/// One `<updatecheck>` attribute; others are dropped.
fn update_check_attr<'a>(out: &mut UpdateCheck<'a>, key: &str, value: Text<'a>) {
    if key == "targetversionprefix" {
        out.target_version_prefix = Some(value);
    }
}

/// Puts one `<app>` attribute where it belongs (`appid` into `appid`, unknown ones into
/// `extra`, in document order). Both parse paths use it.
fn app_attr<'a>(
    out: &mut RequestApp<'a>,
    appid: &mut Option<Text<'a>>,
    key: Text<'a>,
    value: Text<'a>,
) {
    let slot = match key.as_ref() {
        "appid" => appid,
        "version" => &mut out.version,
        "track" => &mut out.track,
        "bootid" => &mut out.bootid,
        "oem" => &mut out.oem,
        "oemversion" => &mut out.oem_version,
        "alephversion" => &mut out.aleph_version,
        "machineid" => &mut out.machine_id,
        "machinealias" => &mut out.machine_alias,
        "lang" => &mut out.lang,
        "board" => &mut out.board,
        "hardware_class" => &mut out.hardware_class,
        "delta_okay" => &mut out.delta_okay,
        crate::PAYLOAD_OPS_ATTR => &mut out.payload_ops,
        _ => {
            out.extra.push((key, value));
            return;
        }
    };
    *slot = Some(value);
}

fn parse_app<'a>(app: &mut Element<'a>, limits: &Limits) -> Result<RequestApp<'a>, ParseError> {
    let missing_appid = ParseError::MissingAttribute {
        element: "app",
        attribute: "appid",
    };
    if app.attr("appid").is_none() {
        return Err(missing_appid);
    }
    let mut events = Vec::new();
    for ev in app.children_named("event") {
        if events.len() >= limits.max_events_per_app {
            return Err(ParseError::LimitExceeded("too many events in one app"));
        }
        events.push(parse_event(|name| ev.attr(name))?);
    }
    let mut out = RequestApp {
        ping: app.child_mut("ping").map(|p| from_attrs(p, ping_attr)),
        update_check: app
            .child_mut("updatecheck")
            .map(|u| from_attrs(u, update_check_attr)),
        events,
        ..RequestApp::default()
    };
    let mut appid = None;
    for (key, value) in app.attrs.drain(..) {
        app_attr(&mut out, &mut appid, key, value);
    }
    out.appid = appid.ok_or(missing_appid)?;
    Ok(out)
}

/// An `<event>` from its attributes (`attr` looks one up by name).
fn parse_event<'s>(attr: impl Fn(&str) -> Option<&'s str>) -> Result<Event, ParseError> {
    let num = |name: &'static str| -> Result<u32, ParseError> {
        let raw = attr(name).ok_or(ParseError::MissingAttribute {
            element: "event",
            attribute: name,
        })?;
        raw.trim()
            .parse()
            .map_err(|_| ParseError::InvalidAttribute {
                element: "event",
                attribute: name,
                value: raw.to_owned(),
            })
    };
    let error_code = match attr("errorcode") {
        None => None,
        Some(raw) => Some(
            ErrorCode::parse(raw).ok_or_else(|| ParseError::InvalidAttribute {
                element: "event",
                attribute: "errorcode",
                value: raw.to_owned(),
            })?,
        ),
    };
    Ok(Event {
        event_type: num("eventtype")?,
        event_result: num("eventresult")?,
        error_code,
        previous_version: attr("previousversion").map(str::to_owned),
    })
}
