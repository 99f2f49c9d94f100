//! fastpatch's node update engine.
//!
//! The decisions live in [`machine::Engine::step`]: one state enum ([`UpdateStatus`]), inputs
//! in, actions out, no I/O. Around it: the check [`schedule`], the [`health`] gate's verdict,
//! payload [`urls`] rotation, the durable state file ([`persist`]) and the machine facts every
//! request carries ([`sysinfo`]). The daemon that performs the actions is a thin shell over
//! these.

pub mod client;
pub mod daemon;
pub mod dbus;
pub mod health;
pub mod machine;
pub mod persist;
pub mod report;
pub mod schedule;
pub mod status;
pub mod status_report;
pub mod sysinfo;
pub mod urls;

#[cfg(test)]
mod machine_tests;

pub use machine::{
    Action, BootFacts, CheckDelay, CheckReply, DurableState, Engine, Input, StagedUpdate,
    UpdateOffer,
};
pub use report::{ErrorCode, Event};
pub use status::UpdateStatus;
