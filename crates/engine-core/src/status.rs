//! update_engine's status values: defined once in `fastpatch-update1` (the D-Bus contract the
//! engine shares with locksmithd and the clients), re-exported here for the engine's modules.

pub use fastpatch_update1::{UnknownStatus, UpdateStatus};
