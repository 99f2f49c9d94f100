//! Packages hosted elsewhere (a CDN), registered through the admin API with
//! extra files, and offered over Omaha the way Flatcar expects.

use crate::support;

use fastpatch_omaha::{encode_b64, FLATCAR_APP_ID};
use serde_json::{json, Value};
use support::{offered, server, Backend, NowTs};

async fn external_package_with_extra_files(b: Backend) {
    let s = server(b).await;
    let base = format!("{}/api/v1", s.handle.base_url());
    let app = FLATCAR_APP_ID;
    let sha1_hex = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";
    let sha256 = [7u8; 32];
    let body = json!({
        "version": "3815.2.0",
        "arch": "amd64",
        "url": "https://cdn.example/amd64-usr/3815.2.0/flatcar_production_update.gz",
        "size": 382137917u64,
        "sha1": sha1_hex,
        "sha256": hex_of(&sha256),
        "extra_files": [
            { "name": "oem-azure.gz", "size": 1234, "sha1": encode_b64(&[1u8; 20]), "sha256": encode_b64(&[2u8; 32]) },
            { "name": "flatcar-docker.raw", "size": 99, "sha1": hex_of(&[3u8; 20]), "sha256": hex_of(&[4u8; 32]) }
        ]
    });
    let register = |token: &'static str, body: Value| {
        s.http
            .post(format!("{base}/apps/{app}/packages"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    assert_eq!(
        register("viewer-token", body.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    let r = register("admin-token", body.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(
        got["package"]["base_url"],
        "https://cdn.example/amd64-usr/3815.2.0/"
    );
    assert_eq!(got["package"]["sha256_b64"], encode_b64(&sha256));
    assert_eq!(got["extra_files"].as_array().unwrap().len(), 2);
    // The same registration again is a no-op; other hashes for the version are refused.
    assert_eq!(
        register("admin-token", body.clone())
            .await
            .unwrap()
            .status(),
        200
    );
    let mut other = body.clone();
    other["extra_files"][0]["size"] = json!(1235);
    assert_eq!(register("admin-token", other).await.unwrap().status(), 400);
    let mut bad = body.clone();
    bad["sha256"] = json!("zz");
    assert_eq!(register("admin-token", bad).await.unwrap().status(), 400);
    let one: Value = s
        .http
        .get(format!("{base}/apps/{app}/packages/3815.2.0/amd64-usr"))
        .bearer_auth("viewer-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["extra_files"][1]["name"], "flatcar-docker.raw");
    assert_eq!(one["extra_files"][1]["sha256_b64"], encode_b64(&[4u8; 32]));

    s.handle
        .store()
        .set_channel(app, "stable", "3815.2.0", s.clock.now_ts())
        .await
        .unwrap();
    let resp = s.check("m1", "3602.2.0", "stable", vec![], true).await;
    let offer = offered(&resp).expect("an update");
    assert_eq!(
        offer.urls,
        ["https://cdn.example/amd64-usr/3815.2.0/flatcar_production_update.gz"]
    );
    assert_eq!(offer.size, 382137917);
    assert_eq!(offer.sha256, sha256);
    let manifest = resp.apps[0]
        .update_check
        .as_ref()
        .unwrap()
        .manifest
        .as_ref()
        .unwrap();
    let names: Vec<&str> = manifest.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "flatcar_production_update.gz",
            "oem-azure.gz",
            "flatcar-docker.raw"
        ]
    );
    assert_eq!(manifest.packages[0].required, Some(true));
    assert_eq!(manifest.packages[1].required, Some(false));
    assert_eq!(manifest.packages[1].size, "1234");
    assert_eq!(
        manifest.packages[1].hash.as_deref(),
        Some(encode_b64(&[1u8; 20]).as_str())
    );
    assert_eq!(
        manifest.packages[2].hash_sha256.as_deref(),
        Some("04".repeat(32).as_str()),
        "hex, as Nebraska sends it and ue-rs reads it"
    );
    assert_eq!(manifest.packages[2].sha256(), Some([4u8; 32]));
    // Not hosted here: the payload route does not serve it.
    let pkg_id = got["package"]["id"].as_str().unwrap();
    let r = s
        .http
        .get(format!(
            "{}/v1/payloads/{pkg_id}/flatcar_production_update.gz",
            s.handle.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.handle.shutdown().await;
}

/// A hosted package with an extra file: both served here, with Range.
async fn hosted_package_with_extra_file(b: Backend) {
    let s = server(b).await;
    let payload = s.dir.path().join("flatcar_production_update.gz");
    std::fs::write(&payload, vec![1u8; 3000]).unwrap();
    let extra: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let extra_path = s.dir.path().join("oem-qemu.gz");
    std::fs::write(&extra_path, &extra).unwrap();
    let publish = |extra_path: std::path::PathBuf| {
        let payload = payload.clone();
        let store = s.handle.store().clone();
        let dir = s.dir.path().to_owned();
        async move {
            fastpatch_server::payloads::publish_with_files(
                &store,
                &dir,
                &fastpatch_server::payloads::Publish {
                    app_id: FLATCAR_APP_ID,
                    version: "3815.2.0",
                    arch: "amd64",
                    file: &payload,
                    file_name: None,
                    base_url: None,
                },
                &[extra_path],
                0,
            )
            .await
            .map(|p| p.package)
        }
    };
    let pkg = publish(extra_path.clone()).await.unwrap();
    // Again, identical: the same package; with other extra bytes: refused.
    assert_eq!(publish(extra_path.clone()).await.unwrap().id, pkg.id);
    std::fs::write(&extra_path, b"other bytes").unwrap();
    assert!(publish(extra_path.clone()).await.is_err());
    s.handle
        .store()
        .set_channel(FLATCAR_APP_ID, "stable", "3815.2.0", s.clock.now_ts())
        .await
        .unwrap();
    let resp = s.check("m1", "3602.2.0", "stable", vec![], true).await;
    let offer = offered(&resp).expect("an update");
    let manifest = resp.apps[0]
        .update_check
        .as_ref()
        .unwrap()
        .manifest
        .as_ref()
        .unwrap();
    assert_eq!(manifest.packages[1].name, "oem-qemu.gz");
    let sha256 = {
        use sha2::Digest;
        sha2::Sha256::digest(&extra)
    };
    assert_eq!(
        manifest.packages[1].hash_sha256.as_deref(),
        Some(hex::encode(sha256).as_str())
    );
    let codebase = offer.urls[0].trim_end_matches("flatcar_production_update.gz");
    let got = s
        .http
        .get(format!("{codebase}oem-qemu.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), extra.as_slice());
    let part = s
        .http
        .get(format!("{codebase}oem-qemu.gz"))
        .header("Range", "bytes=4000-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &extra[4000..]);
    let missing = s
        .http
        .get(format!("{codebase}nope.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    s.handle.shutdown().await;
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

both_backends!(
    external_package_with_extra_files,
    hosted_package_with_extra_file
);
