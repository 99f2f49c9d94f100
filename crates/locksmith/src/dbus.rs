//! D-Bus: the update engine's `com.coreos.update1` interface (where locksmithd learns that an
//! update is staged) and logind's `Reboot`.

use tokio::sync::mpsc;
use tracing::{debug, warn};
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, MessageStream};

use fastpatch_update1::{RawStatus, UpdateStatus};

/// Engine bus name, object and interface (update_engine.xml), from the one definition.
pub use fastpatch_update1::{
    BUS_NAME as ENGINE_NAME, INTERFACE as ENGINE_INTERFACE, OBJECT_PATH as ENGINE_PATH,
};
/// The `current_operation` that means "staged, reboot needed".
pub const NEED_REBOOT: &str = UpdateStatus::UpdatedNeedReboot.as_str();

/// `GetStatus` / `StatusUpdate` as read from the bus.
pub type EngineStatus = fastpatch_update1::Status;

/// Where update status comes from (the D-Bus engine in production; anything in tests).
pub trait UpdateStatusSource: Send {
    /// A channel that yields the current status first (if the engine answers) and then every
    /// status update.
    fn subscribe(
        &self,
    ) -> impl std::future::Future<Output = Result<mpsc::Receiver<EngineStatus>, zbus::Error>> + Send;
}

/// Connects to the bus at `address`, or the system bus.
pub async fn connect(address: Option<&str>) -> zbus::Result<Connection> {
    match address {
        Some(a) => zbus::connection::Builder::address(a).build().await,
        None => Connection::system().await,
    }
}

/// The engine on D-Bus.
#[derive(Clone, Debug)]
pub struct DbusEngine {
    pub conn: Connection,
}

impl UpdateStatusSource for DbusEngine {
    async fn subscribe(&self) -> Result<mpsc::Receiver<EngineStatus>, zbus::Error> {
        // Match the signal by interface and member, not by sender: the engine may start after
        // us, and `locksmithctl send-need-reboot` emits it from its own connection.
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .interface(ENGINE_INTERFACE)
            .member("StatusUpdate")
            .build()?;
        let mut stream =
            MessageStream::for_match_rule(rule, &self.conn, std::num::NonZeroUsize::new(64))
                .await?;
        let (tx, rx) = mpsc::channel(64);
        match get_status(&self.conn).await {
            Ok(s) => {
                let _ = tx.send(s).await;
            }
            Err(e) => debug!(error = %e, "engine GetStatus failed (not running yet?)"),
        }
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(msg) = stream.next().await {
                let Ok(msg) = msg else { continue };
                match msg.body().deserialize::<RawStatus>() {
                    Ok(raw) => {
                        if tx.send(EngineStatus::from(raw)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(error = %e, "malformed StatusUpdate signal ignored"),
                }
            }
        });
        Ok(rx)
    }
}

/// Calls the engine's `GetStatus`.
pub async fn get_status(conn: &Connection) -> zbus::Result<EngineStatus> {
    let reply = conn
        .call_method(
            Some(ENGINE_NAME),
            ENGINE_PATH,
            Some(ENGINE_INTERFACE),
            "GetStatus",
            &(),
        )
        .await?;
    let raw: RawStatus = reply.body().deserialize()?;
    Ok(EngineStatus::from(raw))
}

/// Emits a `StatusUpdate` saying a reboot is needed (`locksmithctl send-need-reboot`).
pub async fn send_need_reboot(conn: &Connection) -> zbus::Result<()> {
    conn.emit_signal(
        None::<&str>,
        ENGINE_PATH,
        ENGINE_INTERFACE,
        "StatusUpdate",
        &(0i64, 0.0f64, NEED_REBOOT, "", 0i64),
    )
    .await
}

/// What `systemctl kexec` asks of systemd once a kernel is loaded:
/// `org.freedesktop.systemd1.Manager.StartUnit("kexec.target", "replace-irreversibly")`.
pub async fn systemd_kexec(conn: &Connection) -> zbus::Result<()> {
    conn.call_method(
        Some("org.freedesktop.systemd1"),
        "/org/freedesktop/systemd1",
        Some("org.freedesktop.systemd1.Manager"),
        "StartUnit",
        &("kexec.target", "replace-irreversibly"),
    )
    .await?;
    Ok(())
}

/// `org.freedesktop.login1.Manager.Reboot(false)`.
pub async fn logind_reboot(conn: &Connection) -> zbus::Result<()> {
    conn.call_method(
        Some("org.freedesktop.login1"),
        "/org/freedesktop/login1",
        Some("org.freedesktop.login1.Manager"),
        "Reboot",
        &(false,),
    )
    .await?;
    Ok(())
}
