//! fastpatch's node update engine: the daemon that performs what the pure core
//! (`fastpatch-engine-core`: [`machine::Engine::step`], [`schedule`], [`health`], [`urls`],
//! [`status_report`]) decides, with real I/O: the durable state file ([`persist`]), the
//! machine facts every request carries ([`sysinfo`]), D-Bus ([`dbus`]), update_engine_client
//! ([`client`]) and the daemon itself ([`daemon`]).

pub use fastpatch_engine_core::{health, machine, report, schedule, status, status_report, urls};

pub mod client;
pub mod daemon;
pub mod dbus;
pub mod persist;
pub mod sysinfo;
pub mod tools;

pub use machine::{
    Action, BootFacts, CheckDelay, CheckReply, DurableState, Engine, Input, StagedUpdate,
    UpdateOffer,
};
pub use report::{ErrorCode, Event};
pub use status::UpdateStatus;
