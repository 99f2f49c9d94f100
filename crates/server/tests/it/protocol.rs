//! The Omaha endpoint over real HTTP, against SQLite files and a real PostgreSQL.

use crate::support;

use chrono::Duration;
use fastpatch_omaha::{Event, Status, FLATCAR_APP_ID};
use sha2::{Digest, Sha256};
use support::{offered, request, server, Backend, NowTs};

const OLD: &str = "3602.2.0";
const NEW: &str = "3732.0.0";

fn payload() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

async fn update_flow_moves_status(b: Backend) {
    let s = server(b).await;
    let bytes = payload();
    s.publish(NEW, &bytes, Some("stable")).await;

    let resp = s.check("m1", OLD, "stable", vec![], true).await;
    assert_eq!(resp.apps[0].status, Status::Ok);
    assert_eq!(resp.apps[0].ping, Some(Status::Ok));
    let offer = offered(&resp).expect("an update");
    assert_eq!(offer.version, NEW);
    assert_eq!(offer.size, bytes.len() as u64);
    assert_eq!(offer.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));
    assert!(offer.disable_payload_backoff);
    assert_eq!(s.instance_status("m1").await, "granted");

    // The payload is served with the advertised bytes, and resumes with Range.
    let full = s.http.get(&offer.urls[0]).send().await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(
        full.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(full.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let part = s
        .http
        .get(&offer.urls[0])
        .header("Range", "bytes=1000-")
        .header("If-Range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1000-{}/{}", bytes.len() - 1, bytes.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[1000..]);

    for (ev, status) in [
        (Event::download_started(), "downloading"),
        (Event::download_finished(), "downloaded"),
        (Event::installed(), "installed"),
    ] {
        let resp = s.check("m1", OLD, "stable", vec![ev], false).await;
        assert_eq!(resp.apps[0].events, [Status::Ok]);
        assert!(resp.apps[0].update_check.is_none());
        assert_eq!(s.instance_status("m1").await, status);
    }
    // First check after reboot: 3/2 with previousversion, and no further update.
    let resp = s
        .check("m1", NEW, "stable", vec![Event::update_complete(OLD)], true)
        .await;
    assert_eq!(offered(&resp), None);
    assert_eq!(s.instance_status("m1").await, "complete");
    let events = s
        .handle
        .store()
        .events(FLATCAR_APP_ID, "m1", 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0].previous_version.as_deref(), Some(OLD));
    let history: Vec<String> = s
        .handle
        .store()
        .history(FLATCAR_APP_ID, "m1", 10)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|h| h.status.as_str().to_owned())
        .collect();
    assert_eq!(
        history,
        [
            "undefined",
            "granted",
            "downloading",
            "downloaded",
            "installed",
            "complete"
        ]
    );
    s.handle.shutdown().await;
}

async fn no_update_and_no_downgrade(b: Backend) {
    let s = server(b).await;
    // Nothing published: noupdate.
    assert_eq!(
        offered(&s.check("m1", OLD, "stable", vec![], true).await),
        None
    );
    s.publish(NEW, &payload(), Some("stable")).await;
    // Up to date.
    assert_eq!(
        offered(&s.check("m2", NEW, "stable", vec![], true).await),
        None
    );
    // Newer than the channel: never a downgrade.
    assert_eq!(
        offered(&s.check("m3", "3800.0.0", "stable", vec![], true).await),
        None
    );
    // Another track whose channel is empty.
    assert_eq!(
        offered(&s.check("m4", OLD, "beta", vec![], true).await),
        None
    );
    s.handle.shutdown().await;
}

async fn rollback_halts_group_in_safe_mode(b: Backend) {
    let s = server(b).await;
    s.publish(NEW, &payload(), Some("stable")).await;
    assert!(offered(&s.check("m1", OLD, "stable", vec![], true).await).is_some());
    // Safe mode: one at a time until the first success.
    assert_eq!(
        offered(&s.check("m2", OLD, "stable", vec![], true).await),
        None
    );
    assert_eq!(s.instance_status("m2").await, "on-hold");
    // m1 rolls back (3/0 errorcode 44).
    let resp = s
        .check("m1", OLD, "stable", vec![Event::rolled_back(NEW)], true)
        .await;
    assert_eq!(resp.apps[0].events, [Status::Ok]);
    assert_eq!(offered(&resp), None);
    let inst = s
        .handle
        .store()
        .instance(FLATCAR_APP_ID, "m1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inst.status.as_str(), "error");
    assert_eq!(inst.last_error_code, Some(44));
    let group = s
        .handle
        .store()
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    assert!(group.halted);
    assert!(
        group
            .halted_reason
            .as_deref()
            .unwrap_or("")
            .contains("rolled back"),
        "{:?}",
        group.halted_reason
    );
    assert_eq!(
        offered(&s.check("m3", OLD, "stable", vec![], true).await),
        None
    );
    let activity = s.handle.store().activity(None, 10).await.unwrap();
    assert!(
        activity.iter().any(|a| a.kind == "rollout_halted"),
        "{activity:?}"
    );
    let metrics = s
        .http
        .get(format!("{}/metrics", s.handle.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "fastpatch_group_halted{{app=\"{FLATCAR_APP_ID}\",group=\"stable\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("fastpatch_group_halts_total 1"),
        "{metrics}"
    );
    // An operator resumes: updates flow again.
    s.handle
        .store()
        .set_halted(FLATCAR_APP_ID, "stable", false, None, s.clock.now_ts())
        .await
        .unwrap();
    assert!(offered(&s.check("m3", OLD, "stable", vec![], true).await).is_some());
    s.handle.shutdown().await;
}

async fn multiple_and_unknown_apps(b: Backend) {
    let s = server(b).await;
    s.publish(NEW, &payload(), Some("stable")).await;
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../omaha/tests/fixtures/request_multiple_apps.xml"
    ))
    .unwrap();
    let (status, text) = s.post(body).await;
    assert_eq!(status, 200, "{text}");
    let resp = fastpatch_omaha::Response::parse(text.as_bytes()).unwrap();
    assert_eq!(
        resp.apps.len(),
        2,
        "every app is answered, even after an unknown one"
    );
    assert_eq!(resp.apps[0].status, Status::ErrorUnknownApplication);
    assert_eq!(resp.apps[1].status, Status::Ok);
    assert!(offered(&fastpatch_omaha::Response {
        apps: vec![resp.apps[1].clone()],
        ..resp.clone()
    })
    .is_some());
    // Unknown track.
    let resp = s.check("m9", OLD, "no-such-group", vec![], true).await;
    assert_eq!(resp.apps[0].status, Status::ErrorUnknownApplicationOrGroup);
    s.handle.shutdown().await;
}

async fn bad_input_is_4xx_and_harmless(b: Backend) {
    let s = server(b).await;
    s.publish(NEW, &payload(), Some("stable")).await;
    for body in [
        &b"not xml at all"[..],
        b"<request protocol=\"3.0\"><app appid=\"x\">",
        b"<request protocol=\"2.0\"></request>",
        b"<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><request protocol=\"3.0\" version=\"&x;\"></request>",
        b"\xff\xfe\x00",
    ] {
        let (status, text) = s.post(body.to_vec()).await;
        assert_eq!(status, 400, "{text}");
    }
    let mut big = request("m1", OLD, "stable", vec![], true)
        .to_xml()
        .into_bytes();
    big.resize(1024 * 1024, b' ');
    // The server drains the upload, so the client always reads a clean 413 (announced
    // length or chunked), and the connection stays usable for the next request.
    let r = s.http.post(&s.url).body(big.clone()).send().await;
    let r = r.expect("a 1 MB body is answered, not cut off");
    assert_eq!(r.status().as_u16(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = s.http.post(&s.url).body(streamed).send().await;
    assert_eq!(
        r.expect("chunked 1 MB body answered").status().as_u16(),
        413
    );
    // The server still works and recorded nothing from the bad requests.
    assert!(s
        .handle
        .store()
        .instance(FLATCAR_APP_ID, "m1")
        .await
        .unwrap()
        .is_none());
    assert!(offered(&s.check("m1", OLD, "stable", vec![], true).await).is_some());
    let health = s
        .http
        .get(format!("{}/health", s.handle.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    s.handle.shutdown().await;
}

async fn limits_per_period_and_concurrency(b: Backend) {
    let s = server(b).await;
    s.publish(NEW, &payload(), Some("stable")).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    g.max_concurrent = Some(2);
    g.max_updates_per_period = Some(3);
    g.period_secs = 3600;
    store.upsert_group(&g).await.unwrap();

    assert!(offered(&s.check("a", OLD, "stable", vec![], true).await).is_some());
    assert!(offered(&s.check("b", OLD, "stable", vec![], true).await).is_some());
    assert_eq!(
        offered(&s.check("c", OLD, "stable", vec![], true).await),
        None,
        "max concurrent 2"
    );
    // A granted machine asking again keeps its grant without using another.
    assert!(offered(&s.check("a", OLD, "stable", vec![], true).await).is_some());
    s.check("a", NEW, "stable", vec![Event::update_complete(OLD)], true)
        .await;
    assert!(
        offered(&s.check("c", OLD, "stable", vec![], true).await).is_some(),
        "a slot freed"
    );
    s.check("b", NEW, "stable", vec![Event::update_complete(OLD)], true)
        .await;
    assert_eq!(
        offered(&s.check("d", OLD, "stable", vec![], true).await),
        None,
        "3 per period"
    );
    s.clock.advance(Duration::seconds(3601));
    assert!(
        offered(&s.check("d", OLD, "stable", vec![], true).await).is_some(),
        "a new period"
    );
    assert_eq!(
        store.grant_count(FLATCAR_APP_ID, "stable").await.unwrap(),
        4
    );
    s.handle.shutdown().await;
}

/// NEW on stable, whose grants time out after 600 s (safe mode is the default); machine "a"
/// on OLD has just been granted it.
async fn granted_with_600_s_timeout(s: &support::TestServer) -> &fastpatch_server::store::Store {
    s.publish(NEW, &payload(), Some("stable")).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.update_timeout_secs = 600;
    store.upsert_group(&g).await.unwrap();
    assert!(offered(&s.check("a", OLD, "stable", vec![], true).await).is_some());
    store
}

async fn timeout_halts_safe_mode_group(b: Backend) {
    let s = server(b).await;
    let store = granted_with_600_s_timeout(&s).await;
    s.clock.advance(Duration::seconds(601));
    assert_eq!(
        offered(&s.check("b", OLD, "stable", vec![], true).await),
        None
    );
    let g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    assert!(g.halted, "safe mode halts on a timeout");
    assert!(g.halted_reason.unwrap().contains("timed out on a"));
    s.handle.shutdown().await;
}

/// The background sweep applies the same rule without any check-in: it halts the group once,
/// and only after the timeout.
async fn the_sweep_halts_a_timed_out_safe_mode_group(b: Backend) {
    use fastpatch_server::clock::Clock as _;
    let s = server(b).await;
    let store = granted_with_600_s_timeout(&s).await;
    s.clock.advance(Duration::seconds(599));
    let now = s.clock.now().timestamp();
    assert_eq!(store.sweep_timeouts(now).await.unwrap(), []);
    s.clock.advance(Duration::seconds(2));
    let now = s.clock.now().timestamp();
    assert_eq!(
        store.sweep_timeouts(now).await.unwrap(),
        [(FLATCAR_APP_ID.to_string(), "stable".to_string())]
    );
    let g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    assert!(g.halted && g.halted_reason.unwrap().contains("timed out on a"));
    assert_eq!(
        store.sweep_timeouts(now).await.unwrap(),
        [],
        "a halted group is not halted again"
    );
    s.handle.shutdown().await;
}

async fn floors_are_served_first(b: Backend) {
    let s = server(b).await;
    s.publish("3650.0.0", b"floor payload", None).await;
    s.publish(NEW, &payload(), Some("stable")).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    store.upsert_group(&g).await.unwrap();
    store
        .add_floor(FLATCAR_APP_ID, "3650.0.0", "test", 0)
        .await
        .unwrap();
    assert_eq!(
        offered(&s.check("a", OLD, "stable", vec![], true).await)
            .unwrap()
            .version,
        "3650.0.0"
    );
    s.check(
        "a",
        "3650.0.0",
        "stable",
        vec![Event::update_complete(OLD)],
        false,
    )
    .await;
    assert_eq!(
        offered(&s.check("a", "3650.0.0", "stable", vec![], true).await)
            .unwrap()
            .version,
        NEW
    );
    s.handle.shutdown().await;
}

async fn promotion_is_bit_for_bit(b: Backend) {
    let s = server(b).await;
    let pkg = s.publish(NEW, &payload(), Some("alpha")).await;
    let store = s.handle.store();
    store
        .promote(FLATCAR_APP_ID, "alpha", "beta", s.clock.now_ts())
        .await
        .unwrap();
    let beta = offered(&s.check("m", OLD, "beta", vec![], true).await).unwrap();
    assert_eq!(fastpatch_omaha::encode_b64(&beta.sha256), pkg.sha256_b64);
    assert!(beta.urls[0].contains(&pkg.id));
    assert!(
        store
            .promote(FLATCAR_APP_ID, "stable", "beta", s.clock.now_ts())
            .await
            .is_err(),
        "empty channel"
    );
    // A version's bytes are immutable.
    let file = s.dir.path().join("other");
    std::fs::write(&file, b"different").unwrap();
    let again = fastpatch_server::payloads::publish(
        store,
        s.dir.path(),
        &fastpatch_server::payloads::Publish {
            app_id: FLATCAR_APP_ID,
            version: NEW,
            arch: "amd64",
            file: &file,
            file_name: None,
            base_url: None,
        },
        0,
    )
    .await;
    assert!(again.is_err());
    s.handle.shutdown().await;
}

async fn retention_prunes_old_data(b: Backend) {
    let s = server(b).await;
    s.check("old", OLD, "stable", vec![Event::download_started()], true)
        .await;
    s.clock.advance(Duration::days(100));
    s.check("new", OLD, "stable", vec![Event::download_started()], true)
        .await;
    let now = s.clock.now_ts();
    let r = s
        .handle
        .store()
        .prune(now, 90 * 86400, 90 * 86400)
        .await
        .unwrap();
    assert_eq!(r.instances, 1);
    assert!(r.events >= 1 && r.history >= 1);
    assert!(s
        .handle
        .store()
        .instance(FLATCAR_APP_ID, "old")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .handle
        .store()
        .instance(FLATCAR_APP_ID, "new")
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        s.handle
            .store()
            .events(FLATCAR_APP_ID, "new", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    s.handle.shutdown().await;
}

/// `X-Forwarded-For` names the client only when the peer is a configured proxy.
async fn recorded_ip(s: &support::TestServer, machine: &str, xff: &str) -> Option<String> {
    let body = request(machine, OLD, "stable", vec![], true).to_xml();
    let r = s
        .http
        .post(&s.url)
        .header("x-forwarded-for", xff)
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 200);
    s.handle
        .store()
        .instance(FLATCAR_APP_ID, machine)
        .await
        .expect("db")
        .expect("instance")
        .ip
}

async fn forwarded_for_is_believed_only_from_trusted_proxies(b: Backend) {
    let record = recorded_ip;
    // No proxy configured: the header is ignored, the peer (loopback) is recorded.
    let s = server(b).await;
    assert_eq!(
        record(&s, "spoofer", "203.0.113.9").await.as_deref(),
        Some("127.0.0.1")
    );
    s.handle.shutdown().await;
    // Loopback is the proxy: the nearest untrusted hop is the client.
    let s = support::server_with(b, |c| {
        c.trusted_proxies = vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ]
    })
    .await;
    assert_eq!(
        record(&s, "behind-proxy", "198.51.100.7").await.as_deref(),
        Some("198.51.100.7")
    );
    // A client that sends its own header cannot choose the address: the proxies append.
    assert_eq!(
        record(&s, "forged", "203.0.113.9, 198.51.100.8, 10.1.2.3")
            .await
            .as_deref(),
        Some("198.51.100.8")
    );
    // Garbage stops the walk at the last good hop.
    assert_eq!(
        record(&s, "garbage", "not-an-ip, 10.1.2.3")
            .await
            .as_deref(),
        Some("10.1.2.3")
    );
    s.handle.shutdown().await;
}

both_backends!(
    forwarded_for_is_believed_only_from_trusted_proxies,
    update_flow_moves_status,
    no_update_and_no_downgrade,
    rollback_halts_group_in_safe_mode,
    multiple_and_unknown_apps,
    bad_input_is_4xx_and_harmless,
    limits_per_period_and_concurrency,
    timeout_halts_safe_mode_group,
    the_sweep_halts_a_timed_out_safe_mode_group,
    floors_are_served_first,
    promotion_is_bit_for_bit,
    retention_prunes_old_data,
);
