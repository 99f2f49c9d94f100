//! The real update server for client-side tests, and what it recorded (read through its REST
//! API, as an operator would see it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fastpatch_omaha::FLATCAR_APP_ID;

use crate::{RecordingProxy, MIB};

/// The machine id test machines use.
pub const MACHINE: &str = "0123456789abcdef0123456789abcdef";
/// The version [`UpdateServer::start`] publishes.
pub const NEW: &str = "2.0.0";

/// A signed payload of an incompressible `image_mib` MiB image, written under `dir`:
/// (payload path, PEM public key path).
pub fn signed_payload(dir: &Path, image_mib: u64) -> (PathBuf, PathBuf) {
    // xorshift: incompressible, so the payload is as large as the image and a transfer takes
    // long enough to be interrupted.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..image_mib * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let image = dir.join("usr.img");
    std::fs::write(&image, &data).expect("writing the test image");
    let key = fastpatch_payload::keys::generate_key().expect("RSA key");
    let pub_pem = dir.join("key.pub.pem");
    std::fs::write(
        &pub_pem,
        fastpatch_payload::keys::public_key_pem(&key.to_public_key()).expect("PEM"),
    )
    .expect("writing the public key");
    let payload = dir.join("update.gz");
    fastpatch_payload::generate::generate(
        &image,
        &[key],
        &payload,
        &fastpatch_payload::generate::GenerateOptions::default(),
        &mut |_, _| {},
    )
    .expect("generating the payload");
    (payload, pub_pem)
}

/// One event as the server stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    pub event_type: i64,
    pub event_result: i64,
    pub error_code: Option<i64>,
    pub previous_version: Option<String>,
}

impl SeenEvent {
    /// `type/result`, e.g. `13/1`.
    pub fn short(&self) -> String {
        format!("{}/{}", self.event_type, self.event_result)
    }
}

/// The real server with [`NEW`] published (hosted by it) and the stable channel on it. Clients
/// reach it (Omaha and payload URLs alike) through a [`RecordingProxy`].
pub struct UpdateServer {
    pub handle: fastpatch_server::ServerHandle,
    pub proxy: RecordingProxy,
    pub data_dir: PathBuf,
    /// The package id (its hosted file name under the data dir) and size.
    pub package_id: String,
    pub payload_size: u64,
    /// The payload's public key (machines trust it).
    pub pub_pem: PathBuf,
    api: String,
    http: reqwest::Client,
}

impl UpdateServer {
    /// Starts the server under `dir/server` and publishes a signed payload of an
    /// `image_mib` MiB image as [`NEW`] on the stable channel.
    pub async fn start(dir: &Path, image_mib: u64) -> UpdateServer {
        let (payload, pub_pem) = signed_payload(dir, image_mib);
        UpdateServer::start_with(dir, &payload, pub_pem).await
    }

    /// As [`start`](UpdateServer::start), publishing the given payload (signed by the key
    /// `pub_pem` holds) as [`NEW`].
    pub async fn start_with(dir: &Path, payload: &Path, pub_pem: PathBuf) -> UpdateServer {
        UpdateServer::start_full(dir, None, &[(NEW, payload)], pub_pem, &[]).await
    }

    /// As [`start_with`](UpdateServer::start_with), with extra files (system extensions)
    /// listed after [`NEW`]'s payload and hosted beside it.
    pub async fn start_with_files(
        dir: &Path,
        payload: &Path,
        pub_pem: PathBuf,
        extra: &[PathBuf],
    ) -> UpdateServer {
        UpdateServer::start_full(dir, None, &[(NEW, payload)], pub_pem, extra).await
    }

    /// A server that makes deltas (signed with the private key `key_pem`, which also signs
    /// both payloads): `old_payload` published as `old_version`, the stable channel pointed
    /// at it, then `new_payload` as [`NEW`] and stable moved on; returns once the delta
    /// `old_version` → [`NEW`] is made (ready or not), with its row.
    pub async fn start_with_delta(
        dir: &Path,
        old_version: &str,
        old_payload: &Path,
        new_payload: &Path,
        key_pem: &Path,
        pub_pem: PathBuf,
    ) -> (UpdateServer, fastpatch_server::store::DeltaRow) {
        let mut deltas = fastpatch_server::deltas::DeltaSettings::new(key_pem.to_owned());
        deltas.scan_every = Duration::from_millis(100);
        deltas.zstd_level = 3;
        let server = UpdateServer::start_full(
            dir,
            Some(deltas),
            &[(old_version, old_payload), (NEW, new_payload)],
            pub_pem,
            &[],
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let made = server
                .handle
                .store()
                .deltas(FLATCAR_APP_ID)
                .await
                .expect("store");
            if let Some(d) = made.into_iter().find(|d| d.source_version == old_version) {
                return (server, d);
            }
            assert!(Instant::now() < deadline, "no delta made within 120 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the server under `dir/server` and publishes each (version, payload) in order,
    /// pointing the stable channel at each; the last is the one [`UpdateServer`] describes.
    async fn start_full(
        dir: &Path,
        deltas: Option<fastpatch_server::deltas::DeltaSettings>,
        payloads: &[(&str, &Path)],
        pub_pem: PathBuf,
        extra: &[PathBuf],
    ) -> UpdateServer {
        let data_dir = dir.join("server");
        let proxy = RecordingProxy::bind().await.expect("proxy port");
        let mut config = fastpatch_server::Config::for_tests(&data_dir);
        config.public_url = Some(proxy.url());
        config.deltas = deltas;
        let handle = fastpatch_server::Server::start(config)
            .await
            .expect("server starts");
        proxy.forward_to(handle.local_addr());
        let now = crate::unix_now();
        let mut last = None;
        for (version, payload) in payloads {
            let files = if *version == NEW { extra } else { &[] };
            let package = fastpatch_server::payloads::publish_with_files(
                handle.store(),
                &data_dir,
                &fastpatch_server::payloads::Publish {
                    app_id: FLATCAR_APP_ID,
                    version,
                    arch: "amd64",
                    file: payload,
                    file_name: Some("flatcar_production_update.gz"),
                    base_url: None,
                },
                files,
                now,
            )
            .await
            .expect("publish")
            .package;
            handle
                .store()
                .set_channel(FLATCAR_APP_ID, "stable", version, now)
                .await
                .expect("point stable at the version");
            last = Some(package);
        }
        let package = last.expect("at least one payload");
        handle.state().delta_wake.notify_one();
        // reqwest is built without a TLS provider in this workspace: pick one for the client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        UpdateServer {
            api: format!("http://{}", handle.local_addr()),
            handle,
            proxy,
            data_dir,
            package_id: package.id.clone(),
            payload_size: u64::try_from(package.size).unwrap_or(0),
            pub_pem,
            http: reqwest::Client::new(),
        }
    }

    /// Posts an Omaha request body as a machine would; the response XML.
    pub async fn omaha_post(&self, body: &str) -> String {
        let resp = self
            .http
            .post(self.omaha_url())
            .body(body.to_owned())
            .send()
            .await
            .expect("Omaha request");
        assert!(resp.status().is_success(), "Omaha status {}", resp.status());
        resp.text().await.expect("Omaha body")
    }

    /// Paths of payload downloads (GET /v1/payloads/…), in order.
    pub fn payload_paths(&self) -> Vec<String> {
        self.proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/v1/payloads/"))
            .map(|r| r.path)
            .collect()
    }

    /// Turns safe mode off for the stable group (a failure then does not halt it).
    pub async fn stable_without_safe_mode(&self) {
        let store = self.handle.store();
        let mut g = store
            .group(FLATCAR_APP_ID, "stable")
            .await
            .expect("store")
            .expect("the stable group");
        g.safe_mode = false;
        store.upsert_group(&g).await.expect("update the group");
    }

    /// The Omaha endpoint (through the proxy), as `SERVER=` in update.conf.
    pub fn omaha_url(&self) -> String {
        format!("{}/v1/update/", self.proxy.url())
    }

    /// The payload file the server hosts.
    pub fn stored_payload(&self) -> PathBuf {
        fastpatch_server::payloads::payload_dir(&self.data_dir).join(&self.package_id)
    }

    /// Flips one byte in the middle of the hosted payload (bit rot or tampering on the
    /// server): size unchanged, its SHA-256 no longer what the server announces.
    pub fn tamper_payload(&self) {
        let path = self.stored_payload();
        let mut bytes = std::fs::read(&path).expect("stored payload");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).expect("rewriting the stored payload");
    }

    /// Omaha request bodies the server received, in order per connection.
    pub fn omaha_bodies(&self) -> Vec<String> {
        self.proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.starts_with("/v1/update"))
            .map(|r| r.body_text())
            .collect()
    }

    /// The `Range` start of every payload download request (None: the whole file).
    pub fn payload_ranges(&self) -> Vec<Option<u64>> {
        self.proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/v1/payloads/"))
            .map(|r| r.range_start())
            .collect()
    }

    /// The machine's events as the REST API shows them, oldest first.
    pub async fn events(&self) -> Vec<SeenEvent> {
        let url = format!(
            "{}/api/v1/apps/{FLATCAR_APP_ID}/instances/{MACHINE}",
            self.api
        );
        let resp = self
            .http
            .get(url)
            .bearer_auth("admin-token")
            .send()
            .await
            .expect("API request");
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        assert!(resp.status().is_success(), "API status {}", resp.status());
        let body = resp.text().await.expect("API body");
        let v: serde_json::Value = serde_json::from_str(&body).expect("API JSON");
        // The API lists the newest first.
        let mut out: Vec<SeenEvent> = v["events"]
            .as_array()
            .expect("events array")
            .iter()
            .map(|e| SeenEvent {
                event_type: e["event_type"].as_i64().expect("event_type"),
                event_result: e["event_result"].as_i64().expect("event_result"),
                error_code: e["error_code"].as_i64(),
                previous_version: e["previous_version"].as_str().map(str::to_string),
            })
            .collect();
        out.reverse();
        out
    }

    /// `type/result` of every event, oldest first.
    pub async fn event_names(&self) -> Vec<String> {
        self.events().await.iter().map(SeenEvent::short).collect()
    }

    /// Waits (up to 15 s) until the server has at least `n` events of the machine.
    pub async fn wait_events(&self, n: usize) -> Vec<SeenEvent> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ev = self.events().await;
            if ev.len() >= n || Instant::now() > deadline {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stable group's halt flag (safe mode halts it on a failure or rollback).
    pub async fn stable_halted(&self) -> bool {
        self.handle
            .store()
            .group(FLATCAR_APP_ID, "stable")
            .await
            .expect("store")
            .expect("the stable group")
            .halted
    }

    /// Waits (up to 10 s) for the stable group to be halted; false if it never is. The event
    /// and the halt are written one after the other while the request is handled.
    pub async fn wait_stable_halted(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.stable_halted().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The machine's instance row: (version, status).
    pub async fn instance(&self) -> (String, String) {
        let row = self
            .handle
            .store()
            .instance(FLATCAR_APP_ID, MACHINE)
            .await
            .expect("store")
            .expect("the instance");
        (row.version, row.status.as_str().to_owned())
    }

    /// The instance row once it shows `status` (or after 10 s, whatever it shows then).
    pub async fn wait_instance(&self, status: &str) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = self.instance().await;
            if row.1 == status || Instant::now() > deadline {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
