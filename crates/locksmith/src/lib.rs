//! Reboot coordination, locksmith compatible: the etcd semaphore (v3 API), the strategies as a
//! pure state machine, reboot windows, `locksmithd` / `locksmithctl`, and FleetLock.

pub mod cli;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dbus;
pub mod etcd;
pub mod flags;
pub mod fleetlock;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod reboot;
pub mod sim;
pub mod store;
pub mod strategy;
pub mod testsupport;
pub mod window;

/// The semaphore value (in `fastpatch-locksmith-core`, pure).
pub use fastpatch_locksmith_core::semaphore;
