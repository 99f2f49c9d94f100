//! The D-Bus interface on a real, private dbus-daemon: a client calls GetStatus and
//! AttemptUpdate and receives StatusUpdate signals as the engine's state machine moves.

use std::sync::{Arc, Mutex};

use fastpatch_engine::dbus::{self, Manager, Request};
use fastpatch_engine::status_report::StatusSnapshot;
use fastpatch_engine::{
    BootFacts, CheckReply, DurableState, Engine, Input, UpdateOffer, UpdateStatus,
};
use fastpatch_testsupport::PrivateBus;
use futures_util::StreamExt;

/// Drives the real state machine through a scripted successful update when asked.
async fn engine_loop(
    conn: zbus::Connection,
    snapshot: Arc<Mutex<StatusSnapshot>>,
    mut requests: tokio::sync::mpsc::Receiver<Request>,
) {
    let (mut engine, _) = Engine::start(
        DurableState::default(),
        BootFacts {
            current_version: "1".into(),
            boot_id: "b".into(),
            passive_slot_staged: false,
            passive_slot_refused: false,
        },
    );
    let offer = UpdateOffer::new("2", vec!["http://127.0.0.1/u".into()], "u", 400, [1; 32]);
    while let Some(request) = requests.recv().await {
        let script = match request {
            Request::AttemptUpdate => vec![
                Input::CheckDue { interactive: true },
                Input::CheckAnswered {
                    reply: CheckReply::Update(offer.clone()),
                    poll_interval: None,
                },
                Input::DownloadProgress { received: 100 },
                Input::DownloadProgress { received: 400 },
                Input::DownloadFinished,
                Input::InstallVerified,
                Input::ExtensionsPlaced,
                Input::Staged,
            ],
            Request::ResetStatus => vec![Input::ResetStatus],
        };
        for input in script {
            engine.step(input);
            let s = StatusSnapshot::of(&engine, 1_700_000_000);
            *snapshot.lock().unwrap() = s.clone();
            dbus::emit_status(&conn, &s).await.expect("emit");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_status_attempt_update_and_signals() {
    let bus = PrivateBus::start();
    let snapshot = Arc::new(Mutex::new(StatusSnapshot::default()));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let conn = dbus::serve(Some(&bus.address), Manager::new(snapshot.clone(), tx))
        .await
        .expect("serve on the private bus");
    tokio::spawn(engine_loop(conn.clone(), snapshot, rx));

    let client = dbus::client(Some(&bus.address)).await.expect("client");
    let (t, p, op, v, n) = client.get_status().await.expect("GetStatus");
    assert_eq!(
        (t, p, op.as_str(), v.as_str(), n),
        (0, 0.0, "UPDATE_STATUS_IDLE", "0.0.0.0", 0)
    );

    let mut signals = client.receive_status_update().await.expect("subscribe");
    client.attempt_update().await.expect("AttemptUpdate");
    let mut seen = Vec::new();
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            Some(sig) = signals.next() => {
                let a = sig.args().expect("signal args");
                seen.push((a.current_operation.clone(), a.progress));
                if a.current_operation == UpdateStatus::UpdatedNeedReboot.as_str() {
                    assert_eq!((a.new_version.as_str(), a.new_size), ("2", 400));
                    break;
                }
            }
            _ = &mut deadline => panic!("no NEED_REBOOT signal within 20 s; saw {seen:?}"),
        }
    }
    let ops: Vec<&str> = seen.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        ops,
        [
            "UPDATE_STATUS_CHECKING_FOR_UPDATE",
            "UPDATE_STATUS_UPDATE_AVAILABLE",
            "UPDATE_STATUS_DOWNLOADING",
            "UPDATE_STATUS_DOWNLOADING",
            "UPDATE_STATUS_VERIFYING",
            "UPDATE_STATUS_FINALIZING",
            // Extensions placed; the slot is staged next.
            "UPDATE_STATUS_FINALIZING",
            "UPDATE_STATUS_UPDATED_NEED_REBOOT",
        ]
    );
    assert_eq!(seen[2].1, 0.25);
    let (_, _, op, v, _) = client.get_status().await.unwrap();
    assert_eq!(
        (op.as_str(), v.as_str()),
        ("UPDATE_STATUS_UPDATED_NEED_REBOOT", "2")
    );

    client.reset_status().await.expect("ResetStatus");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, _, op, _, _) = client.get_status().await.unwrap();
    assert_eq!(op, "UPDATE_STATUS_IDLE");
}
