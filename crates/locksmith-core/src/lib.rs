//! locksmith's data, pure: the semaphore value as etcd stores it and FleetLock's wire format.
//! No I/O and no async runtime (the daemons and their transports are in `fastpatch-locksmith`),
//! so the fuzz targets and anything else that reads these formats build in seconds.

pub mod fleetlock;
pub mod semaphore;
