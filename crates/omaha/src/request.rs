//! The client → server document: `<request>` with `<os>` and one or more `<app>`s.

use crate::event::{event_result, event_type, ErrorCode, EventKind};
use crate::xml::{parse_tree, Element, Writer};
use crate::{Limits, ParseError, PROTOCOL_VERSION};

/// `<request protocol="3.0" ...>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// Always "3.0" after a successful parse.
    pub protocol: String,
    /// `version`, e.g. "update_engine-0.4.10".
    pub version: Option<String>,
    /// `updaterversion`.
    pub updater_version: Option<String>,
    /// `installsource`: "scheduler" or "ondemandupdate".
    pub install_source: Option<String>,
    /// `ismachine`.
    pub is_machine: Option<String>,
    pub os: Option<Os>,
    pub apps: Vec<RequestApp>,
    /// Attributes of `<request>` not modelled above, in document order.
    pub extra: Vec<(String, String)>,
}

/// `<os version platform sp arch>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Os {
    pub version: Option<String>,
    pub platform: Option<String>,
    pub sp: Option<String>,
    pub arch: Option<String>,
}

/// `<app ...>` inside a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestApp {
    /// As sent; may carry braces. Compare with [`normalize_appid`].
    pub appid: String,
    pub version: Option<String>,
    /// The group (update.conf GROUP=).
    pub track: Option<String>,
    pub bootid: Option<String>,
    pub oem: Option<String>,
    pub oem_version: Option<String>,
    pub aleph_version: Option<String>,
    pub machine_id: Option<String>,
    pub machine_alias: Option<String>,
    pub lang: Option<String>,
    /// e.g. "amd64-usr", "arm64-usr".
    pub board: Option<String>,
    pub hardware_class: Option<String>,
    pub delta_okay: Option<String>,
    pub ping: Option<Ping>,
    pub update_check: Option<UpdateCheck>,
    pub events: Vec<Event>,
    /// Attributes of `<app>` not modelled above, in document order.
    pub extra: Vec<(String, String)>,
}

/// `<ping active="1" a r>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ping {
    pub active: Option<String>,
    pub a: Option<String>,
    pub r: Option<String>,
}

/// `<updatecheck>`; Flatcar sends it without attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateCheck {
    pub target_version_prefix: Option<String>,
}

/// `<event eventtype eventresult errorcode previousversion>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_type: u32,
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
    pub fn error(code: u32) -> Self {
        Event {
            error_code: Some(ErrorCode(code)),
            ..Self::new(event_type::UPDATE_COMPLETE, event_result::ERROR)
        }
    }
    /// 3/0 errorcode 44: the new version did not boot; the machine is back on the old one.
    pub fn rolled_back() -> Self {
        Self::error(crate::event::error_code::ROLLED_BACK)
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

const APP_ATTRS: &[&str] = &[
    "appid",
    "version",
    "track",
    "bootid",
    "oem",
    "oemversion",
    "alephversion",
    "machineid",
    "machinealias",
    "lang",
    "board",
    "hardware_class",
    "delta_okay",
];
const REQUEST_ATTRS: &[&str] = &[
    "protocol",
    "version",
    "updaterversion",
    "installsource",
    "ismachine",
];

impl Request {
    /// Parses a request with [`Limits::default`].
    pub fn parse(input: &[u8]) -> Result<Request, ParseError> {
        Self::parse_with_limits(input, &Limits::default())
    }

    pub fn parse_with_limits(input: &[u8], limits: &Limits) -> Result<Request, ParseError> {
        let root = parse_tree(input, limits)?;
        if root.name != "request" {
            return Err(ParseError::UnexpectedRoot(root.name));
        }
        let protocol = root.attr("protocol").ok_or(ParseError::MissingAttribute {
            element: "request",
            attribute: "protocol",
        })?;
        if protocol != PROTOCOL_VERSION {
            return Err(ParseError::UnsupportedProtocol(protocol.to_owned()));
        }
        let os = root.child("os").map(|os| Os {
            version: os.attr_owned("version"),
            platform: os.attr_owned("platform"),
            sp: os.attr_owned("sp"),
            arch: os.attr_owned("arch"),
        });
        let mut apps = Vec::new();
        for app in root.children_named("app") {
            if apps.len() >= limits.max_apps {
                return Err(ParseError::LimitExceeded("too many apps"));
            }
            apps.push(parse_app(app, limits)?);
        }
        Ok(Request {
            protocol: protocol.to_owned(),
            version: root.attr_owned("version"),
            updater_version: root.attr_owned("updaterversion"),
            install_source: root.attr_owned("installsource"),
            is_machine: root.attr_owned("ismachine"),
            os,
            apps,
            extra: root.extra_attrs(REQUEST_ATTRS),
        })
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

fn parse_app(app: &Element, limits: &Limits) -> Result<RequestApp, ParseError> {
    let appid = app.attr("appid").ok_or(ParseError::MissingAttribute {
        element: "app",
        attribute: "appid",
    })?;
    let mut events = Vec::new();
    for ev in app.children_named("event") {
        if events.len() >= limits.max_events_per_app {
            return Err(ParseError::LimitExceeded("too many events in one app"));
        }
        events.push(parse_event(ev)?);
    }
    Ok(RequestApp {
        appid: appid.to_owned(),
        version: app.attr_owned("version"),
        track: app.attr_owned("track"),
        bootid: app.attr_owned("bootid"),
        oem: app.attr_owned("oem"),
        oem_version: app.attr_owned("oemversion"),
        aleph_version: app.attr_owned("alephversion"),
        machine_id: app.attr_owned("machineid"),
        machine_alias: app.attr_owned("machinealias"),
        lang: app.attr_owned("lang"),
        board: app.attr_owned("board"),
        hardware_class: app.attr_owned("hardware_class"),
        delta_okay: app.attr_owned("delta_okay"),
        ping: app.child("ping").map(|p| Ping {
            active: p.attr_owned("active"),
            a: p.attr_owned("a"),
            r: p.attr_owned("r"),
        }),
        update_check: app.child("updatecheck").map(|u| UpdateCheck {
            target_version_prefix: u.attr_owned("targetversionprefix"),
        }),
        events,
        extra: app.extra_attrs(APP_ATTRS),
    })
}

fn parse_event(ev: &Element) -> Result<Event, ParseError> {
    let num = |name: &'static str| -> Result<u32, ParseError> {
        let raw = ev.attr(name).ok_or(ParseError::MissingAttribute {
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
    let error_code = match ev.attr("errorcode") {
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
        previous_version: ev.attr_owned("previousversion"),
    })
}
