//! Asking the upstream Omaha server what a channel offers: the request a stock Flatcar
//! machine on that channel would send (no delta, no fastpatch operations), and what the
//! answer means for the syncer.

use fastpatch_omaha::{
    CheckOutcome, Os, Request, RequestApp, Response, UpdateCheck, UpdateOffer, PROTOCOL_VERSION,
};

use super::SyncError;

/// What the upstream server said about one channel and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing newer than the version asked with.
    NoUpdate,
    /// The upstream holds the update back for now (its status, e.g. a rollout limit).
    Held(String),
    /// A version to mirror: the payload, its extra files, and the codebases they live under.
    Update {
        offer: UpdateOffer,
        codebases: Vec<String>,
    },
}

/// Omaha's `<os arch>` and `<app board>` for an architecture as the server stores it.
fn os_arch(arch: &str) -> (&'static str, String) {
    match arch {
        "arm64" => ("aarch64", "arm64-usr".to_owned()),
        "amd64" => ("x86_64", "amd64-usr".to_owned()),
        other => ("", format!("{other}-usr")),
    }
}

/// The update check a stock machine running `version` on `channel` sends.
pub fn request<'a>(
    app: &str,
    channel: &'a str,
    arch: &str,
    version: &'a str,
    machine_id: &'a str,
) -> Request<'a> {
    let (os_arch, board) = os_arch(arch);
    Request {
        protocol: PROTOCOL_VERSION.into(),
        version: Some(concat!("fastpatch-sync-", env!("CARGO_PKG_VERSION")).into()),
        updater_version: Some(concat!("fastpatch-sync-", env!("CARGO_PKG_VERSION")).into()),
        install_source: Some("scheduler".into()),
        is_machine: Some("1".into()),
        os: Some(Os {
            version: Some("Chateau".into()),
            platform: Some("CoreOS".into()),
            sp: Some(format!("{version}_{os_arch}").into()),
            arch: Some(os_arch.into()),
        }),
        apps: vec![RequestApp {
            appid: format!("{{{app}}}").into(),
            version: Some(version.into()),
            track: Some(channel.into()),
            bootid: Some(format!("{{{}}}", uuid::Uuid::new_v4()).into()),
            machine_id: Some(machine_id.into()),
            board: Some(board.into()),
            delta_okay: Some("false".into()),
            update_check: Some(UpdateCheck::default()),
            ..RequestApp::default()
        }],
        extra: Vec::new(),
    }
}

/// Reads the upstream's answer for `app` (pure: the bytes in, the meaning out).
pub fn interpret(app: &str, body: &[u8]) -> Result<Answer, SyncError> {
    let response = Response::parse(body)
        .map_err(|e| SyncError::UpstreamAnswer(format!("not an Omaha response: {e}")))?;
    let answer = response
        .app(app)
        .ok_or_else(|| SyncError::UpstreamAnswer(format!("no <app> for {app} in the answer")))?;
    if answer.status.is_rollout_hold() {
        return Ok(Answer::Held(answer.status.as_str().to_owned()));
    }
    if answer.status.is_error() {
        return Err(SyncError::UpstreamAnswer(format!(
            "app status {}",
            answer.status.as_str()
        )));
    }
    let check = answer
        .update_check
        .as_ref()
        .ok_or_else(|| SyncError::UpstreamAnswer("no <updatecheck> in the answer".into()))?;
    if check.status.is_rollout_hold() {
        return Ok(Answer::Held(check.status.as_str().to_owned()));
    }
    let offer = match check
        .validate()
        .map_err(|e| SyncError::UpstreamAnswer(e.to_string()))?
    {
        CheckOutcome::NoUpdate { .. } => return Ok(Answer::NoUpdate),
        CheckOutcome::Update(offer) => offer,
    };
    let listed = check.manifest.as_ref().map_or(0, |m| m.packages.len() - 1);
    if offer.extra_files.len() != listed {
        return Err(SyncError::UpstreamAnswer(format!(
            "{} of {listed} extra files have no usable size or hash_sha256",
            listed - offer.extra_files.len()
        )));
    }
    for f in &offer.extra_files {
        crate::store::check_file_name(&f.name)
            .map_err(|e| SyncError::UpstreamAnswer(format!("extra file: {e}")))?;
    }
    crate::store::check_file_name(&offer.package_name)
        .map_err(|e| SyncError::UpstreamAnswer(format!("payload: {e}")))?;
    Ok(Answer::Update {
        offer,
        codebases: check.urls.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastpatch_omaha::{encode_b64, OfferedFile, ResponseApp, Status, UpdateCheckResponse};

    const APP: &str = fastpatch_omaha::FLATCAR_APP_ID;

    fn answer(uc: UpdateCheckResponse) -> Vec<u8> {
        let mut app = ResponseApp::ok(format!("{{{APP}}}"));
        app.update_check = Some(uc);
        Response::new("upstream", 0, vec![app])
            .to_xml()
            .into_bytes()
    }

    fn update() -> UpdateCheckResponse {
        UpdateCheckResponse::update(
            vec!["https://up.example/3.0.0/".into()],
            "3.0.0",
            "flatcar_production_update.gz",
            100,
            Some(encode_b64(&[1u8; 20])),
            encode_b64(&[2u8; 32]),
        )
    }

    #[test]
    fn the_request_is_a_stock_machine_on_the_channel() {
        let xml = request(APP, "beta", "arm64", "1.2.3", "{m}").to_xml();
        let parsed = Request::parse(xml.as_bytes()).unwrap();
        let app = &parsed.apps[0];
        assert_eq!(app.track.as_deref(), Some("beta"));
        assert_eq!(app.version.as_deref(), Some("1.2.3"));
        assert_eq!(app.board.as_deref(), Some("arm64-usr"));
        assert!(!app.accepts_delta());
        assert_eq!(
            app.payload_ops, None,
            "a stock machine: Flatcar-compatible payloads"
        );
        assert!(app.update_check.is_some());
    }

    #[test]
    fn an_update_lists_the_payload_and_its_extensions() {
        let body =
            answer(update().with_extra_file("oem-azure.gz", 9, encode_b64(&[3; 20]), &[4; 32]));
        let Answer::Update { offer, codebases } = interpret(APP, &body).unwrap() else {
            panic!("an update")
        };
        assert_eq!(offer.version, "3.0.0");
        assert_eq!(codebases, ["https://up.example/3.0.0/"]);
        assert_eq!(
            offer.extra_files,
            [OfferedFile {
                name: "oem-azure.gz".into(),
                size: 9,
                sha256: [4; 32],
                sha1: Some([3; 20])
            }]
        );
    }

    #[test]
    fn holds_no_updates_and_bad_answers_are_told_apart() {
        assert_eq!(
            interpret(APP, &answer(UpdateCheckResponse::no_update())).unwrap(),
            Answer::NoUpdate
        );
        let mut held = UpdateCheckResponse::no_update();
        held.status = Status::ErrorMaxConcurrentUpdatesLimitReached;
        assert!(
            matches!(interpret(APP, &answer(held)).unwrap(), Answer::Held(s) if s.contains("Concurrent"))
        );
        let unknown = Response::new(
            "u",
            0,
            vec![ResponseApp::error(APP, Status::ErrorUnknownApplication)],
        );
        let e = interpret(APP, unknown.to_xml().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("error-unknownApplication"), "{e}");
        assert!(interpret(APP, b"<html>").is_err());
        let mut sneaky = update();
        sneaky.manifest.as_mut().unwrap().packages[0].name = "../../etc/passwd".into();
        let e = interpret(APP, &answer(sneaky)).unwrap_err();
        assert!(e.to_string().contains("plain file name"), "{e}");
    }
}
