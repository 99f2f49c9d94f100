//! A client is offered only a payload it can apply: every published payload records the
//! operations it uses, fastpatch's engine says which it applies (`fastpatch_payload_ops`),
//! stock Flatcar clients apply REPLACE and REPLACE_BZ only. A version can be hosted in both
//! encodings of one image; a client that applies none of a version's payloads gets
//! `error-noPackageFound`, never bytes it would fail on.

use crate::support;

use std::path::Path;

use fastpatch_omaha::{PayloadOps, FLATCAR_APP_ID};
use fastpatch_server::payloads::{Publish, PublishError};
use fastpatch_server::store::PackageRow;
use support::*;

const MIB: usize = 1 << 20;

/// An image that compresses (text-like), so both encodings are smaller than it.
fn image(seed: u8) -> Vec<u8> {
    (0..2 * MIB)
        .map(|i| {
            b"fastpatch payload operations "[i % 29]
                .wrapping_add(seed * ((i / 4096) % 3 == 0) as u8)
        })
        .collect()
}

async fn publish(s: &TestServer, version: &str, file: &Path) -> Result<PackageRow, PublishError> {
    fastpatch_server::payloads::publish(
        s.handle.store(),
        s.dir.path(),
        &Publish {
            app_id: FLATCAR_APP_ID,
            version,
            arch: "amd64",
            file,
            file_name: file.file_name().and_then(|n| n.to_str()),
            base_url: None,
        },
        s.clock.now_ts(),
    )
    .await
}

/// An update check from 1.0.0; `ops` as announced (`None`: stock Flatcar says nothing).
async fn check(s: &TestServer, machine: &str, ops: Option<&str>) -> String {
    let mut req = request(machine, "1.0.0", "stable", vec![], true);
    req.apps[0].payload_ops = ops.map(Into::into);
    let (status, body) = s.post(req.to_xml()).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn offer_of(body: &str) -> fastpatch_omaha::UpdateOffer {
    let resp = fastpatch_omaha::Response::parse(body.as_bytes()).unwrap();
    offered(&resp).unwrap_or_else(|| panic!("no update offered: {body}"))
}

fn sha256_of(file: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(file).unwrap()).to_vec()
}

fn engine_ops() -> String {
    fastpatch_server::variants::delta_ops().to_string()
}

async fn metric(s: &TestServer, name: &str) -> u64 {
    let text = s
        .http
        .get(format!("{}/metrics", s.handle.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

async fn each_client_gets_a_payload_it_applies(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let key = signing_key(tmp.path());
    let s = server(backend).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    store.upsert_group(&g).await.unwrap();
    let img = image(1);
    let zstd = signed_payload(tmp.path(), "zstd", &img, &key, false);
    let bz2 = signed_payload(tmp.path(), "flatcar", &img, &key, true);

    // Only the zstd payload: recorded with its operations; stock Flatcar gets a clear error.
    let pkg = publish(&s, "2.0.0", &zstd).await.unwrap();
    let ops = pkg.ops().expect("operations recorded on publish");
    assert!(ops.covers(&PayloadOps::parse("REPLACE_ZSTD")), "{ops}");
    assert!(!PayloadOps::stock_flatcar().covers(&ops));
    store
        .set_channel(FLATCAR_APP_ID, "stable", "2.0.0", 0)
        .await
        .unwrap();
    let body = check(&s, "m-stock", None).await;
    assert!(
        body.contains(r#"status="error-noPackageFound""#) && !body.contains("/v1/payloads/"),
        "{body}"
    );
    assert_eq!(
        metric(&s, "fastpatch_update_no_readable_payload_total").await,
        1
    );
    let o = offer_of(&check(&s, "m-engine", Some(&engine_ops())).await);
    assert_eq!(o.size, pkg.size as u64);

    // The Flatcar-compatible payload of the same image: a second payload of 2.0.0.
    let again = publish(&s, "2.0.0", &bz2).await.unwrap();
    assert_eq!(again.id, pkg.id, "the package it belongs to");
    let variants = store.variants(FLATCAR_APP_ID).await.unwrap();
    assert_eq!(variants.len(), 1, "{variants:?}");
    let v = &variants[0];
    assert!(
        PayloadOps::stock_flatcar().covers(&v.ops()),
        "{}",
        v.payload_ops
    );
    assert_eq!(v.size as u64, std::fs::metadata(&bz2).unwrap().len());
    // The REST API lists it.
    let listed: serde_json::Value = s
        .http
        .get(format!(
            "{}/api/v1/apps/{FLATCAR_APP_ID}/variants",
            s.handle.base_url()
        ))
        .bearer_auth("viewer-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], v.id.as_str(), "{listed}");
    assert_eq!(listed[0]["payload_ops"], v.payload_ops.as_str(), "{listed}");
    // Publishing it again changes nothing.
    publish(&s, "2.0.0", &bz2).await.unwrap();
    assert_eq!(store.variants(FLATCAR_APP_ID).await.unwrap().len(), 1);
    let activity = store.activity(None, 50).await.unwrap();
    assert_eq!(
        activity
            .iter()
            .filter(|a| a.kind == "package_variant_published")
            .count(),
        1,
        "{activity:?}"
    );

    // Stock Flatcar now gets the bzip2 payload, downloadable, and only REPLACE/REPLACE_BZ in it.
    let o = offer_of(&check(&s, "m-stock", None).await);
    assert_eq!(o.size, v.size as u64);
    assert!(o.urls[0].contains(&v.id), "{:?}", o.urls);
    let bytes = s
        .http
        .get(&o.urls[0])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, o.size);
    assert_eq!(bytes.as_ref(), std::fs::read(&bz2).unwrap().as_slice());
    let seen = fastpatch_payload::verify::inspect(bytes.as_ref()).unwrap();
    assert!(
        PayloadOps::stock_flatcar().covers(&PayloadOps::new(seen.op_names())),
        "{:?}",
        seen.op_names()
    );
    // fastpatch's engine still gets the zstd payload.
    let o = offer_of(&check(&s, "m-engine", Some(&engine_ops())).await);
    assert_eq!(
        (o.size, o.sha256.to_vec()),
        (pkg.size as u64, sha256_of(&zstd))
    );

    // Refused: another image under the same version, and a delta payload as a package.
    let other = signed_payload(tmp.path(), "other", &image(2), &key, true);
    let e = publish(&s, "2.0.0", &other).await.unwrap_err().to_string();
    assert!(
        e.contains("already published with different contents"),
        "{e}"
    );
    let delta = tmp.path().join("d.payload");
    fastpatch_payload::delta::generate_delta(
        &tmp.path().join("zstd.img"),
        &tmp.path().join("other.img"),
        std::slice::from_ref(&key),
        &delta,
        &fastpatch_payload::delta::DeltaOptions {
            zstd_level: 3,
            source_version: Some("2.0.0".into()),
            smaller_than: None,
        },
        &mut |_, _, _| {},
    )
    .unwrap();
    let e = publish(&s, "3.0.0", &delta).await.unwrap_err().to_string();
    assert!(e.contains("delta publish"), "{e}");
    assert!(store
        .find_package(FLATCAR_APP_ID, "3.0.0", "amd64")
        .await
        .unwrap()
        .is_none());
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path().join("payloads"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".incoming"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    s.handle.shutdown().await;
}

async fn a_payload_of_unknown_operations_is_offered_to_everyone(backend: Backend) {
    // Not a CrAU payload (or one registered at another URL without its operations): the
    // server cannot tell, so it answers as before.
    let s = server(backend).await;
    let pkg = s
        .publish("2.0.0", b"not a CrAU payload", Some("stable"))
        .await;
    assert_eq!(pkg.payload_ops, None);
    for ops in [None, Some(engine_ops())] {
        let o = offer_of(&check(&s, "m-any", ops.as_deref()).await);
        assert_eq!(o.size, pkg.size as u64);
    }
    s.handle.shutdown().await;
}

async fn payloads_published_before_operations_were_recorded_get_them_at_start(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let key = signing_key(tmp.path());
    let s = server(backend).await;
    let store = s.handle.store();
    let zstd = signed_payload(tmp.path(), "zstd", &image(1), &key, false);
    let pkg = publish(&s, "2.0.0", &zstd).await.unwrap();
    let noise = s.publish("3.0.0", b"not a CrAU payload", None).await;
    // As a server before schema 6 left it.
    sqlx::query("UPDATE packages SET payload_ops = NULL, image_sha256 = NULL")
        .execute(store.pool())
        .await
        .unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    fastpatch_server::variants::record_missing_ops(s.handle.state().clone(), stopped).await;
    let after = store.package(&pkg.id).await.unwrap().unwrap();
    assert_eq!(after.payload_ops, pkg.payload_ops);
    assert_eq!(after.image_sha256, pkg.image_sha256);
    let noise = store.package(&noise.id).await.unwrap().unwrap();
    assert_eq!(noise.payload_ops, None, "not a payload: still not known");
    store
        .set_channel(FLATCAR_APP_ID, "stable", "2.0.0", 0)
        .await
        .unwrap();
    let body = check(&s, "m-stock", None).await;
    assert!(body.contains(r#"status="error-noPackageFound""#), "{body}");
    s.handle.shutdown().await;
}

async fn a_client_that_applies_nothing_spends_no_grant(backend: Backend) {
    // Safe mode (the default) grants one machine at a time: a grant spent on a stock client
    // that cannot download the payload would hold the engine's update until the timeout.
    let tmp = tempfile::tempdir().unwrap();
    let key = signing_key(tmp.path());
    let s = server(backend).await;
    let store = s.handle.store();
    let zstd = signed_payload(tmp.path(), "zstd", &image(1), &key, false);
    publish(&s, "2.0.0", &zstd).await.unwrap();
    store
        .set_channel(FLATCAR_APP_ID, "stable", "2.0.0", 0)
        .await
        .unwrap();
    for _ in 0..2 {
        let body = check(&s, "m-stock", None).await;
        assert!(body.contains(r#"status="error-noPackageFound""#), "{body}");
    }
    let stock = store
        .instance(FLATCAR_APP_ID, "m-stock")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stock.target_version, None, "{stock:?}");
    let o = offer_of(&check(&s, "m-engine", Some(&engine_ops())).await);
    assert_eq!(o.version, "2.0.0");
    s.handle.shutdown().await;
}

both_backends!(
    a_client_that_applies_nothing_spends_no_grant,
    each_client_gets_a_payload_it_applies,
    a_payload_of_unknown_operations_is_offered_to_everyone,
    payloads_published_before_operations_were_recorded_get_them_at_start
);
