//! The upstream syncer against a real upstream: another fastpatch-server on loopback, behind
//! a recording proxy (so a resumed download is seen asking `Range: bytes=N-`). The local
//! server runs on SQLite and on PostgreSQL.

use crate::dashboard_support;
use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fastpatch_fetch::FetchError;
use fastpatch_omaha::FLATCAR_APP_ID;
use fastpatch_server::payloads::Publish;
use fastpatch_server::store::SyncState;
use fastpatch_server::sync::{ChannelReport, SyncError, SyncSettings, Syncer};
use fastpatch_testsupport::RecordingProxy;
use support::*;

const PAYLOAD: &str = "flatcar_production_update.gz";

fn image(seed: u8) -> Vec<u8> {
    (0..(1usize << 20))
        .map(|i| b"an upstream release "[i % 20].wrapping_add(seed * ((i / 4096) % 2) as u8))
        .collect()
}

/// The upstream: a fastpatch-server whose payload URLs go through `proxy`.
async fn upstream() -> (TestServer, RecordingProxy) {
    let proxy = RecordingProxy::bind().await.unwrap();
    let url = proxy.url();
    let s = server_with(Backend::Sqlite, |c| c.public_url = Some(url)).await;
    proxy.forward_to(s.handle.local_addr());
    (s, proxy)
}

/// Publishes a signed Flatcar-compatible payload of `image(seed)` on the upstream, with a
/// signed system extension `oem-azure.gz`, and points `channel` at it.
async fn release(
    up: &TestServer,
    tmp: &Path,
    key: &rsa::RsaPrivateKey,
    version: &str,
    seed: u8,
    channel: Option<&str>,
) -> (PathBuf, PathBuf) {
    let payload = signed_payload(tmp, &format!("os-{version}"), &image(seed), key, true);
    let ext_src = signed_payload(
        tmp,
        &format!("ext-{version}"),
        &image(seed + 100)[..300_000],
        key,
        true,
    );
    let ext_dir = tmp.join(format!("files-{version}"));
    std::fs::create_dir_all(&ext_dir).unwrap();
    let ext = ext_dir.join("oem-azure.gz");
    std::fs::copy(&ext_src, &ext).unwrap();
    fastpatch_server::payloads::publish_with_files(
        up.handle.store(),
        up.dir.path(),
        &Publish {
            app_id: FLATCAR_APP_ID,
            version,
            arch: "amd64",
            file: &payload,
            file_name: Some(PAYLOAD),
            base_url: None,
        },
        std::slice::from_ref(&ext),
        up.clock.now_ts(),
    )
    .await
    .unwrap();
    if let Some(c) = channel {
        up.handle
            .store()
            .set_channel(FLATCAR_APP_ID, c, version, up.clock.now_ts())
            .await
            .unwrap();
    }
    (payload, ext)
}

fn settings(proxy: &RecordingProxy, keys: Vec<rsa::RsaPublicKey>) -> SyncSettings {
    SyncSettings {
        app: FLATCAR_APP_ID.to_owned(),
        upstream: format!("{}/v1/update/", proxy.url()),
        channels: vec!["stable".into()],
        arches: vec!["amd64".into()],
        keys,
        register_upstream_urls: false,
        every: Duration::from_secs(3600),
        progress_on_terminal: false,
    }
}

async fn sync(
    local: &TestServer,
    s: &SyncSettings,
) -> (Vec<ChannelReport>, Vec<(String, SyncError)>) {
    let now = || local.clock.now_ts();
    Syncer {
        store: local.handle.store(),
        data_dir: local.dir.path(),
        app: FLATCAR_APP_ID,
        settings: s,
        client: fastpatch_server::sync::http_client().unwrap(),
        machine_id: "{sync-test}".into(),
        now: &now,
    }
    .run_once()
    .await
}

async fn activity_kinds(s: &TestServer) -> Vec<String> {
    let mut kinds: Vec<String> = s
        .handle
        .store()
        .activity(None, 500)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    kinds.reverse();
    kinds
}

async fn channel(s: &TestServer, name: &str) -> Option<String> {
    s.handle
        .store()
        .channel(FLATCAR_APP_ID, name)
        .await
        .unwrap()
        .and_then(|c| c.version)
}

async fn status(s: &TestServer) -> (SyncState, String) {
    let rows = s
        .handle
        .store()
        .sync_statuses(FLATCAR_APP_ID)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    (rows[0].state().unwrap(), rows[0].message.clone())
}

/// What a stock machine on 1.0.0 downloads from `local`: the payload and the extension.
async fn served_by(local: &TestServer) -> (String, Vec<u8>, Vec<u8>) {
    let resp = local
        .check("m-stock", "1.0.0", "stable", vec![], true)
        .await;
    let offer = offered(&resp).expect("an update");
    let get = |url: String| async move {
        local
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    };
    let codebase = offer.urls[0].trim_end_matches(PAYLOAD).to_owned();
    let payload = get(offer.urls[0].clone()).await;
    let ext = get(format!("{codebase}oem-azure.gz")).await;
    (offer.version, payload, ext)
}

async fn mirrors_a_channel_with_its_extensions_once(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let key = signing_key(tmp.path());
    let (up, proxy) = upstream().await;
    let (payload, ext) = release(&up, tmp.path(), &key, "2.0.0", 1, Some("stable")).await;
    let local = server(backend).await;
    let s = settings(&proxy, vec![key.to_public_key()]);

    let (reports, errors) = sync(&local, &s).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(reports[0].synced, ["2.0.0"]);
    assert_eq!(channel(&local, "stable").await.as_deref(), Some("2.0.0"));
    let (version, got_payload, got_ext) = served_by(&local).await;
    assert_eq!(version, "2.0.0");
    assert!(
        got_payload == std::fs::read(&payload).unwrap(),
        "the payload's bytes"
    );
    assert!(
        got_ext == std::fs::read(&ext).unwrap(),
        "the extension's bytes"
    );
    assert_eq!(status(&local).await.0, SyncState::UpToDate);
    // The same state through the API and on the dashboard's Packages page.
    let api: serde_json::Value = local
        .http
        .get(format!(
            "{}/api/v1/apps/{FLATCAR_APP_ID}/sync",
            local.handle.base_url()
        ))
        .bearer_auth("viewer-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api[0]["state"], "up_to_date", "{api}");
    assert_eq!(api[0]["version"], "2.0.0", "{api}");
    let mut ui = dashboard_support::Ui::new(&local);
    ui.login("viewer-token").await;
    let page = ui.get(&format!("/ui/apps/{FLATCAR_APP_ID}/packages")).await;
    let row = &page.body[page
        .body
        .find(r#"id="sync-stable-amd64""#)
        .expect("a sync row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains("up to date") && row.contains("mirrored 2.0.0"),
        "{row}"
    );
    let kinds = activity_kinds(&local).await;
    for k in ["sync_found", "sync_published", "channel_moved"] {
        assert_eq!(
            kinds.iter().filter(|x| *x == k).count(),
            1,
            "{k} in {kinds:?}"
        );
    }
    let asked = proxy.requests().len();

    // Again: the upstream is asked (as a machine on 2.0.0), and nothing changes.
    let (reports, errors) = sync(&local, &s).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(reports[0].synced.is_empty(), "{reports:?}");
    let again = proxy.requests();
    assert_eq!(again.len(), asked + 1, "one update check, no download");
    assert!(
        again[asked].body_text().contains(r#"version="2.0.0""#),
        "{}",
        again[asked].body_text()
    );
    assert_eq!(activity_kinds(&local).await, kinds);
    let work = fastpatch_server::sync::work_dir(local.dir.path());
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "work files are removed"
    );
    local.handle.shutdown().await;
    up.handle.shutdown().await;
}

async fn an_interrupted_download_resumes_and_a_damaged_one_is_never_published(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let key = signing_key(tmp.path());
    let (up, proxy) = upstream().await;
    let (payload, _) = release(&up, tmp.path(), &key, "2.0.0", 1, Some("stable")).await;
    let bytes = std::fs::read(&payload).unwrap();
    let local = server(backend).await;
    let s = settings(&proxy, vec![key.to_public_key()]);
    let dir =
        fastpatch_server::sync::version_dir(local.dir.path(), FLATCAR_APP_ID, "2.0.0", "amd64");
    std::fs::create_dir_all(&dir).unwrap();
    let part = dir.join(format!("{PAYLOAD}.part"));
    let half = bytes.len() / 2;

    // What an earlier run left, damaged: the rest resumes, the whole does not match.
    let mut damaged = bytes[..half].to_vec();
    damaged[10] ^= 0xff;
    std::fs::write(&part, &damaged).unwrap();
    let (_, errors) = sync(&local, &s).await;
    assert!(
        matches!(
            errors.as_slice(),
            [(
                _,
                SyncError::Fetch(FetchError::Mismatch {
                    what: "SHA-256",
                    ..
                })
            )]
        ),
        "{errors:?}"
    );
    assert!(!part.exists(), "a file that does not match is removed");
    assert!(local
        .handle
        .store()
        .find_package(FLATCAR_APP_ID, "2.0.0", "amd64")
        .await
        .unwrap()
        .is_none());
    assert_eq!(channel(&local, "stable").await, None);
    assert_eq!(status(&local).await.0, SyncState::Failed);
    assert!(activity_kinds(&local)
        .await
        .contains(&"sync_failed".to_owned()));

    // An intact first half: only the rest is fetched.
    std::fs::write(&part, &bytes[..half]).unwrap();
    let (reports, errors) = sync(&local, &s).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(reports[0].synced, ["2.0.0"]);
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(PAYLOAD))
        .collect();
    assert_eq!(
        gets.last().and_then(|r| r.range_start()),
        Some(half as u64),
        "{gets:?}"
    );
    assert!(served_by(&local).await.1 == bytes);
    local.handle.shutdown().await;
    up.handle.shutdown().await;
}

async fn a_release_signed_by_another_key_is_refused(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let trusted = signing_key(tmp.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other = signing_key(other_dir.path());
    let (up, proxy) = upstream().await;
    release(&up, tmp.path(), &other, "2.0.0", 1, Some("stable")).await;
    let local = server(backend).await;
    let (_, errors) = sync(&local, &settings(&proxy, vec![trusted.to_public_key()])).await;
    assert!(
        matches!(errors.as_slice(), [(_, SyncError::Signature { file, .. })] if file == PAYLOAD),
        "{errors:?}"
    );
    assert!(local
        .handle
        .store()
        .find_package(FLATCAR_APP_ID, "2.0.0", "amd64")
        .await
        .unwrap()
        .is_none());
    assert_eq!(channel(&local, "stable").await, None);
    let (state, message) = status(&local).await;
    assert_eq!(state, SyncState::Failed);
    assert!(message.contains("nothing was published"), "{message}");
    local.handle.shutdown().await;
    up.handle.shutdown().await;
}

async fn a_floor_upstream_is_walked_and_kept_as_a_floor_here(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let key = signing_key(tmp.path());
    let (up, proxy) = upstream().await;
    release(&up, tmp.path(), &key, "1.5.0", 1, None).await;
    release(&up, tmp.path(), &key, "2.0.0", 2, Some("stable")).await;
    up.handle
        .store()
        .add_floor(FLATCAR_APP_ID, "1.5.0", "test", 0)
        .await
        .unwrap();
    let local = server(backend).await;
    let (reports, errors) = sync(&local, &settings(&proxy, vec![key.to_public_key()])).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(reports[0].synced, ["1.5.0", "2.0.0"]);
    assert_eq!(
        local.handle.store().floors(FLATCAR_APP_ID).await.unwrap(),
        ["1.5.0"]
    );
    assert_eq!(channel(&local, "stable").await.as_deref(), Some("2.0.0"));
    // A machine here on 1.0.0 passes through the floor, as upstream.
    assert_eq!(served_by(&local).await.0, "1.5.0");
    let entries = local.handle.store().activity(None, 50).await.unwrap();
    let floor = entries
        .iter()
        .find(|a| a.kind == "floor_added")
        .expect("a floor_added entry");
    assert_eq!(
        floor.message,
        "floor 1.5.0 added (a floor upstream on stable): machines below it pass through it first"
    );
    local.handle.shutdown().await;
    up.handle.shutdown().await;
}

async fn registering_upstream_urls_hosts_nothing_here(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let key = signing_key(tmp.path());
    let (up, proxy) = upstream().await;
    let (payload, _) = release(&up, tmp.path(), &key, "2.0.0", 1, Some("stable")).await;
    let local = server(backend).await;
    let mut s = settings(&proxy, vec![key.to_public_key()]);
    s.register_upstream_urls = true;
    let (_, errors) = sync(&local, &s).await;
    assert!(errors.is_empty(), "{errors:?}");
    let resp = local
        .check("m-stock", "1.0.0", "stable", vec![], true)
        .await;
    let offer = offered(&resp).expect("an update");
    assert!(offer.urls[0].starts_with(&proxy.url()), "{:?}", offer.urls);
    assert_eq!(offer.size, std::fs::metadata(&payload).unwrap().len());
    let files = local
        .handle
        .store()
        .find_package(FLATCAR_APP_ID, "2.0.0", "amd64")
        .await
        .unwrap()
        .unwrap();
    assert!(files.base_url.is_some(), "{files:?}");
    assert!(!fastpatch_server::payloads::payload_dir(local.dir.path())
        .join(&files.id)
        .exists());
    local.handle.shutdown().await;
    up.handle.shutdown().await;
}

async fn a_dead_upstream_is_an_error_that_changes_nothing(backend: Backend) {
    let proxy = RecordingProxy::bind().await.unwrap();
    proxy.set_blackhole(true);
    let local = server(backend).await;
    let mut s = settings(&proxy, Vec::new());
    s.upstream = "http://127.0.0.1:9/v1/update/".into();
    let (reports, errors) = sync(&local, &s).await;
    assert!(reports.is_empty());
    assert!(
        matches!(errors.as_slice(), [(_, SyncError::UpstreamRequest(_))]),
        "{errors:?}"
    );
    assert_eq!(status(&local).await.0, SyncState::Failed);
    assert_eq!(channel(&local, "stable").await, None);
    local.handle.shutdown().await;
}

async fn the_background_sync_mirrors_when_the_server_starts(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let key = signing_key(tmp.path());
    let (up, proxy) = upstream().await;
    release(&up, tmp.path(), &key, "2.0.0", 1, Some("stable")).await;
    let s = settings(&proxy, vec![key.to_public_key()]);
    let local = server_with(backend, |c| c.sync = Some(s)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while channel(&local, "stable").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background sync did not move the channel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(channel(&local, "stable").await.as_deref(), Some("2.0.0"));
    assert!(
        served_by(&local).await.1 == std::fs::read(tmp.path().join("os-2.0.0.payload")).unwrap()
    );
    local.handle.shutdown().await;
    up.handle.shutdown().await;
}

both_backends!(
    the_background_sync_mirrors_when_the_server_starts,
    mirrors_a_channel_with_its_extensions_once,
    an_interrupted_download_resumes_and_a_damaged_one_is_never_published,
    a_release_signed_by_another_key_is_refused,
    a_floor_upstream_is_walked_and_kept_as_a_floor_here,
    registering_upstream_urls_hosts_nothing_here,
    a_dead_upstream_is_an_error_that_changes_nothing
);
