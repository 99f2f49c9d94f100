//! The real fastpatch-server on the host for the update scenarios: started through its library
//! API on a loopback port, advertising payload URLs the guest can reach (QEMU user networking
//! maps the host's loopback to 10.0.2.2), with a blocking API so a test can publish payloads
//! and read what the server recorded between boots (and while a boot runs).

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use fastpatch_omaha::FLATCAR_APP_ID;
use fastpatch_server::store::{DeltaRow, EventRow, Group, InstanceFilter, InstanceRow, PackageRow};
use fastpatch_server::{Config, Server, ServerHandle, Store};

use crate::{io_err, HarnessError, Result};

/// The host as the guest sees it (QEMU user networking).
pub const GUEST_HOST: &str = "10.0.2.2";

/// The admin token of the host server's API and dashboard.
pub const ADMIN_TOKEN: &str = "fleet-admin-token";

/// A running fastpatch-server with its own runtime and SQLite database.
pub struct HostServer {
    rt: tokio::runtime::Runtime,
    handle: Option<ServerHandle>,
    data_dir: PathBuf,
    port: u16,
}

fn server_err(what: &str) -> impl FnOnce(String) -> HarnessError + '_ {
    move |e| HarnessError::Invalid(format!("fastpatch-server: {what}: {e}"))
}

impl HostServer {
    /// Starts the server on `127.0.0.1:<free port>` with its data (SQLite, payloads) in
    /// `data_dir`, the default Flatcar app, channels and groups (safe mode on), and payload
    /// URLs under `http://10.0.2.2:<port>`.
    pub fn start(data_dir: &Path) -> Result<HostServer> {
        HostServer::start_with(data_dir, None)
    }

    /// [`HostServer::start`], making delta payloads as `deltas` says.
    pub fn start_with(
        data_dir: &Path,
        deltas: Option<fastpatch_server::deltas::DeltaSettings>,
    ) -> Result<HostServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io_err("starting the server's runtime"))?;
        std::fs::create_dir_all(data_dir)
            .map_err(io_err(format!("creating {}", data_dir.display())))?;
        // The public URL must name the port before the server binds it: take a free port,
        // and try again in the unlikely case someone else grabbed it in between.
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(io_err("finding a free loopback port"))?
                .port();
            let mut config = Config::new(data_dir);
            config.listen = SocketAddr::from(([127, 0, 0, 1], port));
            config.public_url = Some(format!("http://{GUEST_HOST}:{port}"));
            config.deltas = deltas.clone();
            config.admin_tokens = vec![ADMIN_TOKEN.into()];
            match rt.block_on(Server::start(config)) {
                Ok(handle) => {
                    tracing::info!(port, "fastpatch-server started for the guest");
                    return Ok(HostServer {
                        rt,
                        handle: Some(handle),
                        data_dir: data_dir.to_path_buf(),
                        port,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(HarnessError::Invalid(format!(
            "fastpatch-server did not start: {last}"
        )))
    }

    fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("the handle lives until drop")
    }

    /// The server's store (run its async methods with [`HostServer::block_on`]).
    pub fn store(&self) -> &Store {
        self.handle().store()
    }

    /// Runs a future of the server's API on its runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The port on the host's loopback.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Omaha URL as the guest reaches it, for update.conf's `SERVER=`.
    pub fn guest_update_url(&self) -> String {
        format!("http://{GUEST_HOST}:{}/v1/update/", self.port)
    }

    /// The server's URL on the host.
    pub fn host_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The dashboard's page of an update group of the Flatcar app.
    pub fn group_page_url(&self, group: &str) -> String {
        let app = FLATCAR_APP_ID.replace('{', "%7B").replace('}', "%7D");
        format!("{}/ui/apps/{app}/groups/{group}", self.host_url())
    }

    /// Publishes a payload file as `version` of the Flatcar app (amd64) and points `channel`
    /// at it.
    pub fn publish(&self, version: &str, payload: &Path, channel: &str) -> Result<PackageRow> {
        self.publish_with_files(version, payload, channel, &[])
    }

    /// [`HostServer::publish`] with extra files (system extensions) listed after the payload.
    pub fn publish_with_files(
        &self,
        version: &str,
        payload: &Path,
        channel: &str,
        extra: &[PathBuf],
    ) -> Result<PackageRow> {
        let now = self.now();
        let store = self.store();
        self.block_on(async {
            let pkg = fastpatch_server::payloads::publish_with_files(
                store,
                &self.data_dir,
                &fastpatch_server::payloads::Publish {
                    app_id: FLATCAR_APP_ID,
                    version,
                    arch: "amd64",
                    file: payload,
                    file_name: Some("flatcar_production_update.gz"),
                    base_url: None,
                },
                extra,
                now,
            )
            .await
            .map_err(|e| e.to_string())?
            .package;
            store
                .set_channel(FLATCAR_APP_ID, channel, version, now)
                .await
                .map_err(|e| e.to_string())?;
            Ok(pkg)
        })
        .map_err(server_err("publishing"))
    }

    /// The server's clock, as its handlers read it.
    fn now(&self) -> i64 {
        self.handle().state().clock.now().timestamp()
    }

    /// The server's record of a machine, if it has checked in.
    pub fn instance(&self, machine_id: &str) -> Result<Option<InstanceRow>> {
        self.block_on(self.store().instance(FLATCAR_APP_ID, machine_id))
            .map_err(|e| server_err("reading an instance")(e.to_string()))
    }

    /// The machines of an update group, by machine id.
    pub fn instances(&self, group: &str) -> Result<Vec<InstanceRow>> {
        let filter = InstanceFilter {
            app_id: Some(FLATCAR_APP_ID.into()),
            group: Some(group.into()),
            ..Default::default()
        };
        self.block_on(self.store().list_instances(&filter, self.now()))
            .map_err(|e| server_err("listing instances")(e.to_string()))
    }

    /// The machine's events, newest first.
    pub fn events(&self, machine_id: &str) -> Result<Vec<EventRow>> {
        self.block_on(self.store().events(FLATCAR_APP_ID, machine_id, 100))
            .map_err(|e| server_err("reading events")(e.to_string()))
    }

    /// The machine's status history, oldest first.
    pub fn status_history(&self, machine_id: &str) -> Result<Vec<String>> {
        let rows = self
            .block_on(self.store().history(FLATCAR_APP_ID, machine_id, 100))
            .map_err(|e| server_err("reading the status history")(e.to_string()))?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|h| h.status.as_str().to_owned())
            .collect())
    }

    /// Changes an update group's settings.
    pub fn set_group(&self, group: &Group) -> Result<()> {
        self.block_on(self.store().upsert_group(group))
            .map_err(|e| server_err("updating a group")(e.to_string()))
    }

    /// The delta payloads the server made, oldest first.
    pub fn deltas(&self) -> Result<Vec<DeltaRow>> {
        self.block_on(self.store().deltas(FLATCAR_APP_ID))
            .map_err(|e| server_err("reading the deltas")(e.to_string()))
    }

    /// Full-payload bytes served per package id (counted in memory, written every 5 s).
    pub fn package_served_bytes(&self) -> Result<Vec<(String, i64)>> {
        self.block_on(self.store().package_served_bytes(FLATCAR_APP_ID))
            .map_err(|e| server_err("reading bytes served")(e.to_string()))
    }

    /// An update group of the Flatcar app.
    pub fn group(&self, name: &str) -> Result<Option<Group>> {
        self.block_on(self.store().group(FLATCAR_APP_ID, name))
            .map_err(|e| server_err("reading a group")(e.to_string()))
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.rt.block_on(handle.shutdown());
        }
    }
}
