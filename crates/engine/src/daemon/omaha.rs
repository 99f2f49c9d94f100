//! Omaha over HTTP: the request as Flatcar's update_engine builds it, and the answer mapped to
//! the state machine's inputs.

use std::path::Path;
use std::time::Duration;

use fastpatch_omaha::{CheckOutcome, Os, Ping, Request, RequestApp, Response, UpdateCheck};
use fastpatch_update_conf::UpdateConf;

use crate::machine::{CheckReply, Input};
use crate::report::{ErrorCode, Event};
use crate::sysinfo;

/// update_engine's version strings, which servers (Nebraska) log and some match on.
pub const UPDATER_VERSION: &str = "update_engine-0.4.10";

/// Facts that do not change while the daemon runs (a new version needs a reboot).
#[derive(Debug, Clone)]
pub struct Facts {
    pub version: String,
    pub machine_id: String,
    pub boot_id: String,
    pub oem: Option<String>,
    pub oem_version: Option<String>,
}

impl Facts {
    pub fn read(root: &Path, boot_id_path: &Path) -> Result<Facts, sysinfo::SysInfoError> {
        let (oem, oem_version) = read_oem(root);
        Ok(Facts {
            version: sysinfo::os_version(root)?,
            machine_id: sysinfo::machine_id(root)?,
            boot_id: sysinfo::boot_id(boot_id_path)?,
            oem,
            oem_version,
        })
    }
}

/// `ID` and `VERSION_ID` from the OEM partition's oem-release, when there is one.
fn read_oem(root: &Path) -> (Option<String>, Option<String>) {
    for rel in [
        "usr/share/oem/oem-release",
        "oem/oem-release",
        "etc/oem-release",
    ] {
        if let Ok(text) = std::fs::read_to_string(root.join(rel)) {
            return (
                sysinfo::os_release_value(&text, "ID"),
                sysinfo::os_release_value(&text, "VERSION_ID"),
            );
        }
    }
    (None, None)
}

/// What a request carries besides the machine facts.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    /// ping + updatecheck + pending events.
    Check { interactive: bool },
    /// ping only (an update waits for its reboot).
    Ping,
    /// events only.
    Events,
}

/// Builds the request; `None` when it would be empty (Flatcar #388: never send one).
/// The payload operations this engine's installer applies, announced in every request so the
/// server offers a payload it can apply (and stock Flatcar clients one they can).
pub fn applied_ops() -> fastpatch_omaha::PayloadOps {
    fastpatch_omaha::PayloadOps::new(fastpatch_payload::format::OpKind::ALL.map(|k| k.name()))
}

pub fn build_request(
    app_id: &str,
    board: &str,
    facts: &Facts,
    conf: &UpdateConf,
    aleph_version: Option<&str>,
    kind: &RequestKind,
    events: &[Event],
) -> Option<Request<'static>> {
    let (ping, update_check, install_source) = match kind {
        RequestKind::Check { interactive } => (
            true,
            true,
            if *interactive {
                "ondemandupdate"
            } else {
                "scheduler"
            },
        ),
        RequestKind::Ping => (true, false, "scheduler"),
        RequestKind::Events => (false, false, "scheduler"),
    };
    if !ping && !update_check && events.is_empty() {
        return None;
    }
    let app = RequestApp {
        appid: app_id.to_string().into(),
        version: Some(facts.version.clone().into()),
        track: Some(conf.group().to_string().into()),
        bootid: Some(format!("{{{}}}", facts.boot_id).into()),
        oem: Some(facts.oem.clone().unwrap_or_default().into()),
        oem_version: Some(facts.oem_version.clone().unwrap_or_default().into()),
        aleph_version: Some(aleph_version.unwrap_or(&facts.version).to_string().into()),
        machine_id: Some(facts.machine_id.clone().into()),
        machine_alias: Some(conf.machine_alias().unwrap_or_default().to_string().into()),
        lang: Some("en-US".into()),
        board: Some(board.to_string().into()),
        hardware_class: Some("".into()),
        delta_okay: Some("false".into()),
        payload_ops: Some(applied_ops().to_string().into()),
        ping: ping.then(|| Ping {
            active: Some("1".into()),
            a: None,
            r: None,
        }),
        update_check: update_check.then(UpdateCheck::default),
        events: events.to_vec(),
        extra: Vec::new(),
    };
    Some(Request {
        protocol: fastpatch_omaha::PROTOCOL_VERSION.into(),
        version: Some(UPDATER_VERSION.into()),
        updater_version: Some(UPDATER_VERSION.into()),
        install_source: Some(install_source.into()),
        is_machine: Some("1".into()),
        os: Some(Os {
            version: Some("Chateau".into()),
            platform: Some("CoreOS".into()),
            sp: Some(format!("{}_x86_64", facts.version).into()),
            arch: None,
        }),
        apps: vec![app],
        extra: Vec::new(),
    })
}

/// Why a request did not get a usable HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("server answered HTTP {0}")]
    Status(u16),
}

impl TransportError {
    /// 5xx and timeouts back off; a 4xx does not.
    pub fn is_server_error(&self) -> bool {
        match self {
            TransportError::Http(_) => true,
            TransportError::Status(s) => *s >= 500,
        }
    }
}

/// POSTs the request and returns the body of a 2xx answer.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    request: &Request<'_>,
    timeout: Duration,
) -> Result<Vec<u8>, TransportError> {
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "text/xml")
        .timeout(timeout)
        .body(request.to_xml())
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        return Err(TransportError::Status(status.as_u16()));
    }
    Ok(resp.bytes().await?.to_vec())
}

/// Maps an update check's answer to the state machine's input, with update_engine's
/// client rules (the omaha crate's validation).
pub fn interpret_check(app_id: &str, body: &[u8]) -> (Input, Option<u32>) {
    let invalid = |why: String| {
        tracing::warn!("update check answer unusable: {why}");
        (
            Input::Failed {
                code: ErrorCode::OMAHA_RESPONSE_INVALID,
            },
            None,
        )
    };
    let resp = match Response::parse(body) {
        Ok(r) => r,
        Err(e) => return invalid(format!("malformed response: {e}")),
    };
    let Some(app) = resp.app(app_id).or_else(|| resp.apps.first()) else {
        return invalid("no <app> in the response".into());
    };
    if app.status.is_rollout_hold() {
        // A rollout limit or a paused group (Nebraska's statuses): nothing to install now,
        // try again at the regular time.
        tracing::info!(
            status = app.status.as_str(),
            "server declined the update check"
        );
        return (
            Input::CheckFailed {
                server_error: false,
            },
            None,
        );
    }
    if app.status.is_error() {
        // An unknown app or group, an internal error, or a status nobody defined: as
        // update_engine does, an error that is logged and reported.
        tracing::error!(
            status = app.status.as_str(),
            "the server refused the update check"
        );
        return (
            Input::Failed {
                code: ErrorCode::OMAHA_RESPONSE_INVALID,
            },
            None,
        );
    }
    let Some(uc) = &app.update_check else {
        return invalid("no <updatecheck> in the response".into());
    };
    match uc.validate() {
        Ok(CheckOutcome::NoUpdate { poll_interval }) => (
            Input::CheckAnswered {
                reply: CheckReply::NoUpdate,
                poll_interval,
            },
            None,
        ),
        Ok(CheckOutcome::Update(offer)) => {
            let (max, poll_interval) = (offer.max_failure_count_per_url, offer.poll_interval);
            (
                Input::CheckAnswered {
                    reply: CheckReply::Update(offer),
                    poll_interval,
                },
                Some(max),
            )
        }
        Err(e) => invalid(e.to_string()),
    }
}

/// The poll interval of a ping's answer (anything else in it is of no interest).
pub fn ping_poll_interval(app_id: &str, body: &[u8]) -> Option<u64> {
    let resp = Response::parse(body).ok()?;
    let app = resp.app(app_id).or_else(|| resp.apps.first())?;
    app.update_check.as_ref()?.poll_interval
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            version: "2512.2.0".into(),
            machine_id: "abce671d61774703ac7be60715220bfe".into(),
            boot_id: "0e2bc4fb-7b34-4a4e-b8a7-0c3c7c9a4c39".into(),
            oem: Some("ami".into()),
            oem_version: Some("0.1.1-r1".into()),
        }
    }

    #[test]
    fn request_carries_flatcar_facts_and_is_never_empty() {
        let mut conf = UpdateConf::default();
        conf.merge(
            "GROUP=beta\nMACHINE_ALIAS=node-1\n",
            Path::new("/etc/flatcar/update.conf"),
        );
        let app_id = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}";
        let r = build_request(
            app_id,
            "amd64-usr",
            &facts(),
            &conf,
            Some("1688.5.3"),
            &RequestKind::Check { interactive: true },
            &[Event::update_complete("2512.1.0")],
        )
        .unwrap();
        let xml = r.to_xml();
        for want in [
            r#"installsource="ondemandupdate""#,
            r#"appid="{e96281a6-d1af-4bde-9a0a-97b76e56dc57}""#,
            r#"version="2512.2.0""#,
            r#"track="beta""#,
            r#"bootid="{0e2bc4fb-7b34-4a4e-b8a7-0c3c7c9a4c39}""#,
            r#"alephversion="1688.5.3""#,
            r#"machineid="abce671d61774703ac7be60715220bfe""#,
            r#"machinealias="node-1""#,
            r#"oem="ami""#,
            r#"board="amd64-usr""#,
            r#"<ping active="1""#,
            "<updatecheck",
            r#"eventtype="3" eventresult="2""#,
            r#"previousversion="2512.1.0""#,
        ] {
            assert!(xml.contains(want), "{want} missing from {xml}");
        }
        // Round trip through the server-side parser.
        let back = Request::parse(xml.as_bytes()).unwrap();
        assert_eq!(back.apps[0].track.as_deref(), Some("beta"));
        // The server reads which payload operations this engine applies: zstd and deltas too.
        let applies = back.apps[0].applies();
        assert!(
            applies.covers(&fastpatch_omaha::PayloadOps::parse(
                "REPLACE,REPLACE_BZ,REPLACE_ZSTD,ZERO,SOURCE_COPY,SOURCE_ZSTD"
            )),
            "{applies}"
        );

        let ping = build_request(
            app_id,
            "amd64-usr",
            &facts(),
            &conf,
            None,
            &RequestKind::Ping,
            &[],
        )
        .unwrap()
        .to_xml();
        assert!(
            ping.contains("<ping") && !ping.contains("<updatecheck"),
            "{ping}"
        );
        assert!(
            ping.contains(r#"alephversion="2512.2.0""#),
            "aleph defaults to the running version"
        );
        assert!(
            build_request(
                app_id,
                "amd64-usr",
                &facts(),
                &conf,
                None,
                &RequestKind::Events,
                &[]
            )
            .is_none(),
            "an event request without events is never built"
        );
    }

    #[test]
    fn answers_map_to_inputs() {
        let app = fastpatch_omaha::FLATCAR_APP_ID;
        let update = br#"<response protocol="3.0" server="nebraska"><daystart elapsed_seconds="0"/>
<app appid="e96281a6-d1af-4bde-9a0a-97b76e56dc57" status="ok"><ping status="ok"/>
<updatecheck status="ok"><urls><url codebase="http://h/a/"/><url codebase="http://h/b/"/></urls>
<manifest version="3732.0.0"><packages><package name="u.gz" size="400" required="true"/></packages>
<actions><action event="postinstall" sha256="stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=" MaxFailureCountPerUrl="3"/></actions>
</manifest></updatecheck></app></response>"#;
        let (input, max) = interpret_check(app, update);
        match input {
            Input::CheckAnswered {
                reply: CheckReply::Update(o),
                ..
            } => {
                assert_eq!(o.version, "3732.0.0");
                assert_eq!(o.urls, ["http://h/a/u.gz", "http://h/b/u.gz"]);
                assert_eq!(o.size, 400);
                assert_eq!(
                    fastpatch_omaha::encode_b64(&o.sha256),
                    "stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA="
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(max, Some(3));

        let noupdate = br#"<response protocol="3.0"><app appid="e96281a6-d1af-4bde-9a0a-97b76e56dc57" status="ok"><updatecheck status="noupdate" PollInterval="120"/></app></response>"#;
        assert_eq!(
            interpret_check(app, noupdate).0,
            Input::CheckAnswered {
                reply: CheckReply::NoUpdate,
                poll_interval: Some(120)
            }
        );
        assert_eq!(ping_poll_interval(app, noupdate), Some(120));
        assert_eq!(
            interpret_check(app, b"<html>proxy error</html>").0,
            Input::Failed {
                code: ErrorCode::OMAHA_RESPONSE_INVALID
            }
        );
        let held = br#"<response protocol="3.0"><app appid="x" status="error-maxConcurrentUpdatesLimitReached"/></response>"#;
        assert_eq!(
            interpret_check(app, held).0,
            Input::CheckFailed {
                server_error: false
            }
        );
        for refused in [
            &br#"<response protocol="3.0"><app appid="x" status="error-unknownApplicationOrGroup"/></response>"#[..],
            br#"<response protocol="3.0"><app appid="x" status="error-somethingNew"/></response>"#,
        ] {
            assert_eq!(
                interpret_check(app, refused).0,
                Input::Failed {
                    code: ErrorCode::OMAHA_RESPONSE_INVALID
                }
            );
        }
    }
}
