//! The D-Bus face of the engine: `com.coreos.update1` at `/com/coreos/update1`, interface
//! `com.coreos.update1.Manager`, as Flatcar's update_engine exposes it — so locksmithd and the
//! Flatcar Linux Update Operator talk to fastpatch unchanged.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use zbus::object_server::SignalEmitter;

use crate::status_report::StatusSnapshot;

pub use fastpatch_update1::{RawStatus, BUS_NAME, INTERFACE, OBJECT_PATH};

/// What a D-Bus caller asked the engine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    AttemptUpdate,
    ResetStatus,
}

/// The exported object. Reads go to a shared snapshot; requests go to the engine loop.
pub struct Manager {
    snapshot: Arc<Mutex<StatusSnapshot>>,
    requests: mpsc::Sender<Request>,
}

impl Manager {
    pub fn new(snapshot: Arc<Mutex<StatusSnapshot>>, requests: mpsc::Sender<Request>) -> Manager {
        Manager { snapshot, requests }
    }

    async fn forward(&self, request: Request) -> zbus::fdo::Result<()> {
        self.requests
            .send(request)
            .await
            .map_err(|_| zbus::fdo::Error::Failed("the update engine is shutting down".into()))
    }
}

#[zbus::interface(name = "com.coreos.update1.Manager")]
impl Manager {
    /// Check for an update now (ignored while an attempt is under way).
    async fn attempt_update(&self) -> zbus::fdo::Result<()> {
        self.forward(Request::AttemptUpdate).await
    }

    /// Back to idle; a staged but not yet booted update is unstaged.
    async fn reset_status(&self) -> zbus::fdo::Result<()> {
        self.forward(Request::ResetStatus).await
    }

    /// (last_checked_time, progress, current_operation, new_version, new_size)
    async fn get_status(&self) -> RawStatus {
        let s = self.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        (
            s.last_checked_time,
            s.progress,
            s.current_operation.as_str().to_string(),
            s.new_version,
            s.new_size,
        )
    }

    #[zbus(signal)]
    async fn status_update(
        emitter: &SignalEmitter<'_>,
        last_checked_time: i64,
        progress: f64,
        current_operation: &str,
        new_version: &str,
        new_size: i64,
    ) -> zbus::Result<()>;
}

/// Connects to the bus at `address` (the system bus when `None`), exports the manager and
/// claims the well-known name.
pub async fn serve(address: Option<&str>, manager: Manager) -> zbus::Result<zbus::Connection> {
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a),
        None => zbus::connection::Builder::system(),
    };
    builder
        .serve_at(OBJECT_PATH, manager)
        .name(BUS_NAME)
        .build()
        .await
}

/// Emits StatusUpdate with `s` from the exported object.
pub async fn emit_status(connection: &zbus::Connection, s: &StatusSnapshot) -> zbus::Result<()> {
    let emitter = SignalEmitter::new(connection, OBJECT_PATH)?;
    Manager::status_update(
        &emitter,
        s.last_checked_time,
        s.progress,
        s.current_operation.as_str(),
        &s.new_version,
        s.new_size,
    )
    .await
}

/// The client side (update_engine_client, locksmithd-style listeners).
#[zbus::proxy(
    interface = "com.coreos.update1.Manager",
    default_service = "com.coreos.update1",
    default_path = "/com/coreos/update1"
)]
pub trait ManagerClient {
    fn attempt_update(&self) -> zbus::Result<()>;
    fn reset_status(&self) -> zbus::Result<()>;
    fn get_status(&self) -> zbus::Result<RawStatus>;
    #[zbus(signal)]
    fn status_update(
        &self,
        last_checked_time: i64,
        progress: f64,
        current_operation: String,
        new_version: String,
        new_size: i64,
    ) -> zbus::Result<()>;
}

/// Connects a client to the bus at `address` (the system bus when `None`).
pub async fn client(address: Option<&str>) -> zbus::Result<ManagerClientProxy<'static>> {
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a),
        None => zbus::connection::Builder::system(),
    };
    let connection = builder.build().await?;
    ManagerClientProxy::new(&connection).await
}
