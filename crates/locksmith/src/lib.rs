//! Reboot coordination, locksmith compatible: the etcd semaphore (v3 API), the strategies as a
//! pure state machine, reboot windows, `locksmithd` / `locksmithctl`, and FleetLock.

pub mod keys;
pub mod semaphore;
pub mod strategy;
pub mod window;
