//! Byte-level resume: a download cut after several checkpoints continues with an HTTP Range
//! from the saved hash point at or below the installer's checkpoint, and the slot it finishes
//! verifies (signature, read-back) and is staged. The real server is behind a recording proxy,
//! so the test sees the exact Range requested.

use crate::support;

use std::time::Duration;

use fastpatch_engine::daemon::Daemon;
use fastpatch_engine::dbus;
use futures_util::StreamExt;
use support::*;

const SPACING: u64 = 256 << 10;

/// The first run of a resume test: a rate-limited download cut once more than half the
/// payload arrived. Returns the installer's checkpoint offset.
async fn cut_halfway(m: &mut TestMachine, bus: &PrivateBus) -> u64 {
    m.cfg.download.checkpoint_bytes = SPACING;
    m.cfg.download.hash_point_bytes = SPACING;
    m.cfg.limits.download_bytes_per_sec = Some(3 << 20); // ~2 s for the payload
    let daemon = Daemon::new(m.cfg.clone()).await.expect("daemon starts");
    let run = tokio::spawn(daemon.run(std::future::pending()));
    let client = dbus::client(Some(&bus.address)).await.unwrap();
    let mut signals = client.receive_status_update().await.unwrap();
    client.attempt_update().await.unwrap();
    let halfway = async {
        while let Some(sig) = signals.next().await {
            if sig.args().unwrap().progress >= 0.55 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), halfway)
        .await
        .expect("half the payload within 30 s");
    run.abort();
    let _ = run.await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the installer thread winds down

    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(m.cfg.install_state_dir.join("state.json"))
            .expect("the installer left a checkpoint"),
    )
    .unwrap();
    let checkpoint = state["point"]["offset"]
        .as_u64()
        .expect("checkpoint offset");
    assert!(
        checkpoint >= 2 * SPACING,
        "several checkpoints were taken before the cut: {checkpoint}"
    );
    assert_eq!(m.next_boot(), fastpatch_disk::USR_A_INDEX, "nothing staged");
    m.cfg.limits.download_bytes_per_sec = None;
    checkpoint
}

/// The second run, full speed, to NEED_REBOOT; checks B is staged and the events.
async fn finish_resumed(m: &TestMachine, bus: &PrivateBus, server: &UpdateServer) {
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{seen:?}"
    );
    assert_eq!(
        m.next_boot(),
        fastpatch_disk::USR_B_INDEX,
        "B verified and staged"
    );
    let names: Vec<String> = server
        .wait_events(4)
        .await
        .iter()
        .map(SeenEvent::short)
        .collect();
    assert_eq!(names, ["13/1", "13/1", "14/1", "3/1"]);
    assert_no_empty_request(server);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_download_asks_range_from_the_checkpoint_and_the_result_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let server = UpdateServer::start(dir.path(), 6).await;
    let mut m = TestMachine::new(dir.path(), &server, Some(&bus.address));
    let checkpoint = cut_halfway(&mut m, &bus).await;

    // Second run, full speed: continues from the checkpoint.
    finish_resumed(&m, &bus, &server).await;
    let ranges = server.payload_ranges();
    assert_eq!(
        ranges.len(),
        2,
        "one full and one resumed request: {ranges:?}"
    );
    assert_eq!(ranges[0], None, "the first attempt fetched from the start");
    let from = ranges[1].expect("the resumed request has a Range");
    assert_eq!(
        from,
        checkpoint / SPACING * SPACING,
        "the Range starts at the last hash point at or below the checkpoint ({checkpoint})"
    );
    assert!(from > 0 && from < server.payload_size);
}

/// A server (or cache) that ignores Range answers 200 with the whole payload: the bytes the
/// engine already has are dropped, and the resumed install still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_a_server_that_ignores_range_drops_what_it_sends_again() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let server = UpdateServer::start(dir.path(), 6).await;
    let mut m = TestMachine::new(dir.path(), &server, Some(&bus.address));
    cut_halfway(&mut m, &bus).await;

    server.proxy.set_hide_range(true);
    finish_resumed(&m, &bus, &server).await;
    let ranges = server.payload_ranges();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(
        ranges[1].is_some_and(|from| from > 0),
        "the engine asked for a Range (the server never saw it): {ranges:?}"
    );
}
