//! Delta payloads made by the server: a channel moves from 1.0.0 to 2.0.0, the server
//! (holding the release key) makes the delta 1.0.0 → 2.0.0 in the background and offers it,
//! marked `IsDeltaPayload="true"`, only to machines on 1.0.0 that send `delta_okay="true"`.
//! The delta downloaded from the server rebuilds 2.0.0's image from 1.0.0's.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastpatch_omaha::FLATCAR_APP_ID;
use fastpatch_server::deltas::DeltaSettings;
use fastpatch_server::store::{DeltaRow, DeltaState};
use support::*;

const MIB: usize = 1 << 20;

/// Pseudo-random bytes (incompressible).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A release: its image and its full payload signed with `key`.
fn release(dir: &Path, name: &str, image: &[u8], key: &rsa::RsaPrivateKey) -> Vec<u8> {
    let img = dir.join(format!("{name}.img"));
    std::fs::write(&img, image).unwrap();
    let payload = dir.join(format!("{name}.payload"));
    fastpatch_payload::generate::generate(
        &img,
        std::slice::from_ref(key),
        &payload,
        &fastpatch_payload::generate::GenerateOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    std::fs::read(&payload).unwrap()
}

struct Keys {
    private: PathBuf,
    key: rsa::RsaPrivateKey,
}

fn keys(dir: &Path, name: &str) -> Keys {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let key = fastpatch_payload::keys::write_key_pair(&private, &public).unwrap();
    Keys { private, key }
}

async fn delta_server(backend: Backend, key: &Path) -> TestServer {
    let key = key.to_owned();
    let s = server_with(backend, move |c| {
        let mut d = DeltaSettings::new(key);
        d.scan_every = Duration::from_millis(100);
        d.zstd_level = 3;
        c.deltas = Some(d);
        c.checkin_flush = Duration::from_millis(100);
    })
    .await;
    // Safe mode grants one machine at a time until one completes; these tests ask for many.
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    store.upsert_group(&g).await.unwrap();
    s
}

/// Waits (up to 60 s) for the delta from `source` to be made (any state).
async fn made(s: &TestServer, source: &str) -> DeltaRow {
    wait_delta(s, |d| d.source_version == source).await
}

/// Waits (up to 60 s) for the delta `source` → `target` to be made (any state).
async fn made_to(s: &TestServer, source: &str, target: &str) -> DeltaRow {
    wait_delta(s, |d| d.source_version == source && d.version == target).await
}

async fn wait_delta(s: &TestServer, want: impl Fn(&DeltaRow) -> bool) -> DeltaRow {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = s.handle.store().deltas(FLATCAR_APP_ID).await.unwrap();
        if let Some(d) = all.into_iter().find(|d| want(d)) {
            return d;
        }
        assert!(Instant::now() < deadline, "the delta was not made in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An update check from fastpatch's engine on `version`, with `delta_okay` as given.
async fn check(s: &TestServer, machine: &str, version: &str, delta_okay: Option<&str>) -> String {
    check_applying(s, machine, version, delta_okay, Some(&engine_ops())).await
}

/// The payload operations fastpatch's engine announces.
fn engine_ops() -> String {
    fastpatch_server::variants::delta_ops().to_string()
}

/// An update check announcing `ops` (`None`: none, as stock Flatcar).
async fn check_applying(
    s: &TestServer,
    machine: &str,
    version: &str,
    delta_okay: Option<&str>,
    ops: Option<&str>,
) -> String {
    let mut req = request(machine, version, "stable", vec![], true);
    req.apps[0].delta_okay = delta_okay.map(Into::into);
    req.apps[0].payload_ops = ops.map(Into::into);
    let (status, body) = s.post(req.to_xml()).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn offer_of(body: &str) -> fastpatch_omaha::UpdateOffer {
    let resp = fastpatch_omaha::Response::parse(body.as_bytes()).unwrap();
    offered(&resp).unwrap_or_else(|| panic!("no update offered: {body}"))
}

async fn activity_kinds(s: &TestServer) -> Vec<String> {
    s.handle
        .store()
        .activity(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect()
}

async fn offered_to_the_source_version_only(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(tmp.path(), "release");
    let old = noise(7, 4 * MIB);
    let mut new = old.clone();
    new[MIB..MIB + 64 * 1024].fill(0x5a);
    new.copy_within(2 * MIB..3 * MIB, 3 * MIB);
    let s = delta_server(backend, &k.private).await;
    s.publish(
        "1.0.0",
        &release(tmp.path(), "old", &old, &k.key),
        Some("stable"),
    )
    .await;
    let full = s
        .publish("2.0.0", &release(tmp.path(), "new", &new, &k.key), None)
        .await;
    // The channel moves through the API, which wakes the worker.
    let moved = s
        .http
        .put(format!(
            "{}/api/v1/apps/{FLATCAR_APP_ID}/channels/stable",
            s.handle.base_url()
        ))
        .bearer_auth("admin-token")
        .json(&serde_json::json!({ "version": "2.0.0" }))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    let d = made(&s, "1.0.0").await;
    assert_eq!(d.state, DeltaState::Ready, "{d:?}");
    assert_eq!(
        (d.version.as_str(), d.package_id.as_str()),
        ("2.0.0", full.id.as_str())
    );
    assert!(
        d.size > 0 && d.size < full.size / 4,
        "delta {} full {}",
        d.size,
        full.size
    );
    assert!(activity_kinds(&s).await.contains(&"delta_ready".to_owned()));

    // The REST API lists it.
    let listed: serde_json::Value = s
        .http
        .get(format!(
            "{}/api/v1/apps/{FLATCAR_APP_ID}/deltas",
            s.handle.base_url()
        ))
        .bearer_auth("viewer-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["state"], "ready", "{listed}");
    assert_eq!(listed[0]["source_version"], "1.0.0", "{listed}");

    // delta_okay="true" from 1.0.0: the delta, marked as update_engine reads it.
    let body = check(&s, "m-delta", "1.0.0", Some("true")).await;
    assert!(body.contains(r#"IsDeltaPayload="true""#), "{body}");
    let o = offer_of(&body);
    assert!(o.is_delta_payload);
    assert_eq!((o.version.as_str(), o.size), ("2.0.0", d.size as u64));
    assert_eq!(o.package_name, d.file_name);
    // The engine with deltas off (delta_okay="false"), one that says nothing, and a
    // delta-capable one on another version: the full payload.
    for (machine, version, okay) in [
        ("m-stock", "1.0.0", Some("false")),
        ("m-silent", "1.0.0", None),
        ("m-older", "0.9.0", Some("true")),
    ] {
        let body = check(&s, machine, version, okay).await;
        let o = offer_of(&body);
        assert!(
            !o.is_delta_payload && !body.contains("IsDeltaPayload"),
            "{body}"
        );
        assert_eq!(o.size, full.size as u64, "{machine}: {body}");
    }
    // A client that says delta_okay="true" but not that it applies fastpatch's operations
    // (stock Flatcar): neither the delta nor the zstd full payload, a clear error instead.
    let body = check_applying(&s, "m-stock", "1.0.0", Some("true"), None).await;
    assert!(
        body.contains(r#"status="error-noPackageFound""#) && !body.contains("IsDeltaPayload"),
        "{body}"
    );

    // The delta as downloaded turns the old image into the new one.
    let offer = offer_of(&check(&s, "m-delta", "1.0.0", Some("true")).await);
    let bytes = s
        .http
        .get(&offer.urls[0])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, offer.size);
    let delta_file = tmp.path().join("downloaded.delta");
    std::fs::write(&delta_file, &bytes).unwrap();
    let target = tmp.path().join("rebuilt.img");
    std::fs::write(&target, vec![0u8; new.len()]).unwrap();
    let mut opts = fastpatch_payload::install::InstallOptions::new(vec![k.key.to_public_key()]);
    opts.source = Some(Arc::new(
        fastpatch_payload::install::SourceFile::whole(&tmp.path().join("old.img")).unwrap(),
    ));
    fastpatch_payload::install::install_from_file(
        &delta_file,
        Arc::new(fastpatch_payload::install::FileRange::whole(&target).unwrap()),
        opts,
        &mut |_| {},
    )
    .unwrap();
    assert!(
        std::fs::read(&target).unwrap() == new,
        "rebuilt image differs"
    );

    // Bytes served are counted per payload (written with the flush).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = made(&s, "1.0.0").await;
        if d.served_bytes == d.size {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "served bytes {} of {}",
            d.served_bytes,
            d.size
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.handle.shutdown().await;
}

async fn not_smaller_and_foreign_payloads_fall_back_to_full(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(tmp.path(), "release");
    let other = keys(tmp.path(), "someone-else");
    let s = delta_server(backend, &k.private).await;
    // 1.0.0 → 2.0.0: unrelated images, so the delta is no smaller than the full payload.
    s.publish(
        "1.0.0",
        &release(tmp.path(), "a", &noise(1, 2 * MIB), &k.key),
        Some("stable"),
    )
    .await;
    s.publish(
        "2.0.0",
        &release(tmp.path(), "b", &noise(2, 2 * MIB), &k.key),
        Some("stable"),
    )
    .await;
    s.handle.state().delta_wake.notify_one();
    let d = made(&s, "1.0.0").await;
    assert_eq!(d.state, DeltaState::NotSmaller, "{d:?}");
    // 3.0.0 is signed by a key the server does not hold: no delta, and the row says why.
    let img = noise(2, 2 * MIB);
    s.publish(
        "3.0.0",
        &release(tmp.path(), "c", &img, &other.key),
        Some("stable"),
    )
    .await;
    s.handle.state().delta_wake.notify_one();
    let d3 = made(&s, "2.0.0").await;
    assert_eq!(d3.state, DeltaState::Failed, "{d3:?}");
    let note = d3.note.clone().unwrap_or_default();
    assert!(
        note.contains("target") && note.contains("signature"),
        "{note}"
    );
    // Both sources still get the full payload, even when they ask for deltas.
    let body = check(&s, "m1", "2.0.0", Some("true")).await;
    assert!(!offer_of(&body).is_delta_payload, "{body}");
    let kinds = activity_kinds(&s).await;
    for k in ["delta_started", "delta_not_smaller", "delta_failed"] {
        assert!(kinds.contains(&k.to_owned()), "{k} missing from {kinds:?}");
    }
    // 1.0.0 → 3.0.0 (the channel's second previous version) fails the same way.
    let d13 = made_to(&s, "1.0.0", "3.0.0").await;
    assert_eq!(d13.state, DeltaState::Failed, "{d13:?}");
    // A retry forgets the failed one and the worker makes it again (a new row); a ready
    // delta or one never made cannot be retried.
    let store = s.handle.store();
    let was = store
        .retry_delta(FLATCAR_APP_ID, "3.0.0", "amd64", "2.0.0", 0)
        .await
        .unwrap();
    assert_eq!(was.id, d3.id);
    s.handle.state().delta_wake.notify_one();
    let again = wait_delta(&s, |d| {
        d.source_version == "2.0.0" && d.version == "3.0.0" && d.id != d3.id
    })
    .await;
    assert_eq!(again.state, DeltaState::Failed, "{again:?}");
    assert!(store
        .retry_delta(FLATCAR_APP_ID, "3.0.0", "amd64", "0.1.0", 0)
        .await
        .is_err());
    assert!(activity_kinds(&s).await.contains(&"delta_retry".to_owned()));
    s.handle.shutdown().await;
}

async fn a_delta_made_elsewhere_is_published_and_offered(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(tmp.path(), "release");
    let s = server(backend).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    store.upsert_group(&g).await.unwrap();
    let old = noise(11, 2 * MIB);
    let mut new = old.clone();
    new[MIB..MIB + 4096].fill(7);
    let old_payload = release(tmp.path(), "old", &old, &k.key);
    s.publish("1.0.0", &old_payload, Some("stable")).await;
    s.publish(
        "2.0.0",
        &release(tmp.path(), "new", &new, &k.key),
        Some("stable"),
    )
    .await;
    let delta = tmp.path().join("delta.payload");
    fastpatch_payload::delta::generate_delta(
        &tmp.path().join("old.img"),
        &tmp.path().join("new.img"),
        std::slice::from_ref(&k.key),
        &delta,
        &fastpatch_payload::delta::DeltaOptions {
            zstd_level: 3,
            source_version: Some("1.0.0".into()),
            smaller_than: None,
        },
        &mut |_, _, _| {},
    )
    .unwrap();
    let publish = |file: PathBuf, from: &'static str| {
        let dir = s.dir.path().to_owned();
        async move {
            fastpatch_server::payloads::publish_delta(
                store,
                &dir,
                &fastpatch_server::payloads::PublishDelta {
                    app_id: FLATCAR_APP_ID,
                    version: "2.0.0",
                    source_version: from,
                    arch: "amd64",
                    file: &file,
                },
                0,
            )
            .await
        }
    };
    let err = |r: Result<DeltaRow, fastpatch_server::payloads::PublishError>| match r {
        Ok(d) => panic!("published: {d:?}"),
        Err(e) => e.to_string(),
    };
    let e = err(publish(delta.clone(), "0.9.0").await);
    assert!(e.contains("package 0.9.0 (amd64)"), "{e}");
    // A delta whose manifest names 1.0.0 is not published as one from 1.5.0.
    s.publish("1.5.0", &noise(3, 4096), None).await;
    let e = err(publish(delta.clone(), "1.5.0").await);
    assert!(e.contains("applies to 1.0.0, not 1.5.0"), "{e}");
    let full_as_delta = tmp.path().join("old.payload");
    let e = err(publish(full_as_delta, "1.0.0").await);
    assert!(e.contains("is a full payload, not a delta"), "{e}");
    let d = publish(delta.clone(), "1.0.0").await.unwrap();
    assert_eq!(
        (d.state, d.size as u64),
        (DeltaState::Ready, std::fs::metadata(&delta).unwrap().len())
    );
    let e = err(publish(delta.clone(), "1.0.0").await);
    assert!(e.contains("exists already"), "{e}");
    // A second row for the pair (another server process racing this one) is not written.
    let mut twin = d.clone();
    twin.id = "twin".into();
    assert!(!store.add_delta(&twin, "twin").await.unwrap());
    assert!(store.delta("twin").await.unwrap().is_none());
    let body = check(&s, "m-delta", "1.0.0", Some("true")).await;
    let o = offer_of(&body);
    assert!(o.is_delta_payload && o.size == d.size as u64, "{body}");
    assert!(activity_kinds(&s).await.contains(&"delta_ready".to_owned()));
    s.handle.shutdown().await;
}

both_backends!(
    a_delta_made_elsewhere_is_published_and_offered,
    offered_to_the_source_version_only,
    not_smaller_and_foreign_payloads_fall_back_to_full
);
