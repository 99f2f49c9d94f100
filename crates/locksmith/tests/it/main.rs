//! fastpatch-locksmith's integration tests, one binary: locksmithd, locksmithctl and FleetLock
//! against real etcd servers (plain, TLS, auth), a private dbus-daemon, and the fleet simulation.

mod etcd_auth;
mod etcd_semaphore;
mod etcd_tls;
mod fleet_faults;
mod fleet_sim;
mod fleetlock;
mod fleetlock_tls;
mod locksmithctl;
mod locksmithd;
