//! The update engine's decisions, kept pure by the compiler: this crate depends on no async
//! runtime, HTTP, D-Bus or file-system crate (`cargo tree -p fastpatch-engine-core` shows
//! none), so every function here maps values to values.
//!
//! The decisions live in [`machine::Engine::step`]: one state enum ([`State`], with each state's data in its variant; the wire [`UpdateStatus`] is derived from it), inputs
//! in, actions out. Around it: the check [`schedule`], the [`health`] gate's verdict, payload
//! [`urls`] rotation and the [`status_report`] (GetStatus snapshot, `-status` text, signal
//! throttle). The daemon in `fastpatch-engine` performs the actions.

pub mod health;
pub mod machine;
pub mod report;
pub mod schedule;
pub mod state;
pub mod status;
pub mod status_report;
pub mod urls;

#[cfg(test)]
mod machine_tests;

#[cfg(test)]
mod machine_props;

pub use machine::{
    Action, BootFacts, CheckDelay, CheckReply, DurableState, Engine, Input, StagedUpdate,
    UpdateOffer,
};
pub use report::{ErrorCode, Event};
pub use state::{Offered, Phase, State};
pub use status::UpdateStatus;
