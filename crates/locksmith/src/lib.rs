//! Reboot coordination, locksmith compatible: the etcd semaphore (v3 API), the strategies as a
//! pure state machine, reboot windows, `locksmithd` / `locksmithctl`, and FleetLock.

pub mod etcd;
pub mod keys;
pub mod semaphore;
pub mod store;
pub mod strategy;
pub mod testsupport;
pub mod window;
