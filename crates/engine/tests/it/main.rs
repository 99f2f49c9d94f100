//! fastpatch-engine's integration tests, one binary (the fail-point power cuts are their own,
//! `power_cuts.rs`): the daemon against the real server, a private dbus-daemon and disk images.

mod support;

mod dbus_private_bus;
mod e2e_daemon;
mod extensions;
mod guest_mode;
mod resume;
