//! Dev-only helpers shared by integration tests (never a dependency of shipped code):
//!
//! - [`PrivateBus`]: a private `dbus-daemon` (Debian package `dbus`), killed on drop.
//! - [`UpdateServer`]: the real fastpatch-server on loopback with a signed payload published
//!   on the stable channel, reached through a [`RecordingProxy`] so tests can see every
//!   request byte (Omaha bodies, `Range` headers) while the server stays the real one.
//! - [`signed_payload`]: a signed payload of an incompressible image.
//! - [`TestCa`]: a throwaway CA and a server certificate for 127.0.0.1 (openssl).
//! - [`browser`]: headless chromium through chromedriver, the dashboard's login, screenshots.

pub mod browser;
mod bus;
mod proxy;
mod server;
mod tls;

pub use bus::PrivateBus;
/// The server's delta rows, as tests read them.
pub use fastpatch_server::store::{DeltaRow, DeltaState};
pub use proxy::{RecordedRequest, RecordingProxy};
pub use server::{signed_payload, SeenEvent, UpdateServer, MACHINE, NEW};
pub use tls::TestCa;

pub const MIB: u64 = 1 << 20;

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
